"""The Inspect tab: responses side by side under one or more reward models, thinking vs answer
rewards, per-token reward trajectories, and what the model actually sees."""

from __future__ import annotations

import html
import json

import gradio as gr
import plotly.colors
import plotly.graph_objects as go

from app.cancelling import CancelRequests
from app.diagnostics_panel import render_diagnostics_panel
from app.formatting import code_block, inline_text, plot_text
from app.session import USER_ERRORS, current_actor
from core.data.demo_data import DEMO_PREFERENCES
from core.preferences.rankings import LETTERS
from core.scoring.engine import ModelLoadError, ScoringCancelled
from core.scoring.inspection import (
    Inspection,
    InspectionRefused,
    UnknownComparison,
    UnknownModel,
    chat_prompt,
    comparison_for_inspection,
    inspect_with_models,
    model_choices,
)
from storage.engine import Store

TABLE_HEADERS = ["model", "response", "reward", "thinking reward", "answer reward", "reward − answer reward",
                 "tokens", "over max_length"]
RESPONSE_NAMES = LETTERS  # A and B, then C to I (a ranking item's completions)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def results_table(inspection: Inspection) -> list[list]:
    rows = []
    for score in inspection.scores:
        r = score.result
        difference = None if r.answer_reward is None or r.reward is None else r.reward - r.answer_reward
        over = ("yes: no reward" + (f" (answer alone: {score.answer_alone_reward:+.4f})"
                                     if score.answer_alone_reward is not None else "")) if r.exceeds_max_length else ""
        rows.append([score.model, RESPONSE_NAMES[score.response_index], _number(r.reward), _number(r.thinking_reward),
                     _number(r.answer_reward), _number(difference), r.n_tokens, over])
    return rows


def flips_markdown(inspection: Inspection) -> str:
    n = inspection.pairs_compared
    left_out = "".join(f"\n- Left out: {inline_text(why)}" for why in inspection.left_out)
    if n == 0:
        return ("No verdict on flips: no pair of responses had rewards on both sides (n = 0)." + left_out)
    if not inspection.flips:
        return (f"No preference flips in {n} pair(s) compared: every model prefers the same response with and "
                f"without the thinking." + left_out)
    lines = [f"**The preference flips when the thinking is removed in {len(inspection.flips)} of {n} pair(s) "
             "compared:**"]
    for flip in inspection.flips:
        lines.append(
            f"- {inline_text(flip.model)}: {RESPONSE_NAMES[flip.first]} vs {RESPONSE_NAMES[flip.second]} — whole "
            f"response prefers **{RESPONSE_NAMES[flip.whole_prefers]}**, answer alone prefers "
            f"**{RESPONSE_NAMES[flip.answer_prefers]}**"
        )
    return "\n".join(lines) + left_out


def trajectory_figure(inspection: Inspection) -> go.Figure:
    figure = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for number, score in enumerate(inspection.scores):
        color = palette[number % len(palette)]
        steps = score.result.trajectory
        if not steps:
            continue
        name = f"{RESPONSE_NAMES[score.response_index]} · {score.model}"
        # Token text is untrusted: escaped so plotly's hover labels render it as text.
        hover = [f"{k}: {html.escape(token)!s}" for k, (token, _) in enumerate(steps)]
        line = go.Scatter(x=list(range(len(steps))), y=[value for _, value in steps], mode="lines", name=plot_text(name),
                          line={"color": color}, hovertext=hover,
                          hovertemplate="%{hovertext}<br>reward %{y:.4f}<extra>" + plot_text(name) + "</extra>")
        figure.add_trace(line)
        if score.result.think_end_token is not None:
            figure.add_vline(x=score.result.think_end_token, line_dash="dash", line_color=color,
                             annotation_text=plot_text(f"</think> ({RESPONSE_NAMES[score.response_index]})"),
                             annotation_position="top")
        if score.step_scores is not None:
            _overlay_steps(figure, score, color, steps)
    with_steps = any(score.step_scores is not None for score in inspection.scores)
    figure.update_layout(title="Reward of each response prefix (closed like the whole response), token by token"
                         + (" · step scores (P(step correct), right axis) at each step's end" if with_steps else ""),
                         xaxis_title="response token", yaxis_title="reward", height=420,
                         margin={"t": 60, "l": 50, "r": 50 if with_steps else 20, "b": 40})
    if with_steps:
        figure.update_layout(yaxis2={"title": "step score", "overlaying": "y", "side": "right", "range": [0, 1]})
    return figure


