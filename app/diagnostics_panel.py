"""Dataset diagnostics panel (inside the Inspect tab): a model over the store's labeled comparisons."""

from __future__ import annotations

import html

import gradio as gr
import plotly.graph_objects as go

from app.cancelling import CancelRequests
from app.formatting import inline_text
from app.session import USER_ERRORS, current_actor
from core.data.datasets import datasets_for
from core.scoring.diagnostics import Diagnostics, run_diagnostics, send_for_review
from core.scoring.engine import ModelLoadError, ScoringCancelled
from core.scoring.inspection import UnknownModel, model_choices
from storage.engine import Store

PAIR_HEADERS = ["comparison", "prompt", "chosen reward", "rejected reward", "margin"]
FLIP_HEADERS = ["comparison", "prompt", "margin (first model)", "margin (second model)"]


def _summary(report: Diagnostics) -> str:
    thinking = "n/a" if report.thinking_accuracy is None else f"{report.thinking_accuracy:.3f}"
    length = "n/a" if report.length_correlation is None else f"{report.length_correlation:+.2f}"
    lines = [
        f"**{inline_text(report.model)}** on {len(report.pairs)} labeled comparisons: accuracy **{report.accuracy:.3f}** "
        f"(ties count wrong) · mean margin **{report.mean_margin:+.3f}** · answer-only accuracy "
        f"**{report.answer_accuracy:.3f}** · thinking-only accuracy **{thinking}** · reward–length correlation **{length}**",
        f"Suspected label errors: **{len(report.suspected_label_errors)}** · near-ties: **{len(report.near_ties)}**"
        + (f" · skipped (longer than the model's max_length): **{report.skipped_over_max_length}**"
           if report.skipped_over_max_length else ""),
    ]
    if report.confounds is not None:
        c = report.confounds
        lines.append(f"Baselines on the same {c.n} pairs: prefer the longer response **{c.prefer_longer:.3f}** · prefer "
                     f"the shorter **{c.prefer_shorter:.3f}** (lengths in tokens; equal lengths count half). "
                     f"{html.escape(c.verdict[0].upper() + c.verdict[1:])}.")
    if report.health:
        lines.append("**Health checks**")
        lines += [f"- **{c.symptom}** ({html.escape(c.evidence)}). Fix: {html.escape(c.fix)}" for c in report.health]
    else:
        lines.append("Health checks: nothing flagged.")
    return "\n\n".join(lines)


def _margin_figure(report: Diagnostics) -> go.Figure:
    figure = go.Figure()
    figure.add_trace(go.Histogram(x=[p.chosen_reward for p in report.pairs], name="chosen", opacity=0.6))
    figure.add_trace(go.Histogram(x=[p.rejected_reward for p in report.pairs], name="rejected", opacity=0.6))
    figure.update_layout(barmode="overlay", title="Rewards of chosen vs rejected responses", xaxis_title="reward",
                         height=320, margin={"t": 50, "l": 40, "r": 20, "b": 40})
    return figure


def _length_figure(report: Diagnostics) -> go.Figure:
    figure = go.Figure()
    for side, tokens, rewards in (
        ("chosen", [p.chosen_tokens for p in report.pairs], [p.chosen_reward for p in report.pairs]),
        ("rejected", [p.rejected_tokens for p in report.pairs], [p.rejected_reward for p in report.pairs]),
    ):
        figure.add_trace(go.Scatter(x=tokens, y=rewards, mode="markers", name=side,
                                    hovertext=[f"comparison {p.comparison_id}" for p in report.pairs]))
    figure.update_layout(title="Reward vs length", xaxis_title="tokens", yaxis_title="reward", height=320,
                         margin={"t": 50, "l": 40, "r": 20, "b": 40})
    return figure


def _rows(pairs) -> list[list]:  # noqa: ANN001
    return [[p.comparison_id, p.prompt_excerpt, round(p.chosen_reward, 4), round(p.rejected_reward, 4),
             round(p.margin, 4)] for p in pairs]


