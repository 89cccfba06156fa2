"""The Team tab (engineers and admins): who labels how much and how fast, position bias, agreement,
and the comparisons annotators disagree on. Admins set the overlap here."""

from __future__ import annotations

import gradio as gr

from app.session import USER_ERRORS, current_actor
from core.labeling.actions import change_overlap, labels_per_comparison
from core.labeling.team_stats import TeamReport, team_report
from core.scoring.inspection import allow_annotators_to_inspect, annotators_may_inspect
from storage.engine import Store

ANNOTATOR_HEADERS = ["annotator", "labels", "median seconds", "left-side pick rate"]
DISAGREEMENT_HEADERS = ["comparison", "prompt", "votes"]


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _summary(report: TeamReport, overlap: int) -> str:
    fleiss = _number(report.fleiss_kappa)
    if report.fleiss_raters:
        fleiss += f" (comparisons with {report.fleiss_raters} raters)"
    return (
        f"Overlap setting: **{overlap}** label(s) per comparison · comparisons labeled by 2+ people: "
        f"**{report.overlapping_comparisons}**\n\n"
        f"Percent agreement: **{_number(None if report.percent_agreement is None else 100 * report.percent_agreement, 1)}%** · "
        f"Cohen's kappa (mean over annotator pairs): **{_number(report.cohens_kappa)}** · Fleiss' kappa: **{fleiss}**\n\n"
        "A left-side pick rate far from 0.5 suggests position bias (sides are randomized per comparison)."
    )


def render_team_tab(store: Store) -> gr.Button:
    summary = gr.Markdown(elem_id="team-summary")
    annotators = gr.Dataframe(headers=ANNOTATOR_HEADERS, interactive=False, elem_id="team-annotators")
    gr.Markdown("### Disagreements")
    disagreements = gr.Dataframe(headers=DISAGREEMENT_HEADERS, interactive=False, wrap=True, elem_id="team-disagreements")
    refresh = gr.Button("Refresh", elem_id="team-refresh")
    with gr.Accordion("Labeling settings (admins)", open=False):
        overlap = gr.Number(label="Labels per comparison (overlap)", precision=0, minimum=1, maximum=10)
        save_overlap = gr.Button("Save", size="sm")
        inspect_allowed = gr.Checkbox(label="Annotators may use the Inspect tab on text they paste (never stored "
                                            "comparisons or diagnostics)", elem_id="team-annotators-inspect")
        settings_status = gr.Markdown()

    def show_team(request: gr.Request) -> dict:
        try:
            report = team_report(store, current_actor(store, request))
        except USER_ERRORS as error:
            return {summary: str(error)}
        current = labels_per_comparison(store)
        return {
            summary: _summary(report, current),
            annotators: [
                [a.name, a.labels, _number(a.median_seconds, 1), _number(a.left_pick_rate)] for a in report.annotators
            ],
            disagreements: [[d.comparison_id, d.prompt_excerpt, d.votes] for d in report.disagreements],
            overlap: current,
            inspect_allowed: annotators_may_inspect(store),
        }

    refresh.click(show_team, outputs=[summary, annotators, disagreements, overlap, inspect_allowed],
                  api_visibility="private")

    def save_overlap_setting(value: float | None, request: gr.Request) -> str:
        try:
            change_overlap(store, current_actor(store, request), int(value or 0))
        except USER_ERRORS as error:
            return str(error)
        return f"Saved: each comparison now needs {int(value)} label(s)."

    save_overlap.click(save_overlap_setting, inputs=overlap, outputs=settings_status, api_visibility="private")

    def save_inspect_setting(allowed: bool, request: gr.Request) -> str:
        try:
            allow_annotators_to_inspect(store, current_actor(store, request), bool(allowed))
        except USER_ERRORS as error:
            return str(error)
        return ("Saved: annotators see the Inspect tab (after a reload), for text they paste."
                if allowed else "Saved: annotators do not see the Inspect tab.")

    inspect_allowed.input(save_inspect_setting, inputs=inspect_allowed, outputs=settings_status, api_visibility="private")
    return refresh
