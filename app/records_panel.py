"""The record browser on the Data tab: a dataset's comparisons page by page with filters, a click
on a row shows the comparison with every label as its annotator saw it (and selects it for the bulk
actions), and your own label can be changed there."""

from __future__ import annotations

import html

import gradio as gr

from app.formatting import inline_text
from app.rendering import render_prompt, render_response
from app.session import USER_ERRORS, current_actor
from core.data.records import (
    RECORD_STATUSES,
    RecordError,
    RecordFilter,
    archive_records,
    browse,
    change_priority,
    record_detail,
    send_back,
)
from core.labeling.actions import ComparisonView, ResponseView, label_stored
from core.segments import split_thinking
from storage.engine import Store

PAGE_SIZE = 25
RECORD_HEADERS = ["comparison", "prompt", "status", "votes", "comments", "source", "priority"]
LABEL_HEADERS = ["annotator", "vote", "strength", "comment", "seconds", "time (UTC)", "sides as they saw them"]
MY_LABEL_CHOICES = [("A is better", "a"), ("B is better", "b"), ("Tie", "tie"), ("Both bad", "both_bad"),
                    ("Skip", "skip")]
ERRORS = (*USER_ERRORS, RecordError)


def _ids(text: str) -> list[int]:
    try:
        return [int(part) for part in (text or "").replace(",", " ").split()]
    except ValueError:
        raise RecordError(f"comparison ids are whole numbers separated by commas, got {text[:80]!r}") from None


def _detail_html(detail) -> str:  # noqa: ANN001
    content = detail.content
    view = ComparisonView(
        content.id, content.prompt_text, content.prompt_messages,
        ResponseView("a", content.a_model, content.a_text, *split_thinking(content.a_text)),
        ResponseView("b", content.b_model, content.b_text, *split_thinking(content.b_text)),
    )
    model = {"a": content.a_model, "b": content.b_model}
    title = {side: f"{side.upper()}" + (f" · {model[side]}" if model[side] else "") for side in "ab"}
    return (
        f'<div class="rl-record"><p>Comparison #{content.id} · dataset <b>{html.escape(content.dataset)}</b> · '
        f"{html.escape(detail.status)} · priority {detail.priority} · source {html.escape(content.source)}</p>"
        f"{render_prompt(view)}"
        f'<div style="display:flex;gap:12px;flex-wrap:wrap"><div style="flex:1;min-width:280px">'
        f"{render_response(view.left, title['a'])}</div>"
        f'<div style="flex:1;min-width:280px">{render_response(view.right, title["b"])}</div></div></div>'
    )


