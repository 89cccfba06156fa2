"""The active-learning loop of the dataset chosen in the Team tab: its settings, held-out accuracy
against labels for each model version, labels per arm, and (on demand) the promoted model's accuracy
per arm on labels it has not seen, with a reliability diagram."""

from __future__ import annotations

import html

import gradio as gr
import plotly.graph_objects as go

from app.formatting import plot_text
from app.session import USER_ERRORS, current_actor
from core.scoring.engine import ModelLoadError
from core.loop.acquisition import ACQUISITIONS
from core.loop.evaluation import LoopReport, loop_report
from core.data.datasets import DatasetError
from core.loop.settings import LoopError, LoopSettings, configure_loop
from storage.engine import Store

ARM_HEADERS = ["arm", "human labels", "fresh pairs (labeled after the model)", "accuracy on them"]
CHOSEN_HEADERS = ["comparison", "prompt", "pair", "rule", "why it is served first", "held back", "state"]


def _chosen_note(report: LoopReport) -> str:
    if report.chosen_by_job is None:
        return ("Pairs per prompt: every pair is served." if report.status.acquisition == "all" else
                "No rescore has chosen pairs yet.")
    shown = len(report.chosen_pairs)
    return (f"Rescore job {report.chosen_by_job} chose one pair on each of {report.chosen_total} prompt(s)"
            + (f"; the newest {shown} are listed" if shown < report.chosen_total else "") + ".")


def _status_markdown(report: LoopReport) -> str:
    s = report.status
    retrain = f"every **{s.retrain_every}** new human labels" if s.retrain_every else "**off**"
    return (
        f"Queue order: **{s.order}**" + (f" by **{html.escape(s.model)}**" if s.order == "uncertainty" and s.model else "")
        + ((" (" + (f"disagreement of **{s.ensemble_size}** bootstrap heads" if s.uncertainty == "ensemble"
                    else "smallest margin") + " first)") if s.order == "uncertainty" else "")
        + (f" · pairs per prompt: one chosen by **{s.acquisition}** first" if s.acquisition != "all" else "")
        + (f" · ranked by the frozen queue encoder **{html.escape(s.queue_encoder)}** + heads (refit every "
           f"{s.refit_every or '-'} labels)" if s.queue_encoder else "")
        + f" · random control arm: **{s.random_fraction:.0%}** · retrain: {retrain} "
        f"({s.human_labels - s.labels_at_retrain} since the last) · promoted model: "
        f"**{html.escape(s.promoted_model or '-')}** (tolerance {s.promotion_tolerance}; judged on at least "
        f"{s.min_heldout_pairs} held-out pairs)\n\n"
        "Admins change these below, or with `python app.py datasets NAME --order uncertainty --model NAME|latest "
        "--random-fraction F --retrain-every N --promotion-tolerance T --min-heldout-pairs N --uncertainty margin|ensemble "
        "--acquisition all|margin|delta-ucb|dts|random --queue-encoder FOLDER --refit-every N`."
    )


def _curve(report: LoopReport) -> go.Figure:
    figure = go.Figure()
    points = [v for v in report.versions if v.heldout_accuracy is not None]
    figure.add_trace(go.Scatter(x=[v.labels for v in points], y=[v.heldout_accuracy for v in points],
                                mode="lines+markers+text", text=[plot_text(v.name) for v in points],
                                textposition="top center", name="held-out accuracy"))
    promoted = [v for v in points if v.promoted]
    if promoted:
        figure.add_trace(go.Scatter(x=[v.labels for v in promoted], y=[v.heldout_accuracy for v in promoted],
                                    mode="markers", marker={"size": 14, "symbol": "star"}, name="promoted"))
    for arm in ("uncertainty", "random", "before the loop"):
        # Each evaluation scored a version on pairs labeled after it was trained (automatically when a
        # retrain finished, or on demand): one point per version, per arm.
        scored = [(e["labels"], e["arms"][arm]["accuracy"], e["model"]) for e in report.history
                  if (e.get("arms") or {}).get(arm, {}).get("accuracy") is not None]
        if scored:
            figure.add_trace(go.Scatter(x=[x for x, _, _ in scored], y=[y for _, y, _ in scored],
                                        mode="lines+markers", text=[plot_text(m) for _, _, m in scored],
                                        name=plot_text(f"{arm} arm: accuracy on labels it had not seen")))
    figure.update_layout(height=300, title="Held-out accuracy against labels, per model version",
                         xaxis_title="labeled pairs in its training data", yaxis_title="accuracy",
                         yaxis_range=[0, 1.15], margin={"t": 40, "l": 50, "r": 10, "b": 40})
    return figure