def _overlay_steps(figure: go.Figure, score, color: str, trajectory: list) -> None:  # noqa: ANN001
    """Step boundaries as dotted lines, and each step's score as a marker on the right axis: red under 0.5."""
    name = f"{RESPONSE_NAMES[score.response_index]} · {score.model}"
    values = score.step_scores.scores
    for x in score.step_tokens:
        figure.add_vline(x=x, line_dash="dot", line_width=1, line_color=color, opacity=0.5)
    figure.add_trace(go.Scatter(
        x=score.step_tokens, y=values, yaxis="y2", mode="markers+lines", name=plot_text(f"steps · {name}"),
        line={"color": color, "dash": "dot"},
        marker={"size": 9, "color": ["#ef4444" if v < 0.5 else "#10b981" for v in values], "line": {"color": color}},
        hovertext=[f"step {k + 1}: {v:.3f}" for k, v in enumerate(values)],
        hovertemplate="%{hovertext}<extra>" + plot_text(name) + "</extra>"))


def steps_markdown(inspection: Inspection, human_first_errors: dict | None) -> str:
    """Per response and model: the step scores, and the first step the model doubts against the humans'."""
    lines = []
    for score in inspection.scores:
        if score.step_scores is None:
            continue
        steps = score.step_scores
        doubted = steps.first_low_step
        lines.append(f"- **{RESPONSE_NAMES[score.response_index]} · {inline_text(score.model)}**: "
                     f"{len(steps.scores)} steps · first step the model doubts (score under 0.5): "
                     f"**{'none' if doubted is None else f'step {doubted + 1}'}** · scores "
                     + " ".join(f"{k + 1}:{v:.2f}" for k, v in enumerate(steps.scores)))
    if not lines:
        return ""
    if human_first_errors:
        said = " · ".join(f"{inline_text(name)}: {'none' if k is None else f'step {k + 1}'}"
                          for name, k in human_first_errors.items())
        lines.append(f"- **Humans' first wrong step**: {said}")
    return "**Steps**\n" + "\n".join(lines)


def model_view_markdown(inspection: Inspection) -> str:
    parts = []
    for score in inspection.scores:
        limit = score.max_length
        over = (" — **over max_length: no reward** (training would drop this example)"
                + (f"; its answer alone scores {score.answer_alone_reward:+.4f}, shown apart and used in no verdict"
                   if score.answer_alone_reward is not None else "")) if score.result.exceeds_max_length else ""
        parts.append(f"**{RESPONSE_NAMES[score.response_index]} · {inline_text(score.model)}**: "
                     f"{score.result.n_tokens} tokens (max_length {limit}){over}\n\n{code_block(score.formatted_text)}")
    return "\n\n".join(parts)


