"""The Label tab: one comparison at a time, sides randomized, keyboard shortcuts, undo, history; for
a ranking dataset, the K completions of a prompt to put in places (mouse) or order by letters (keys); for a
steps dataset, the steps of a reasoning trace to mark correct, neutral or wrong (mouse, or j/k and 1/2/3/f)."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from app.rendering import SCROLL_BOXES_TO_TOP_JS, render_prompt, render_response, render_steps
from app.session import USER_ERRORS, current_actor
from core.accounts import Permission
from core.data.datasets import datasets_to_label
from core.labeling.actions import (
    LABELING_ERRORS,
    LabelingScreen,
    StaleScreen,
    change_label_screen,
    guidelines,
    history,
    label_and_next,
    mark_steps_and_next,
    open_labeling_screen,
    rank_and_next,
    screen_choice_of,
    undo_last_screen,
    update_guidelines,
)
from core.labeling.ranking import RankingView, groups_from_places, order_text, parse_order
from core.labeling.steps import StepsView, marks_from_screen, screen_from_marks
from core.preferences.rankings import LETTERS
from storage.engine import Store

# (screen choice, button text, element id, key)
CHOICE_BUTTONS = (
    ("left", "← Left is better", "btn-left", "1"),
    ("right", "Right is better →", "btn-right", "2"),
    ("tie", "Tie", "btn-tie", "3"),
    ("both_bad", "Both bad", "btn-both-bad", "4"),
    ("skip", "Skip", "btn-skip", "5"),
)
UNDO_KEY = "u"
STRENGTH_KEYS = {"q": "slightly", "w": "clearly"}
HISTORY_HEADERS = ["comparison", "labeled at (UTC)", "your choice", "strength", "comment", "prompt"]
ALL_DATASETS = ""  # the dataset choice that means "any dataset I may label"
ORDER_KEY = "o"  # focuses the typed order of a ranking item
# A steps item: j/k move between steps, 1/2/3 mark the current one correct/neutral/wrong (and move on), f marks it
# the first wrong step and leaves the rest unreviewed, Enter submits.
STEP_KEYS = {"1": "+", "2": "0", "3": "-", "f": "f"}
FINAL_CHOICES = (("answer correct", "correct"), ("answer wrong", "wrong"), ("not judged", ""))

# The steps view's behaviour in the browser: the marks live in a hidden text field (#step-marks, one character a
# step: + 0 - . unreviewed, ? not yet marked) that the Submit button sends; buttons and keys edit it, and every
# step block is painted from it.
STEPS_SCRIPT = """
window.rlStepCurrent = 0;
function rlMarksBox() { return document.querySelector('#step-marks textarea, #step-marks input'); }
function rlStepsView() { const v = document.getElementById('steps-view'); return v && v.offsetParent !== null ? v : null; }
window.rlPaintSteps = function () {
  const view = document.getElementById('steps-view'), box = rlMarksBox();
  if (!view || !box) return;
  if (view.dataset.item !== window.rlStepItem) { window.rlStepItem = view.dataset.item; window.rlStepCurrent = 0; }
  const marks = box.value || '';
  const names = {'+': 'correct', '0': 'neutral', '-': 'wrong', '.': 'unreviewed', '?': ''};
  view.querySelectorAll('.rl-step').forEach((step) => {
    const i = Number(step.dataset.step), mark = marks[i] || '?';
    step.dataset.mark = mark;
    step.dataset.current = i === window.rlStepCurrent ? '1' : '0';
    step.querySelector('.rl-step-state').textContent = names[mark] || '';
  });
};
function rlMarkStep(i, mark) {
  const view = rlStepsView(), box = rlMarksBox();
  if (!view || !box) return;
  const n = Number(view.dataset.n);
  let marks = (box.value && box.value.length === n ? box.value : '?'.repeat(n)).split('');
  if (mark === 'f') { marks[i] = '-'; for (let j = i + 1; j < n; j++) marks[j] = '.'; }
  else { marks[i] = mark; for (let j = i + 1; j < n; j++) if (marks[j] === '.') marks[j] = '?'; }
  const setter = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(box), 'value').set;
  setter.call(box, marks.join(''));
  box.dispatchEvent(new Event('input', {bubbles: true}));
  window.rlStepCurrent = mark === 'f' ? i : Math.min(n - 1, i + 1);
  window.rlPaintSteps();
  const current = view.querySelector(`.rl-step[data-step="${window.rlStepCurrent}"]`);
  if (current) current.scrollIntoView({block: 'nearest'});
}
document.addEventListener('click', (event) => {
  const button = event.target.closest && event.target.closest('button.rl-mark');
  if (!button) return;
  event.preventDefault();
  rlMarkStep(Number(button.dataset.step), button.dataset.mark);
});
function rlStepKey(event, key) {
  const view = rlStepsView();
  if (!view) return false;
  const n = Number(view.dataset.n);
  const marks = {STEP_MARKS};
  if (key === 'j' || key === 'k') {
    window.rlStepCurrent = Math.max(0, Math.min(n - 1, window.rlStepCurrent + (key === 'j' ? 1 : -1)));
    window.rlPaintSteps();
    const current = view.querySelector(`.rl-step[data-step="${window.rlStepCurrent}"]`);
    if (current) current.scrollIntoView({block: 'nearest'});
  } else if (marks[key]) {
    rlMarkStep(window.rlStepCurrent, marks[key]);
  } else if (key === 'enter') {
    document.getElementById('btn-steps-submit').click();
  } else return false;
  event.preventDefault();
  return true;
}
""".replace("{STEP_MARKS}", "{" + ", ".join(f"'{key}': '{mark}'" for key, mark in STEP_KEYS.items()) + "}")


def shortcuts_script() -> str:
    """Key bindings that click the buttons by element id; inactive while typing in a text field."""
    keys = {key: element_id for _, _, element_id, key in CHOICE_BUTTONS}
    keys[UNDO_KEY] = "btn-undo"
    # On a ranking item the pair buttons are hidden (so their keys do nothing); "o" focuses the
    # typed order, where letters and Enter rank without the mouse.
    mapping = ", ".join(f"'{key}': '{element_id}'" for key, element_id in keys.items())
    strengths = ", ".join(f"'{key}': '{value}'" for key, value in STRENGTH_KEYS.items())
    return f"""<script>{STEPS_SCRIPT}