def render_diagnostics_panel(store: Store, blocks: gr.Blocks, tab: gr.Tab | None = None) -> None:
    with gr.Accordion("Dataset diagnostics", open=False, elem_id="diagnostics"):
        with gr.Row():
            model = gr.Dropdown(label="Model", elem_id="diag-model")
            second = gr.Dropdown(label="Compare with (optional)", elem_id="diag-second")
            diag_dataset = gr.Dropdown(choices=[("All datasets", "")], value="", label="Dataset", elem_id="diag-dataset")
            limit = gr.Number(value=500, precision=0, label="Most recent labeled comparisons", minimum=2)
        with gr.Row():
            run = gr.Button("Diagnose", variant="primary", elem_id="diag-run", scale=4)
            stop = gr.Button("Cancel", elem_id="diag-cancel", scale=1)
        summary = gr.Markdown(elem_id="diag-summary")
        with gr.Row():
            margins = gr.Plot()
            lengths = gr.Plot()
        gr.Markdown("**Suspected label errors** (the model prefers the rejected side)")
        suspects = gr.Dataframe(headers=PAIR_HEADERS, interactive=False, elem_id="diag-suspects")
        gr.Markdown("**Near-ties**")
        ties = gr.Dataframe(headers=PAIR_HEADERS, interactive=False)
        gr.Markdown("**Where the two models disagree**")
        flips = gr.Dataframe(headers=FLIP_HEADERS, interactive=False)
        with gr.Row():
            review_ids = gr.Textbox(label="Comparisons to send back for another label (ids, comma-separated)",
                                    elem_id="diag-review-ids")
            send = gr.Button("Send to the labeling queue (high priority)", elem_id="diag-send")
        send_status = gr.Markdown(elem_id="diag-send-status")

    def choices(first: str | None, other: str | None, chosen_dataset: str | None, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            names = model_choices(store, actor)
            datasets = [s.name for s in datasets_for(store, actor)]
        except USER_ERRORS:  # not allowed: nothing to choose from
            return {model: gr.Dropdown(choices=[], value=None), second: gr.Dropdown(choices=[""], value=""),
                    diag_dataset: gr.Dropdown(choices=[], value=None)}
        # A refresh (the tab opened again) lists new models and keeps what the user chose.
        return {model: gr.Dropdown(choices=names, value=first if first in names else (names[0] if names else None)),
                second: gr.Dropdown(choices=["", *names], value=other if other in names else ""),
                diag_dataset: gr.Dropdown(choices=[("All datasets", ""), *[(name, name) for name in datasets]],
                                          value=chosen_dataset if chosen_dataset in datasets else "")}

    blocks.load(choices, inputs=[model, second, diag_dataset], outputs=[model, second, diag_dataset],
                api_visibility="private", api_name="diagnosis_models_on_load")
    if tab is not None:
        tab.select(choices, inputs=[model, second, diag_dataset], outputs=[model, second, diag_dataset],
                   api_visibility="private", api_name="diagnosis_models_on_tab")

    cancel_requests = CancelRequests()

    def run_diagnosis(first_name: str | None, second_name: str | None, dataset: str | None, most_recent: float | None,
                      request: gr.Request, progress: gr.Progress = gr.Progress()) -> dict:  # noqa: B008
        try:
            report, disagreements = run_diagnostics(store, current_actor(store, request), first_name, second_name,
                                                    limit=int(most_recent or 500), dataset=dataset or None,
                                                    progress=cancel_requests.reporter(request, progress, "diagnosing"))
        except ScoringCancelled:
            return {summary: "Cancelled."}
        except (*USER_ERRORS, ModelLoadError, UnknownModel, ValueError) as error:
            return {summary: inline_text(error)}
        return {
            summary: _summary(report),
            margins: _margin_figure(report),
            lengths: _length_figure(report),
            suspects: _rows(report.suspected_label_errors),
            ties: _rows(report.near_ties),
            flips: [[d.comparison_id, d.prompt_excerpt, round(d.first_margin, 4), round(d.second_margin, 4)]
                    for d in disagreements],
            review_ids: ", ".join(str(p.comparison_id) for p in report.suspected_label_errors),
        }

    diagnosing = run.click(run_diagnosis, inputs=[model, second, diag_dataset, limit],
                           outputs=[summary, margins, lengths, suspects, ties, flips, review_ids], api_visibility="private", api_name="run_diagnosis")

    def cancel_diagnosis(request: gr.Request) -> str:
        cancel_requests.cancel(request)
        return "Cancelling…"

    stop.click(cancel_diagnosis, outputs=summary, api_visibility="private", cancels=[diagnosing], api_name="cancel_diagnosis")

    def send_back(ids_text: str, request: gr.Request) -> str:
        try:
            ids = [int(part) for part in ids_text.replace(",", " ").split()]
        except ValueError:
            return "Give comparison ids as numbers separated by commas."
        try:
            sent = send_for_review(store, current_actor(store, request), ids)
        except (*USER_ERRORS, ValueError) as error:
            return html.escape(str(error))
        return f"Sent {sent} comparison(s) back to the labeling queue at high priority, for one more label each."

    send.click(send_back, inputs=review_ids, outputs=send_status, api_visibility="private", api_name="send_back")