def render_inspect_tab(store: Store, blocks: gr.Blocks, tab: gr.Tab | None = None) -> None:
    gr.Markdown("Score responses with reward models: the whole response, its thinking (up to the last "
                "`</think>`) and its answer, and how the reward moves token by token.")
    with gr.Row():
        models = gr.CheckboxGroup(label="Registered reward models", elem_id="inspect-models")
        model_path = gr.Textbox(label="…or a model folder (under the models folder)", elem_id="inspect-model-path")
        refresh = gr.Button("Refresh models", size="sm")
    with gr.Row():
        chat = gr.Checkbox(value=True, label="Chat prompt (scored through the chat template)")
        comparison_id = gr.Number(label="Load comparison #", precision=0)
        load = gr.Button("Load from store", size="sm")
        demo = gr.Button("Load a demo pair", size="sm", elem_id="inspect-demo")
    with gr.Row():
        score_steps_box = gr.Checkbox(value=False, label="Score steps (a process reward model: each step's score at "
                                      "its end, over the curve; one response is enough)", elem_id="inspect-steps")
        step_separator = gr.Textbox(label="Step separator", placeholder="empty = blank-line paragraphs, then the "
                                    "answer; text:SEP or regex:PATTERN", elem_id="inspect-step-separator")
    human_first_errors = gr.State(None)
    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="inspect-prompt",
                        info="for a chat prompt: plain text (one user turn) or a JSON list of {\"role\", \"content\"} "
                             "messages, as Load from store fills it")
    with gr.Row():
        response_a = gr.Textbox(label="Response A", lines=6, elem_id="inspect-a")
        response_b = gr.Textbox(label="Response B", lines=6, elem_id="inspect-b")
    with gr.Accordion("More responses (C to I: a ranking item's completions load here)", open=False) as more:
        with gr.Row():
            more_responses = [gr.Textbox(label=f"Response {letter}", lines=4, min_width=300,
                                         elem_id=f"inspect-{letter.lower()}") for letter in "CDEFGHI"]
    with gr.Row():
        run = gr.Button("Score", variant="primary", elem_id="inspect-run", scale=4)
        stop = gr.Button("Cancel", elem_id="inspect-cancel", scale=1)
    status = gr.Markdown(elem_id="inspect-status")
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="inspect-table")
    flips = gr.Markdown(elem_id="inspect-flips")
    steps_summary = gr.Markdown(elem_id="inspect-steps-summary")
    chart = gr.Plot(elem_id="inspect-chart")
    with gr.Accordion("What the model sees", open=False):
        model_view = gr.Markdown(elem_id="inspect-model-view")
    render_diagnostics_panel(store, blocks, tab)

    def choices(chosen: list[str] | None, request: gr.Request):  # noqa: ANN202
        try:
            names = model_choices(store, current_actor(store, request))
        except USER_ERRORS:
            names = []
        kept = [name for name in (chosen or []) if name in names]  # a refresh keeps what the user ticked
        return gr.CheckboxGroup(choices=names, value=kept or names[:1])

    refresh.click(choices, inputs=models, outputs=models, api_visibility="private", api_name="inspect_models")
    blocks.load(choices, inputs=models, outputs=models, api_visibility="private", api_name="inspect_models_on_load")
    if tab is not None:  # a model a job registered since the page opened is listed when the tab is opened
        tab.select(choices, inputs=models, outputs=models, api_visibility="private", api_name="inspect_models_on_tab")

    def demo_pair() -> tuple[str, str, str, bool]:
        pair = DEMO_PREFERENCES[0]
        return pair["prompt"], pair["chosen"], pair["rejected"], True

    demo.click(demo_pair, outputs=[prompt, response_a, response_b, chat], api_visibility="private", api_name="demo_pair")

    def from_store(number: float | None, request: gr.Request) -> dict:
        if number is None:
            return {status: "Type a comparison number first."}
        try:
            stored = comparison_for_inspection(store, current_actor(store, request), int(number))
        except (*USER_ERRORS, UnknownComparison) as error:
            return {status: inline_text(error)}
        record = stored.content
        # A chat prompt keeps every turn (system and earlier turns too) as JSON messages, so the model
        # scores what training saw; plain text stays text.
        text = json.dumps(record.prompt_messages, ensure_ascii=False, indent=1) if record.prompt_messages is not None \
            else record.prompt_text
        verdict = {"a": "A", "b": "B", "tie": "a tie", "both_bad": "both bad", "skipped": "only skips",
                   "no_majority": "no majority"}.get(stored.human_verdict)
        said = (f" Humans preferred **{verdict}**" if stored.human_verdict in ("a", "b") else
                f" Humans said: **{verdict}**" if verdict else " No human label yet")
        said += f" ({inline_text(stored.votes)})." if stored.votes else "."
        if stored.human_first_errors is not None:
            # A trace of a steps dataset: one response, scored by steps, with the humans' first wrong steps.
            said = (f" Humans' first wrong step: {inline_text(stored.votes)}." if stored.votes else " Not marked yet.")
            return {prompt: text, response_a: record.a_text, response_b: "", **{box: "" for box in more_responses},
                    chat: record.prompt_messages is not None, score_steps_box: True,
                    step_separator: "" if stored.step_rule == "paragraphs" else stored.step_rule,
                    human_first_errors: stored.human_first_errors,
                    status: f"Loaded trace {int(number)} (dataset {inline_text(record.dataset)}).{said}"}
        if stored.ranked_responses:
            # A ranking item: all K completions, A, B, C... in imported order, and the humans' orders.
            texts = list(stored.ranked_responses) + [""] * (2 + len(more_responses) - len(stored.ranked_responses))
            said = (f" Humans' consensus: **{stored.consensus}** ({inline_text(stored.votes)})." if stored.consensus
                    else " No ranking yet.")
            return {prompt: text, response_a: texts[0], response_b: texts[1], human_first_errors: None,
                    **dict(zip(more_responses, texts[2:], strict=True)), more: gr.Accordion(open=True),
                    chat: record.prompt_messages is not None,
                    status: f"Loaded ranking item {int(number)} with {len(stored.ranked_responses)} responses "
                            f"(dataset {inline_text(record.dataset)}).{said}"}
        return {prompt: text, response_a: record.a_text, response_b: record.b_text, human_first_errors: None,
                **{box: "" for box in more_responses},
                chat: record.prompt_messages is not None,
                status: f"Loaded comparison {int(number)} (dataset {inline_text(record.dataset)}).{said}"}

    load.click(from_store, inputs=comparison_id,
               outputs=[prompt, response_a, response_b, *more_responses, more, chat, status, score_steps_box,
                        step_separator, human_first_errors], api_visibility="private", api_name="from_store")

    cancel_requests = CancelRequests()

    def score(names: list[str], path: str, prompt_text: str, as_chat: bool, by_steps: bool, separator: str,  # noqa: PLR0913
              humans, a: str, b: str, c: str, d: str, e: str, f: str, g: str, h: str, i: str,  # noqa: ANN001
              request: gr.Request, progress: gr.Progress = gr.Progress()) -> dict:  # noqa: B008 (Gradio's idiom)
        responses = [text for text in (a, b, c, d, e, f, g, h, i) if text and text.strip()]
        wanted = list(names or []) + ([path.strip()] if path and path.strip() else [])
        try:
            full_prompt = chat_prompt(prompt_text) if as_chat else (prompt_text or "")
            inspection = inspect_with_models(store, current_actor(store, request), wanted, full_prompt, responses,
                                             progress=cancel_requests.reporter(request, progress, "scoring"),
                                             step_rule=(separator or "paragraphs") if by_steps else None)
        except ScoringCancelled:
            return {status: "Cancelled."}
        except (*USER_ERRORS, InspectionRefused, ModelLoadError, UnknownModel) as error:
            return {status: inline_text(error)}
        no_trajectory = sorted({s.model for s in inspection.scores if s.result.trajectory is None})
        note = (" Encoder models have no trajectory: " + ", ".join(map(inline_text, no_trajectory))) if no_trajectory else ""
        return {table: results_table(inspection), flips: flips_markdown(inspection), chart: trajectory_figure(inspection),
                model_view: model_view_markdown(inspection), status: f"Scored {len(responses)} responses.{note}",
                steps_summary: steps_markdown(inspection, humans) if by_steps else ""}

    scoring = run.click(score, inputs=[models, model_path, prompt, chat, score_steps_box, step_separator,
                                       human_first_errors, response_a, response_b, *more_responses],
                        outputs=[table, flips, chart, model_view, status, steps_summary], api_visibility="private", api_name="score")

    def cancel_scoring(request: gr.Request) -> str:
        cancel_requests.cancel(request)
        return "Cancelling…"

    stop.click(cancel_scoring, outputs=status, api_visibility="private", cancels=[scoring], api_name="cancel_scoring")