document.addEventListener('keydown', (event) => {{
  const target = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  // Typing in a text field is not a shortcut; a clicked radio or checkbox (a place, a strength) keeps focus
  // but takes no typed text, so the keys still work after one.
  const choosing = target && target.tagName === 'INPUT' && (target.type === 'radio' || target.type === 'checkbox');
  if (target && !choosing && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA' || target.isContentEditable)) return;
  const buttons = {{{mapping}}};
  const strengths = {{{strengths}}};
  const key = event.key.toLowerCase();
  if (rlStepKey(event, key)) return;  // a steps item takes its own keys (1/2/3 mark steps there)
  if (key === '{ORDER_KEY}') {{
    const order = document.querySelector('#rank-order textarea, #rank-order input');
    if (order && order.offsetParent !== null) {{ event.preventDefault(); order.focus(); return; }}
  }}
  if (buttons[key]) {{
    const button = document.getElementById(buttons[key]);
    if (button && button.offsetParent !== null && !button.disabled) {{ event.preventDefault(); button.click(); }}
  }} else if (strengths[key]) {{
    const radio = document.querySelector(`#label-strength input[value="${{strengths[key]}}"]`);
    if (radio && radio.offsetParent !== null) {{ event.preventDefault(); radio.click(); }}
  }}
}});
</script>"""


def shortcuts_legend(*, ranking: bool = False, steps: bool = False) -> str:
    if steps:
        return ('<div class="rl-shortcuts">Keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous step · <kbd>1</kbd> correct · '
                '<kbd>2</kbd> neutral · <kbd>3</kbd> wrong · <kbd>f</kbd> first wrong step (the rest unreviewed) · '
                f'<kbd>Enter</kbd> submit · <kbd>{UNDO_KEY}</kbd> undo · or the buttons on each step</div>')
    if ranking:
        return (f'<div class="rl-shortcuts">Keys: <kbd>{ORDER_KEY}</kbd> type the order (letters best first, '
                f'<kbd>=</kbd> ties, <kbd>Enter</kbd> submits) · <kbd>{UNDO_KEY}</kbd> undo · places with the mouse</div>')
    keys = " · ".join(f"<kbd>{key}</kbd> {html.escape(text.strip('←→ '))}" for _, text, _, key in CHOICE_BUTTONS)
    strengths = " · ".join(f"<kbd>{key}</kbd> {value}" for key, value in STRENGTH_KEYS.items())
    return f'<div class="rl-shortcuts">Keys: {keys} · <kbd>{UNDO_KEY}</kbd> undo · {strengths} better</div>'


@dataclass
class LabelTab:
    """The tab's components, so that handlers can return ``{component: value}`` updates."""

    dataset: gr.Dropdown
    datasets_table: gr.Markdown
    progress: gr.Markdown
    guidelines: gr.Markdown
    guidelines_editor: gr.Textbox
    guidelines_save: gr.Button
    prompt: gr.HTML
    left: gr.HTML
    right: gr.HTML
    strength: gr.Radio
    comment: gr.Textbox
    current: gr.Markdown
    status: gr.Markdown
    history: gr.Dataframe
    change_it: gr.Button
    keep_it: gr.Button
    view: gr.State
    shown_at: gr.State
    refused: gr.State  # (screen choice, strength, comment) of a label refused as stale, for "Change it"
    pair_row: gr.Row  # the two responses of a pair
    pair_buttons: gr.Row
    rank_row: gr.Row  # the completions of a ranking item, one slot each
    rank_buttons: gr.Row
    slots: list[gr.Column]
    slot_texts: list[gr.HTML]
    places: list[gr.Radio]
    order: gr.Textbox
    all_bad: gr.Checkbox
    legend: gr.HTML
    steps_row: gr.Column  # the steps of a trace
    steps_html: gr.HTML
    steps_buttons: gr.Row
    step_marks: gr.Textbox  # hidden: the marks, one character a step, edited by the page's script
    final: gr.Radio

    @property
    def view_outputs(self) -> list:
        return [self.prompt, self.left, self.right, self.comment, self.strength, self.current, self.status, self.progress,
                self.view, self.shown_at, self.history, self.change_it, self.keep_it, self.refused, self.guidelines,
                self.pair_row, self.pair_buttons, self.rank_row, self.rank_buttons, *self.slots, *self.slot_texts,
                *self.places, self.order, self.all_bad, self.legend, self.steps_row, self.steps_html,
                self.steps_buttons, self.step_marks, self.final]


def _message(text: str) -> str:
    return html.escape(text)


def _datasets_choices(summaries: list) -> list[tuple[str, str]]:
    return [("All my datasets", ALL_DATASETS)] + [
        (f"{s.name} ({s.prompt_kind or 'empty'}{'' if s.question == 'pairwise' else ', ' + s.question}) · {s.waiting} waiting",
         s.name) for s in summaries if not s.archived
    ]


def _datasets_markdown(summaries: list) -> str:
    shown = [s for s in summaries if not s.archived]
    if not shown:
        return "_No dataset is open to you yet._"
    lines = ["| dataset | kind | comparisons | still waiting | labels so far |", "|---|---|---:|---:|---:|"]
    lines += [f"| {s.name} | {s.prompt_kind or '-'} | {s.comparisons} | {s.waiting} | {s.labels} |" for s in shown]
    return "\n".join(lines)


def _show(tab: LabelTab, actor, screen: LabelingScreen, status: str = "", store: Store | None = None) -> dict:  # noqa: ANN001
    view, done = screen.view, screen.progress
    updates = {
        tab.progress: f"**{actor.name}** · labeled by you: **{done.labeled_by_me}** · "
        f"still open to you: **{done.open_comparisons}**"
        + (f" · dataset **{view.dataset}**" if view is not None and view.dataset else ""),
        tab.change_it: gr.Button(visible=False),
        tab.keep_it: gr.Button(visible=False),
        tab.refused: None,
        tab.status: status,
        tab.view: view,
        tab.shown_at: time.monotonic(),
        tab.comment: "",
        tab.strength: "clearly",  # a "slightly" must be chosen again, never carried over by accident
        tab.history: _history_rows(screen.history),
    }
    if store is not None and view is not None and view.dataset:
        # The guidelines of the dataset being labeled, which may change from one comparison to the next.
        updates[tab.guidelines] = guidelines(store, view.dataset)
    ranking, steps = isinstance(view, RankingView), isinstance(view, StepsView)
    pair = not ranking and not steps
    updates.update({tab.legend: shortcuts_legend(ranking=ranking, steps=steps),
                    tab.pair_row: gr.Row(visible=pair), tab.pair_buttons: gr.Row(visible=pair),
                    tab.strength: gr.Radio(value="clearly", visible=pair),
                    tab.rank_row: gr.Row(visible=ranking), tab.rank_buttons: gr.Row(visible=ranking),
                    tab.steps_row: gr.Column(visible=steps), tab.steps_buttons: gr.Row(visible=steps)})
    if view is None:
        updates[tab.prompt] = '<div class="rl-empty">Nothing left for you to label here. Thank you!</div>'
        updates[tab.left] = updates[tab.right] = updates[tab.current] = ""
        return updates
    changing = f" · changing your label (**{view.existing_choice}**)" if view.existing_choice else ""
    updates[tab.prompt] = render_prompt(view)
    if ranking:
        updates.update(_show_ranking(tab, view))
        updates[tab.current] = f"Ranking item #{view.item_id} · {len(view.completions)} responses{changing}"
        return updates
    if steps:
        existing = view.existing
        updates[tab.steps_html] = render_steps(view)
        updates[tab.step_marks] = screen_from_marks(existing.marks if existing else None, len(view.steps))
        updates[tab.final] = (existing.final or "") if existing else ""
        if existing is not None and existing.comment:
            updates[tab.comment] = existing.comment
        updates[tab.current] = f"Trace #{view.item_id} · {len(view.steps)} steps{changing}"
        return updates
    updates[tab.left] = render_response(view.left, "Left")
    updates[tab.right] = render_response(view.right, "Right")
    updates[tab.current] = f"Comparison #{view.comparison_id}{changing}"
    return updates


def _show_ranking(tab: LabelTab, view: RankingView) -> dict:
    """The slots of a ranking item: one per completion in the order shown, with its place (1 = best)
    filled in from the stored ranking when the actor is changing it."""
    k = len(view.completions)
    place_of = {}
    if view.existing is not None:
        place_of = {c: place for place, group in enumerate(view.existing.groups, start=1) for c in group}
    choices = [str(place) for place in range(1, k + 1)]
    updates: dict = {}
    for index in range(len(LETTERS)):
        if index < k:
            response = view.completions[index]
            place = place_of.get(response.completion_id)
            updates[tab.slots[index]] = gr.Column(visible=True)
            updates[tab.slot_texts[index]] = render_response(response, f"Response {response.letter}")
            updates[tab.places[index]] = gr.Radio(choices=choices, value=str(place) if place else None, visible=True,
                                                  label=f"Place of {response.letter} (1 = best)")
        else:
            updates[tab.slots[index]] = gr.Column(visible=False)
            updates[tab.slot_texts[index]] = ""
            updates[tab.places[index]] = gr.Radio(choices=[], value=None, visible=False)
    updates[tab.order] = order_text(view.existing.groups, view) if view.existing is not None else ""
    updates[tab.all_bad] = view.existing.all_bad if view.existing is not None else False
    if view.existing is not None and view.existing.comment:
        updates[tab.comment] = view.existing.comment  # changing a ranking keeps its comment unless edited
    return updates


def _places_order(view: RankingView | None, places: tuple) -> str:
    """The typed order of the places chosen so far (unplaced responses are left out)."""
    if not isinstance(view, RankingView):
        return ""
    by_place: dict[int, list[str]] = {}
    for response, place in zip(view.completions, places, strict=False):
        if place:
            by_place.setdefault(int(place), []).append(response.letter)
    return " > ".join("=".join(sorted(by_place[place])) for place in sorted(by_place))


def _ranking_from_screen(view: RankingView, order: str, places: tuple) -> list[list[int]]:
    """The groups the annotator gave: the typed order when there is one, else the places."""
    if order and order.strip():
        return parse_order(order, view)
    return groups_from_places({response.completion_id: (int(place) if place else None)
                               for response, place in zip(view.completions, places, strict=False)})


def _history_rows(items: list) -> list[list]:
    return [
        [
            item.comparison_id,
            item.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
            screen_choice_of(item),
            {1: "slightly", 2: "clearly"}.get(item.strength, ""),
            item.comment or "",
            item.prompt_excerpt,
        ]
        for item in items
    ]


# Opens the guidelines when this browser has not seen this text yet (first visit of a dataset, or changed
# guidelines), else leaves them folded to their one-line header. A hash of the text per browser, in localStorage.
GUIDELINES_SEEN_JS = """(text) => {
    if (!text) return;
    let hash = 0;
    for (let i = 0; i < text.length; i++) hash = (hash * 31 + text.charCodeAt(i)) | 0;
    const seen = JSON.parse(localStorage.getItem("rewardlab-guidelines-seen") || "{}");
    if (seen[hash]) return;
    seen[hash] = Date.now();
    localStorage.setItem("rewardlab-guidelines-seen", JSON.stringify(seen));
    const box = document.querySelector("#label-guidelines-box");
    const toggle = box && box.querySelector("button.label-wrap");
    if (toggle && !toggle.classList.contains("open")) toggle.click();
}"""


def render_label_tab(store: Store, blocks: gr.Blocks) -> LabelTab:
    # One compact line: the dataset, the progress in it, and the list of one's datasets (LABEL_CSS keeps it short).
    with gr.Row(equal_height=True, elem_id="label-topline"):
        dataset_choice = gr.Dropdown(choices=[("All my datasets", ALL_DATASETS)], value=ALL_DATASETS, label="Dataset",
                                     show_label=False, container=False, elem_id="label-dataset", scale=1, min_width=180)
        progress_md = gr.Markdown(elem_id="label-progress")
        with gr.Accordion("My datasets", open=False, elem_id="label-my-datasets"):
            datasets_md = gr.Markdown(elem_id="label-datasets")
    # Open on the first visit of a dataset and after its guidelines change (GUIDELINES_SEEN_JS), else one line.
    with gr.Accordion("Guidelines", open=False, elem_id="label-guidelines-box"):
        guidelines_md = gr.Markdown(elem_id="label-guidelines")
        with gr.Accordion("Edit the guidelines (admins)", open=False, visible=False,
                          elem_id="guidelines-edit-box") as guidelines_edit_box:
            guidelines_editor = gr.Textbox(label="Edit guidelines (admins)", lines=6, visible=False,
                                           elem_id="guidelines-editor")
            guidelines_save = gr.Button("Save guidelines", size="sm", visible=False, elem_id="guidelines-save")
    prompt_html = gr.HTML(elem_id="label-prompt")
    with gr.Row(equal_height=True) as pair_row:
        left_html = gr.HTML(elem_id="label-left")
        right_html = gr.HTML(elem_id="label-right")
    # A ranking item: up to nine slots that wrap into a grid, each a response and its place.
    slots, slot_texts, places = [], [], []
    with gr.Row(visible=False, elem_id="rank-slots") as rank_row:
        for letter in LETTERS:
            with gr.Column(visible=False, min_width=150, elem_id=f"rank-slot-{letter}") as slot:
                slot_texts.append(gr.HTML(elem_id=f"rank-text-{letter}"))
                places.append(gr.Radio(choices=[], label=f"Place of {letter}", elem_id=f"rank-place-{letter}",
                                       elem_classes=["rl-place"]))
            slots.append(slot)
    # A steps item: the trace's steps, numbered, each with its mark buttons (app/rendering.py render_steps).
    with gr.Column(visible=False, elem_id="label-steps-box") as steps_row:
        steps_html = gr.HTML(elem_id="label-steps")
    # Sticks to the bottom of the window (LABEL_CSS), so it is compact (at most ~110 px): one row of buttons, one of
    # options and the status line, whose messages are cut to one line (a refusal and "Change it" included).
    with gr.Column(elem_id="label-choice-bar"):
        with gr.Row(visible=False, equal_height=True) as rank_buttons:
            order_box = gr.Textbox(label=f"Order, best first (keys: {ORDER_KEY} here, letters, = ties, Enter)",
                                   placeholder="order, best first: C A=D B",
                                   show_label=False, container=False, elem_id="rank-order", scale=2, min_width=220)
            all_bad = gr.Checkbox(label="All unacceptable", value=False, elem_id="rank-all-bad", min_width=150,
                                  container=False)
            rank_submit = gr.Button("Submit ranking", variant="primary", elem_id="btn-rank-submit", size="sm",
                                    min_width=120)
            rank_skip = gr.Button("Skip", elem_id="btn-rank-skip", size="sm", min_width=80)
        with gr.Row(visible=False, equal_height=True, elem_id="steps-buttons") as steps_buttons:
            final = gr.Radio(list(FINAL_CHOICES), value="", label="Final answer", show_label=False, container=False,
                             elem_id="steps-final", min_width=340, scale=0)
            step_marks = gr.Textbox(value="", show_label=False, container=False, elem_id="step-marks", max_lines=1)
            steps_submit = gr.Button("Submit marks", variant="primary", elem_id="btn-steps-submit", size="sm",
                                     min_width=120, scale=1)
            steps_skip = gr.Button("Skip", elem_id="btn-steps-skip", size="sm", min_width=80, scale=0)
        with gr.Row(equal_height=True, elem_id="label-button-row") as pair_buttons:
            choice_buttons = {
                choice: gr.Button(text, elem_id=element_id, size="sm", min_width=90,
                                  variant="primary" if choice in ("left", "right") else "secondary")
                for choice, text, element_id, _ in CHOICE_BUTTONS
            }
        with gr.Row(equal_height=True, elem_id="label-option-row"):
            strength = gr.Radio(["slightly", "clearly"], value="clearly", label="How much better", show_label=False,
                                container=False, elem_id="label-strength", min_width=190, scale=0)
            comment = gr.Textbox(label="Comment (optional)", placeholder="comment (optional)", show_label=False,
                                 container=False, elem_id="label-comment", scale=2, min_width=160)
            # Switches every block between rendered Markdown and the exact stored text in CSS alone
            # (app/rendering.py): no handler, and it stays as set for the next comparison.
            gr.Checkbox(label="Show raw text", value=False, elem_id="label-raw", min_width=120, container=False,
                        scale=0)
            undo = gr.Button("Undo last", elem_id="btn-undo", size="sm", min_width=90, scale=0)
        # In the sticky bar, so that a refusal (and "Change it") is seen without scrolling past K responses.
        with gr.Row(equal_height=True, elem_id="label-status-row"):
            current = gr.Markdown(elem_id="label-current")
            status = gr.Markdown(elem_id="label-status")
            change_it = gr.Button("Change it", elem_id="btn-change-it", visible=False, size="sm", variant="stop",
                                  scale=0, min_width=90)
            keep_it = gr.Button("Keep my label, next", elem_id="btn-keep-it", visible=False, size="sm", scale=0,
                                min_width=150)
    legend = gr.HTML(shortcuts_legend())  # below the bar: the keys are read once, the answers every time
    with gr.Accordion("My labels", open=False):
        gr.Markdown("Click a row to open that comparison and change your label.")
        history_table = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, elem_id="label-history", wrap=True)
        with gr.Row():
            change_id = gr.Number(label="Comparison to change", precision=0, elem_id="change-id")
            change = gr.Button("Open it to change my label", elem_id="btn-change")
            refresh_history = gr.Button("Refresh", size="sm")
    for box in (prompt_html, left_html, right_html):
        box.change(None, js=SCROLL_BOXES_TO_TOP_JS)  # a new comparison starts at its top (the prompt at its last turn)
    guidelines_md.change(None, inputs=guidelines_md, js=GUIDELINES_SEEN_JS)
    # paint the marks whenever a new trace or its stored marks arrive from the server
    for painted in (steps_html, step_marks):
        painted.change(None, js="() => { setTimeout(() => window.rlPaintSteps && window.rlPaintSteps(), 0); }")
    tab = LabelTab(
        dataset_choice, datasets_md, progress_md, guidelines_md, guidelines_editor, guidelines_save, prompt_html,
        left_html, right_html, strength, comment, current, status, history_table, change_it, keep_it, gr.State(None),
        gr.State(0.0), gr.State(None), pair_row, pair_buttons, rank_row, rank_buttons, slots, slot_texts, places,
        order_box, all_bad, legend, steps_row, steps_html, steps_buttons, step_marks, final,
    )

    def open_dataset(dataset: str | None, request: gr.Request) -> dict:
        """Show the actor's datasets and their next comparison from ``dataset`` (or any)."""
        try:
            actor = current_actor(store, request)
            summaries = datasets_to_label(store, actor)
            names = {s.name for s in summaries}
            dataset = dataset if dataset in names else ALL_DATASETS
            screen = open_labeling_screen(store, actor, dataset or None)
            text = guidelines(store, dataset) if dataset else ""  # with no choice, those of the comparison shown
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}
        is_editor = actor.can(Permission.EDIT_GUIDELINES)
        updates = {
            tab.guidelines: text,
            **_show(tab, actor, screen, store=store),
            tab.dataset: gr.Dropdown(choices=_datasets_choices(summaries), value=dataset),
            tab.datasets_table: _datasets_markdown(summaries),
            tab.guidelines_editor: gr.Textbox(value=text, visible=is_editor),
            tab.guidelines_save: gr.Button(visible=is_editor),
            guidelines_edit_box: gr.Accordion(visible=is_editor),
        }
        if is_editor and screen.view is not None:
            updates[tab.guidelines_editor] = gr.Textbox(value=guidelines(store, screen.view.dataset), visible=True)
        return updates

    dataset_outputs = [*tab.view_outputs, dataset_choice, datasets_md, guidelines_editor, guidelines_save,
                       guidelines_edit_box]
    blocks.load(open_dataset, inputs=dataset_choice, outputs=dataset_outputs, api_visibility="private", api_name="open_dataset_on_load")
    dataset_choice.input(open_dataset, inputs=dataset_choice, outputs=dataset_outputs, api_visibility="private", api_name="open_dataset")

    def submit(view, shown_at, screen_choice: str, how_much, note, dataset, request: gr.Request,  # noqa: ANN001
               replace_existing: bool = False) -> dict:
        try:
            actor = current_actor(store, request)
            if view is None:
                return _show(tab, actor, open_labeling_screen(store, actor, dataset or None), store=store)
            seconds = round(time.monotonic() - shown_at, 2) if shown_at else None
            screen = label_and_next(store, actor, view, screen_choice, strength=how_much, comment=note,
                                    seconds_spent=seconds, dataset=dataset or None, replace_existing=replace_existing)
        except StaleScreen as stale:
            # Nothing was saved: say so, and offer to replace the stored label with this choice.
            return {tab.status: _message(str(stale)), tab.change_it: gr.Button(visible=True),
                    tab.keep_it: gr.Button(visible=True), tab.refused: (screen_choice, how_much, note)}
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}
        done = "Saved" if screen.result.changed else "Already saved"
        return _show(tab, actor, screen, f"{done}: #{view.comparison_id} → {screen_choice.replace('_', ' ')}", store=store)

    def choose(screen_choice: str):  # noqa: ANN202
        def handler(view, shown_at, how_much, note, dataset, request: gr.Request) -> dict:  # noqa: ANN001
            return submit(view, shown_at, screen_choice, how_much, note, dataset, request)

        return handler

    for screen_choice, button in choice_buttons.items():
        button.click(choose(screen_choice), inputs=[tab.view, tab.shown_at, strength, comment, dataset_choice],
                     outputs=tab.view_outputs, api_visibility="private", api_name=f"label_{screen_choice}")

    def change_it_now(view, shown_at, refused, dataset, request: gr.Request) -> dict:  # noqa: ANN001
        if not refused:
            return {tab.change_it: gr.Button(visible=False)}
        if refused[0] == "ranking":
            _, groups, flagged, note = refused
            return submit_ranking(view, shown_at, groups, flagged, note, dataset, request, replace_existing=True)
        if refused[0] == "steps":
            _, marks, verdict, note = refused
            return submit_marks(view, shown_at, marks, verdict, note, dataset, request, replace_existing=True)
        screen_choice, how_much, note = refused
        return submit(view, shown_at, screen_choice, how_much, note, dataset, request, replace_existing=True)

    def submit_ranking(view, shown_at, groups, flagged, note, dataset, request: gr.Request,  # noqa: ANN001
                       replace_existing: bool = False) -> dict:
        """Store the ranking on screen (``groups`` None skips the item) and show the next item."""
        try:
            actor = current_actor(store, request)
            if not isinstance(view, RankingView):
                return _show(tab, actor, open_labeling_screen(store, actor, dataset or None), store=store)
            seconds = round(time.monotonic() - shown_at, 2) if shown_at else None
            screen = rank_and_next(store, actor, view, groups, all_bad=bool(flagged), comment=note,
                                   seconds_spent=seconds, dataset=dataset or None, replace_existing=replace_existing)
        except StaleScreen as stale:
            return {tab.status: _message(str(stale)), tab.change_it: gr.Button(visible=True),
                    tab.keep_it: gr.Button(visible=True), tab.refused: ("ranking", groups, flagged, note)}
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}
        done = "Saved" if screen.result.changed else "Already saved"
        what = "skipped" if groups is None else order_text(groups, view)
        return _show(tab, actor, screen, f"{done}: #{view.item_id} → {what}", store=store)

    def submit_marks(view, shown_at, marks, verdict, note, dataset, request: gr.Request,  # noqa: ANN001
                     replace_existing: bool = False) -> dict:
        """Store the marks on screen (``marks`` None skips the trace) and show the next item."""
        try:
            actor = current_actor(store, request)
            if not isinstance(view, StepsView):
                return _show(tab, actor, open_labeling_screen(store, actor, dataset or None), store=store)
            seconds = round(time.monotonic() - shown_at, 2) if shown_at else None
            screen = mark_steps_and_next(store, actor, view, marks, final=verdict or None, comment=note,
                                         seconds_spent=seconds, dataset=dataset or None,
                                         replace_existing=replace_existing)
        except StaleScreen as stale:
            return {tab.status: _message(str(stale)), tab.change_it: gr.Button(visible=True),
                    tab.keep_it: gr.Button(visible=True), tab.refused: ("steps", marks, verdict, note)}
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}
        done = "Saved" if screen.result.changed else "Already saved"
        what = "skipped" if marks is None else "".join("·" if m is None else m for m in marks)
        return _show(tab, actor, screen, f"{done}: #{view.item_id} → {what}", store=store)

    def marks_from_page(view, shown_at, marks_text, verdict, note, dataset, request: gr.Request) -> dict:  # noqa: ANN001
        if not isinstance(view, StepsView):
            return submit_marks(view, shown_at, None, None, note, dataset, request)
        try:
            marks = marks_from_screen(marks_text, len(view.steps))
        except LABELING_ERRORS as error:
            return {tab.status: _message(str(error))}
        return submit_marks(view, shown_at, marks, verdict, note, dataset, request)

    def skip_trace(view, shown_at, note, dataset, request: gr.Request) -> dict:  # noqa: ANN001
        return submit_marks(view, shown_at, None, None, note, dataset, request)

    steps_submit.click(marks_from_page, inputs=[tab.view, tab.shown_at, step_marks, final, comment, dataset_choice],
                       outputs=tab.view_outputs, api_visibility="private", api_name="submit_marks")
    steps_skip.click(skip_trace, inputs=[tab.view, tab.shown_at, comment, dataset_choice], outputs=tab.view_outputs,
                     api_visibility="private", api_name="skip_trace")

    # One parameter per place (A to I): Gradio passes inputs positionally and a gr.Request by annotation.
    def rank_from_screen(view, shown_at, order, flagged, note, dataset, place_a, place_b, place_c, place_d,  # noqa: ANN001
                         place_e, place_f, place_g, place_h, place_i, request: gr.Request) -> dict:
        chosen_places = (place_a, place_b, place_c, place_d, place_e, place_f, place_g, place_h, place_i)
        try:
            groups = _ranking_from_screen(view, order, chosen_places) if isinstance(view, RankingView) else None
        except LABELING_ERRORS as error:
            return {tab.status: _message(str(error))}
        return submit_ranking(view, shown_at, groups, flagged, note, dataset, request)

    def skip_ranking(view, shown_at, note, dataset, request: gr.Request) -> dict:  # noqa: ANN001
        return submit_ranking(view, shown_at, None, False, note, dataset, request)

    rank_inputs = [tab.view, tab.shown_at, order_box, all_bad, comment, dataset_choice, *places]
    rank_submit.click(rank_from_screen, inputs=rank_inputs, outputs=tab.view_outputs, api_visibility="private", api_name="rank_from_screen")
    order_box.submit(rank_from_screen, inputs=rank_inputs, outputs=tab.view_outputs, api_visibility="private", api_name="rank_from_screen_on_submit")
    rank_skip.click(skip_ranking, inputs=[tab.view, tab.shown_at, comment, dataset_choice], outputs=tab.view_outputs,
                    api_visibility="private", api_name="skip_ranking")

    def order_from_places(view, place_a, place_b, place_c, place_d, place_e, place_f, place_g, place_h,  # noqa: ANN001
                          place_i) -> str:
        return _places_order(view, (place_a, place_b, place_c, place_d, place_e, place_f, place_g, place_h, place_i))

    # .input fires on the annotator's clicks only, not when a new item fills the places. One listener for all the
    # places, run for the latest click: nine separate events could answer out of order under load and leave the
    # order of an earlier click in the box.
    gr.on([place.input for place in places], order_from_places, inputs=[tab.view, *places], outputs=order_box,
          api_visibility="private", show_progress="hidden", trigger_mode="always_last", concurrency_limit=1,
          concurrency_id="order-from-places", api_name="order_from_places")

    change_it.click(change_it_now, inputs=[tab.view, tab.shown_at, tab.refused, dataset_choice],
                    outputs=tab.view_outputs, api_visibility="private", api_name="change_it_now")

    def keep_stored_label(dataset, request: gr.Request) -> dict:  # noqa: ANN001
        # The stored label stays; the next comparison skips this one, which the actor has labeled.
        try:
            actor = current_actor(store, request)
            screen = open_labeling_screen(store, actor, dataset or None)
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}
        return _show(tab, actor, screen, "Kept your stored label.", store=store)

    keep_it.click(keep_stored_label, inputs=dataset_choice, outputs=tab.view_outputs, api_visibility="private", api_name="keep_stored_label")

    def undo_last_label(dataset: str | None, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            screen = undo_last_screen(store, actor, dataset or None)
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}
        if screen is None:
            return {tab.status: "Nothing to undo."}
        return _show(tab, actor, screen, f"Undone: #{screen.view.comparison_id} is back for you to label.", store=store)

    undo.click(undo_last_label, inputs=dataset_choice, outputs=tab.view_outputs, api_visibility="private", api_name="undo_last_label")

    def change_label(comparison_id: float | None, dataset: str | None, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            if comparison_id is None:
                return {tab.status: "Type the number of a comparison from your labels first."}
            screen = change_label_screen(store, actor, int(comparison_id), dataset or None)
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}
        return _show(tab, actor, screen, store=store)

    change.click(change_label, inputs=[change_id, dataset_choice], outputs=tab.view_outputs, api_visibility="private", api_name="change_label")

    def change_from_row(event: gr.EventData, dataset: str | None, request: gr.Request) -> dict:
        # gr.EventData, not gr.SelectData, whose constructor fails on a call without a click (app/records_panel.py)
        data = getattr(event, "_data", None)
        row = data.get("row_value") if isinstance(data, dict) else None
        return change_label(row[0] if isinstance(row, list) and row else None, dataset, request)

    history_table.select(change_from_row, inputs=dataset_choice, outputs=tab.view_outputs, api_visibility="private", api_name="change_from_row_on_row")

    def refresh(request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            return {tab.history: _history_rows(history(store, actor))}
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}

    refresh_history.click(refresh, outputs=[history_table, status], api_visibility="private", api_name="refresh_history")

    def save_guidelines(text: str, view, dataset, request: gr.Request) -> dict:  # noqa: ANN001
        # The guidelines shown are those of the comparison on screen, else of the chosen dataset.
        target = view.dataset if view is not None and view.dataset else dataset
        try:
            update_guidelines(store, current_actor(store, request), text, target or "")
        except USER_ERRORS as error:
            return {tab.status: _message(str(error))}
        return {tab.guidelines: text, tab.status: "Guidelines saved."}

    guidelines_save.click(save_guidelines, inputs=[guidelines_editor, tab.view, dataset_choice],
                          outputs=[guidelines_md, status], api_visibility="private", api_name="save_guidelines")
    return tab