def render_records_panel(store: Store, dataset_choices: gr.Dropdown) -> None:
    """The browser, inside the current Blocks; ``dataset_choices`` is the dataset dropdown it reads."""
    with gr.Row():
        status = gr.Dropdown(list(RECORD_STATUSES), value="any", label="Status", elem_id="records-status")
        annotator = gr.Textbox(label="Labeled by", placeholder="user name", elem_id="records-annotator")
        source = gr.Textbox(label="Source", placeholder="e.g. import:file.jsonl")
        text = gr.Textbox(label="Text search", placeholder="in the prompt or either completion", elem_id="records-text")
    with gr.Row():
        disagreement = gr.Checkbox(label="Annotators disagree", elem_id="records-disagreement")
        has_comment = gr.Checkbox(label="Has a comment", elem_id="records-has-comment")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="records-page")
        search = gr.Button("Show records", variant="primary", elem_id="records-search")
    found = gr.Markdown(elem_id="records-found")
    gr.Markdown("Click a row to see the comparison and its labels; the row is added to the selection below.")
    table = gr.Dataframe(headers=RECORD_HEADERS, interactive=False, wrap=True, elem_id="records-table")
    with gr.Row():
        selected = gr.Textbox(label="Selected comparison ids (comma-separated)", elem_id="records-selected", scale=3)
        select_page = gr.Button("Select this page", size="sm")
        clear = gr.Button("Clear", size="sm")
    with gr.Row():
        priority = gr.Number(value=10, precision=0, label="Priority", elem_id="records-priority")
        send_back_button = gr.Button("Send back to the queue", elem_id="records-send-back")
        priority_button = gr.Button("Set priority", elem_id="records-set-priority")
        archive_button = gr.Button("Archive", elem_id="records-archive", variant="stop")
        restore_button = gr.Button("Restore", elem_id="records-restore")
    action_result = gr.Markdown(elem_id="records-action")
    detail = gr.HTML(elem_id="records-detail")
    labels = gr.Dataframe(headers=LABEL_HEADERS, interactive=False, wrap=True, elem_id="records-labels")
    with gr.Row():
        my_choice = gr.Radio(MY_LABEL_CHOICES, label="Your label on this comparison", elem_id="records-my-choice")
        save_mine = gr.Button("Save my label", elem_id="records-save-mine")
    shown = gr.State(None)  # the comparison id the detail shows
    page_ids = gr.State([])

    def show(dataset, status_value, annotator_value, source_value, text_value, disagree, commented, page_number,  # noqa: ANN001
             request: gr.Request) -> dict:
        try:
            result = browse(store, current_actor(store, request), dataset or "", RecordFilter(
                status=status_value or "any", annotator=(annotator_value or "").strip(),
                source=(source_value or "").strip(), disagreement=bool(disagree), has_comment=bool(commented),
                text=(text_value or "").strip()), page=int(page_number or 1), page_size=PAGE_SIZE)
        except ERRORS as error:
            return {found: f"**Not shown.** {inline_text(error)}"}
        pages = max(1, -(-result.total // PAGE_SIZE))
        return {
            found: f"**{result.total}** matching comparison(s) · page {result.page} of {pages}",
            table: [[r.comparison_id, r.prompt_excerpt, r.status, r.votes, r.comments, r.source, r.priority]
                    for r in result.rows],
            page_ids: [r.comparison_id for r in result.rows],
        }

    filters = [dataset_choices, status, annotator, source, text, disagreement, has_comment, page]
    search.click(show, inputs=filters, outputs=[found, table, page_ids], api_visibility="private", api_name="show_records")

    def open_record(comparison_id: int | None, selection: str, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            record = record_detail(store, actor, comparison_id)
        except ERRORS as error:
            return {action_result: f"**Not shown.** {inline_text(error)}"}
        ids = (selection or "").replace(",", " ").split()
        if str(comparison_id) not in ids:
            ids.append(str(comparison_id))
        mine = next((label.choice for label in record.labels if label.annotator == actor.name), None)
        return {
            detail: _detail_html(record),
            labels: [[label.annotator + (" (import)" if label.is_source else ""), label.choice,
                      {1: "slightly", 2: "clearly"}.get(label.strength, ""), label.comment or "",
                      "" if label.seconds_spent is None else f"{label.seconds_spent:.1f}",
                      label.updated_at.strftime("%Y-%m-%d %H:%M:%S"), record.side_seen_left(label)]
                     for label in record.labels],
            selected: ", ".join(ids),
            shown: int(comparison_id),
            my_choice: mine,
        }

    def open_row(event: gr.EventData, selection: str, request: gr.Request) -> dict:
        # gr.EventData, not gr.SelectData: Gradio builds a SelectData by indexing the event's data, which a
        # call without a click (a script, a crafted request) does not carry, and failed with a TypeError
        # before this handler (and its permission check) ran.
        data = getattr(event, "_data", None)
        row = data.get("row_value") if isinstance(data, dict) else None
        return open_record(row[0] if isinstance(row, list) and row else None, selection, request)

    detail_outputs = [detail, labels, selected, shown, my_choice, action_result]
    table.select(open_row, inputs=selected, outputs=detail_outputs, api_visibility="private", api_name="open_row_on_row")
    def select_whole_page(ids: list[int]) -> str:
        return ", ".join(map(str, ids or []))

    def clear_selection() -> str:
        return ""

    select_page.click(select_whole_page, inputs=page_ids, outputs=selected, api_visibility="private", api_name="select_whole_page")
    clear.click(clear_selection, outputs=selected, api_visibility="private", api_name="clear_selection")

    def bulk(action: str):  # noqa: ANN202
        def run_bulk(dataset, selection, priority_value, request: gr.Request) -> str:  # noqa: ANN001
            try:
                actor, ids = current_actor(store, request), _ids(selection)
                value = int(priority_value or 0)
                if action == "send back":
                    changed = send_back(store, actor, dataset or "", ids, priority=value)
                elif action == "set priority":
                    changed = change_priority(store, actor, dataset or "", ids, value)
                else:
                    changed = archive_records(store, actor, dataset or "", ids, archived=action == "archive")
            except ERRORS as error:
                return f"**Nothing changed.** {inline_text(error)}"
            return f"**Done:** {action} on {changed} comparison(s)."

        return run_bulk

    for action, button in (("send back", send_back_button), ("set priority", priority_button),
                           ("archive", archive_button), ("restore", restore_button)):
        # Then show the page again, so the table says what the action changed.
        button.click(bulk(action), inputs=[dataset_choices, selected, priority], outputs=action_result,
                     api_visibility="private", api_name="bulk_" + action.replace(" ", "_")).then(show, inputs=filters, outputs=[found, table, page_ids],
                                                    api_visibility="private", api_name="show_records_after_bulk_" + action.replace(" ", "_"))

    def save_my_label(comparison_id: int | None, choice: str | None, selection: str, request: gr.Request) -> dict:
        if comparison_id is None or not choice:
            return {action_result: "Open a comparison and choose your label first."}
        try:
            # The record view always shows A on the left, so that is how this annotator saw the pair.
            result = label_stored(store, current_actor(store, request), int(comparison_id), choice, shown_left="a")
        except ERRORS as error:
            return {action_result: f"**Not saved.** {inline_text(error)}"}
        updates = open_record(comparison_id, selection, request)
        updates[action_result] = "**Saved** your label." if result.changed else "Your label was already that."
        return updates

    save_mine.click(save_my_label, inputs=[shown, my_choice, selected], outputs=detail_outputs,
                    api_visibility="private", api_name="save_my_label").then(show, inputs=filters, outputs=[found, table, page_ids],
                                                   api_visibility="private", api_name="show_records_after_save_my_label")