def _reliability(report: LoopReport) -> go.Figure:
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="perfect calibration"))
    bins = report.calibration
    figure.add_trace(go.Scatter(x=[b["predicted"] for b in bins], y=[b["observed"] for b in bins],
                                mode="lines+markers", text=[f"{b['pairs']} pairs" for b in bins], name="this model"))
    if report.human_ceiling is not None:
        figure.add_hline(y=report.human_ceiling, line_dash="dash", annotation_text="human-human agreement")
    figure.update_layout(height=300, title=plot_text(f"Reliability of {report.evaluated_model or '-'} on fresh labels"),
                         xaxis_title="sigma(r_a - r_b)", yaxis_title="share of human votes for a",
                         xaxis_range=[0, 1], yaxis_range=[0, 1.05], margin={"t": 40, "l": 50, "r": 10, "b": 40})
    return figure


def render_loop_panel(store: Store, dataset: gr.Dropdown, tab: gr.Tab | None = None) -> None:
    with gr.Accordion("Active-learning loop of the chosen dataset", open=True, elem_id="loop-panel"):
        status = gr.Markdown("Choose a dataset above to see its loop.", elem_id="loop-status")
        curve = gr.Plot(elem_id="loop-curve")
        evaluate = gr.Button("Evaluate the promoted model on labels it has not seen", size="sm", elem_id="loop-evaluate")
        arms = gr.Dataframe(headers=ARM_HEADERS, interactive=False, elem_id="loop-arms")
        chosen_note = gr.Markdown(elem_id="loop-chosen-note")
        chosen_table = gr.Dataframe(headers=CHOSEN_HEADERS, interactive=False, wrap=True, elem_id="loop-chosen",
                                    column_widths=["9%", "7%", "11%", "9%", "46%", "8%", "10%"])
        reliability = gr.Plot(elem_id="loop-reliability")
        with gr.Accordion("Loop settings (admins)", open=False, elem_id="loop-settings"):
            with gr.Row():
                order = gr.Radio(["priority", "uncertainty"], label="queue order", elem_id="loop-order")
                uncertainty = gr.Radio(["margin", "ensemble"], label="uncertainty", elem_id="loop-uncertainty")
                model = gr.Textbox(label="model (a registered NAME or NAME@vN, or latest)", elem_id="loop-model")
                acquisition = gr.Radio(list(ACQUISITIONS), label="pairs per prompt of 3+ candidates (acquisition)",
                                       elem_id="loop-acquisition")
            with gr.Row():
                random_fraction = gr.Number(label="random control arm (0 to 1)", elem_id="loop-random-fraction")
                retrain_every = gr.Number(label="retrain every N human labels (0: off)", precision=0,
                                          elem_id="loop-retrain-every")
                tolerance = gr.Number(label="promotion tolerance (0 to 1)", elem_id="loop-tolerance")
                min_heldout = gr.Number(label="judge on at least N held-out pairs", precision=0,
                                        elem_id="loop-min-heldout")
            with gr.Row():
                queue_encoder = gr.Textbox(label="queue encoder: a frozen model that ranks the queue with bootstrap heads "
                                           "(a registered NAME or a folder under the models folder; empty: the model "
                                           "above)", elem_id="loop-queue-encoder")
                refit_every = gr.Number(label="refit the encoder's heads every N human labels (0: on rescores only)",
                                        precision=0, elem_id="loop-refit-every")
            save = gr.Button("Save loop settings", size="sm", elem_id="loop-save")
            saved = gr.Markdown(elem_id="loop-saved")
        form = [order, uncertainty, model, random_fraction, retrain_every, tolerance, min_heldout, acquisition,
                queue_encoder, refit_every]

    def show(chosen: str | None, request: gr.Request, run_evaluation: bool = False) -> dict:
        try:
            report = loop_report(store, current_actor(store, request), chosen or None, evaluate=run_evaluation)
        except (*USER_ERRORS, LoopError, ModelLoadError) as error:
            return {status: html.escape(str(error))}
        if report is None:
            return {status: "Choose a dataset above to see its loop."}
        s = report.status
        updates = {status: _status_markdown(report), curve: _curve(report),
                   arms: [[a.arm, a.labels, a.fresh_pairs, "n/a" if a.accuracy is None else f"{a.accuracy:.3f}"]
                          for a in report.arms],
                   chosen_note: _chosen_note(report),
                   chosen_table: [[f"#{c.item_id}", c.prompt_id, f"#{c.pair[0]} vs #{c.pair[1]}", c.rule, c.why, c.held_back,
                             "open" if c.still_open else "labeled"] for c in report.chosen_pairs],
                   order: s.order, uncertainty: s.uncertainty, model: s.model or "", random_fraction: s.random_fraction,
                   retrain_every: s.retrain_every or 0, tolerance: s.promotion_tolerance, min_heldout: s.min_heldout_pairs,
                   acquisition: s.acquisition, queue_encoder: s.queue_encoder or "", refit_every: s.refit_every}
        if run_evaluation:
            updates[reliability] = _reliability(report)
            if report.evaluated_model is None:
                updates[status] = updates[status] + "\n\nNo promoted model to evaluate yet."
        return updates

    def show_loop(chosen: str | None, request: gr.Request) -> dict:
        return show(chosen, request)

    def evaluate_loop(chosen: str | None, request: gr.Request) -> dict:
        return show(chosen, request, run_evaluation=True)

    def save_loop_settings(chosen, chosen_order, chosen_uncertainty, chosen_model, fraction, every, tolerance_value,  # noqa: ANN001
                           minimum, chosen_acquisition, encoder, refit, request: gr.Request) -> dict:
        try:
            settings = LoopSettings(order=chosen_order or None, uncertainty=chosen_uncertainty or None,
                                    model=(chosen_model or "").strip() or None,
                                    random_fraction=None if fraction is None else float(fraction),
                                    retrain_every=None if every is None else int(every),
                                    promotion_tolerance=None if tolerance_value is None else float(tolerance_value),
                                    min_heldout_pairs=None if minimum is None else int(minimum),
                                    acquisition=chosen_acquisition or None,
                                    # The form always sends the field: empty removes the encoder, as '' does on the
                                    # command line.
                                    queue_encoder=(encoder or "").strip(),
                                    refit_every=None if refit is None else int(refit))
            # The permission is checked first (in core), whatever the form holds.
            result = configure_loop(store, current_actor(store, request), chosen or "", settings)
        except (*USER_ERRORS, LoopError, DatasetError) as error:
            return {saved: f"**Not saved.** {html.escape(str(error))}"}
        return {**show(chosen, request), saved: "Saved." + "".join(f" {html.escape(n)}." for n in result.notes)}

    outputs = [status, curve, arms, chosen_note, chosen_table, reliability, *form]
    save.click(save_loop_settings, inputs=[dataset, *form], outputs=[*outputs, saved], api_visibility="private", api_name="save_loop_settings")
    dataset.input(show_loop, inputs=dataset, outputs=outputs, api_visibility="private", api_name="show_loop")
    if tab is not None:
        tab.select(show_loop, inputs=dataset, outputs=outputs, api_visibility="private", api_name="show_loop_on_tab")
    evaluate.click(evaluate_loop, inputs=dataset, outputs=outputs, api_visibility="private", api_name="evaluate_loop")
