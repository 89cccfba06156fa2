"""The Team tab (engineers and admins): who labels how much and how fast, position bias, agreement,
and the comparisons annotators disagree on. Admins set the overlap here."""

from __future__ import annotations

import html

import gradio as gr

from app.session import USER_ERRORS, current_actor
from core.accounts import (
    LOGIN_ROLES,
    AccountError,
    AccountSummary,
    change_role,
    create_account,
    disable_account,
    enable_account,
    list_accounts,
    set_password,
)
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


# ----- Users (admins): every button calls one core.accounts function, which checks MANAGE_USERS itself.
USER_HEADERS = ["name", "role", "disabled", "labels"]
ACCOUNT_ERRORS = (*USER_ERRORS, AccountError)


def _account_rows(accounts: list[AccountSummary]) -> list[list]:
    return [[a.name, a.role, f"since {a.disabled_at:%Y-%m-%d %H:%M} UTC" if a.disabled else "no", a.labels]
            for a in accounts]


def render_users_section(store: Store) -> gr.Accordion:
    """The admins' user management, hidden until the page learns the visitor is an admin (``ui.tabs_for``).
    Its list loads when the section is opened and after every change."""
    with gr.Accordion("Users (admins)", open=False, visible=False, elem_id="team-users") as section:
        users = gr.Dataframe(headers=USER_HEADERS, interactive=False, elem_id="users-table")
        with gr.Row():
            name = gr.Textbox(label="User name", max_length=64, elem_id="users-name")
            role = gr.Dropdown(choices=[r.value for r in LOGIN_ROLES], value=LOGIN_ROLES[0].value, label="Role",
                               elem_id="users-role")
            password = gr.Textbox(label="Password", type="password", max_length=1024, elem_id="users-password",
                                  info="for Add user and Reset password")
        with gr.Row():
            add = gr.Button("Add user", size="sm", variant="primary", elem_id="users-add")
            set_role = gr.Button("Change role", size="sm", elem_id="users-set-role")
            reset = gr.Button("Reset password", size="sm", elem_id="users-reset-password")
            disable = gr.Button("Disable login", size="sm", variant="stop", elem_id="users-disable")
            enable = gr.Button("Re-enable login", size="sm", elem_id="users-enable")
        status = gr.Markdown(elem_id="users-status")

    def listing(actor) -> dict:  # noqa: ANN001
        return {users: _account_rows(list_accounts(store, actor))}

    def show_users(request: gr.Request) -> dict:
        try:
            return listing(current_actor(store, request))
        except ACCOUNT_ERRORS as error:
            return {status: html.escape(str(error))}

    def add_account(user_name: str, user_role: str, user_password: str, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            create_account(store, actor, (user_name or "").strip(), user_role, user_password)
            # The password box is emptied so it is not reused for the next action by mistake.
            return {**listing(actor), password: "", status: f"Added {user_role} **{user_name.strip()}**."}
        except ACCOUNT_ERRORS as error:
            return {status: html.escape(str(error))}  # the message may quote what was typed

    def change_account_role(user_name: str, user_role: str, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            change_role(store, actor, (user_name or "").strip(), user_role)
            return {**listing(actor), status: f"**{user_name.strip()}** is now {user_role}."}
        except ACCOUNT_ERRORS as error:
            return {status: html.escape(str(error))}  # the message may quote what was typed

    def reset_account_password(user_name: str, user_password: str, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            set_password(store, actor, (user_name or "").strip(), user_password)
            return {**listing(actor), password: "", status: f"New password set for **{user_name.strip()}**."}
        except ACCOUNT_ERRORS as error:
            return {status: html.escape(str(error))}  # the message may quote what was typed

    def disable_login(user_name: str, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            changed = disable_account(store, actor, (user_name or "").strip())
            return {**listing(actor), status: f"**{user_name.strip()}** can no longer log in (labels kept)."
                    if changed else f"**{user_name.strip()}** was already disabled."}
        except ACCOUNT_ERRORS as error:
            return {status: html.escape(str(error))}  # the message may quote what was typed

    def enable_login(user_name: str, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            changed = enable_account(store, actor, (user_name or "").strip())
            return {**listing(actor), status: f"**{user_name.strip()}** can log in again."
                    if changed else f"**{user_name.strip()}** was not disabled."}
        except ACCOUNT_ERRORS as error:
            return {status: html.escape(str(error))}  # the message may quote what was typed

    outputs = [users, password, status]
    section.expand(show_users, outputs=outputs, api_visibility="private")
    add.click(add_account, inputs=[name, role, password], outputs=outputs, api_visibility="private")
    set_role.click(change_account_role, inputs=[name, role], outputs=outputs, api_visibility="private")
    reset.click(reset_account_password, inputs=[name, password], outputs=outputs, api_visibility="private")
    disable.click(disable_login, inputs=name, outputs=outputs, api_visibility="private")
    enable.click(enable_login, inputs=name, outputs=outputs, api_visibility="private")
    return section
