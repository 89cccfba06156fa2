"""The Team tab (engineers and admins): who labels how much and how fast, position bias, agreement,
the comparisons annotators disagree on and their comments, per dataset. Admins change each
dataset's settings here."""

from __future__ import annotations

import html

import gradio as gr

from app.loop_panel import render_loop_panel
from app.session import USER_ERRORS, current_actor
from core.accounts import (
    LOGIN_ROLES,
    AccountError,
    AccountSummary,
    Permission,
    change_role,
    create_account,
    disable_account,
    enable_account,
    list_accounts,
    set_password,
)
from core.data.datasets import DatasetSettings, change_dataset_settings, datasets_for
from core.labeling.competence import MODELS as COMPETENCE_MODELS
from core.labeling.competence import (
    annotator_competence,
    competence_refit_every,
    last_competence_fit,
    set_competence_refit,
)
from core.labeling.team_stats import TeamReport, team_report
from core.limits import MIN_AGREEMENT_STEPS, MIN_AGREEMENT_TRACES
from core.limits import MIN_COMPETENCE_LABELS
from core.preferences.competence import (
    ALWAYS_TIE_SHARE,
    INVERTED_BELOW,
    NEAR_RANDOM_BAND,
    POSITION_BIAS_P,
    AnnotatorCompetence,
)
from core.scoring.inspection import allow_annotators_to_inspect, annotators_may_inspect
from storage.engine import Store

ANNOTATOR_HEADERS = ["annotator", "labels", "median seconds", "left-side pick rate"]
DISAGREEMENT_HEADERS = ["comparison", "prompt", "votes"]
COMMENT_HEADERS = ["comparison", "annotator", "comment", "prompt"]
ALL_DATASETS = ""


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _summary(report: TeamReport, overlap: int | None) -> str:
    fleiss = _number(report.fleiss_kappa)
    if report.fleiss_raters:
        fleiss += f" (comparisons with {report.fleiss_raters} raters)"
    setting = f"Overlap setting: **{overlap}** label(s) per comparison · " if overlap is not None else ""
    return (
        f"{setting}comparisons labeled by 2+ people: "
        f"**{report.overlapping_comparisons}**\n\n"
        f"Percent agreement: **{'n/a' if report.percent_agreement is None else f'{100 * report.percent_agreement:.1f}%'}** · "
        f"Cohen's kappa (mean over annotator pairs): **{_number(report.cohens_kappa)}** · Fleiss' kappa: **{fleiss}**\n\n"
        "A left-side pick rate far from 0.5 suggests position bias (sides are randomized per comparison)."
        + (_ranking_summary(report.ranking) if report.ranking is not None else "")
        + (_steps_summary(report.steps) if report.steps is not None else "")
    )


def _ranking_summary(agreement) -> str:  # noqa: ANN001  (core.labeling.ranking_agreement.RankingAgreement)
    positions = " · ".join(f"{position + 1}: {place:.2f}" for position, place in enumerate(agreement.position_mean_place))
    return (
        f"\n\n### Rankings\n{agreement.ranked_items} ranked item(s), {agreement.rankings} ranking(s); ranked by 2+ "
        f"people: **{agreement.items_with_overlap}** · Kendall's tau-b (mean over pairs of annotators): "
        f"**{_number(agreement.mean_tau)}** · Kendall's W (mean over items): **{_number(agreement.mean_w)}**\n\n"
        f"Position bias: mean place (0 = best, 1 = worst) of the response shown 1st, 2nd, ...: "
        f"{positions or 'n/a'} · Spearman's rho of shown position and place: **{_number(agreement.position_rho)}** "
        "(near 0 and places near 0.50 when the shown order does not sway the annotators)"
        + ("\n\nLeast agreement (items ranked by 2+, lowest W first): " + " · ".join(
            f"#{item.item_id} W {_number(item.w)} tau {_number(item.mean_tau)} ({item.raters} raters)"
            for item in agreement.per_item[:10]) if agreement.per_item else "")
    )


def _steps_summary(agreement) -> str:  # noqa: ANN001  (core.labeling.step_agreement.StepAgreement)
    kappa = (f"Fleiss' kappa **{_number(agreement.fleiss_kappa)}** · Cohen's kappa (pooled over pairs) "
             f"**{_number(agreement.cohens_kappa)}** on {agreement.steps_with_overlap} step(s) reviewed by 2+ people"
             if agreement.fleiss_kappa is not None or agreement.steps_with_overlap >= MIN_AGREEMENT_STEPS else
             f"per-step kappa: withheld, {agreement.steps_with_overlap} step(s) reviewed by 2+ people, fewer than "
             f"{MIN_AGREEMENT_STEPS}")
    first = (f"first wrong step at the same step **{_number(agreement.first_error_exact)}**, within one step "
             f"**{_number(agreement.first_error_within_one)}** (n = {agreement.annotator_pairs} pairs of annotators on "
             f"{agreement.traces_with_overlap} traces)" if agreement.first_error_exact is not None else
             f"first-error agreement: withheld, {agreement.traces_with_overlap} trace(s) marked by 2+ people, fewer "
             f"than {MIN_AGREEMENT_TRACES}")
    return f"\n\n### Steps\n{agreement.traces} marked trace(s) · {kappa} · {first}"


def render_team_tab(store: Store, tab: gr.Tab | None = None) -> gr.Button:
    """Build the tab; it loads its report when ``tab`` is opened, and on Refresh."""
    dataset = gr.Dropdown(choices=[("All datasets", ALL_DATASETS)], value=ALL_DATASETS, label="Dataset",
                          elem_id="team-dataset")
    summary = gr.Markdown(elem_id="team-summary")
    annotators = gr.Dataframe(headers=ANNOTATOR_HEADERS, interactive=False, elem_id="team-annotators")
    gr.Markdown("### Disagreements")
    disagreements = gr.Dataframe(headers=DISAGREEMENT_HEADERS, interactive=False, wrap=True, elem_id="team-disagreements")
    gr.Markdown("### Comments")
    comments = gr.Dataframe(headers=COMMENT_HEADERS, interactive=False, wrap=True, elem_id="team-comments")
    refresh = gr.Button("Refresh", elem_id="team-refresh")
    # Shown to those who may change them (admins); the core functions check again.
    with gr.Accordion("Dataset settings (admins)", open=False, visible=False) as dataset_settings:
        gr.Markdown("Settings of the dataset chosen above. Raising the overlap asks for more human labels on the "
                    "comparisons people label; imported labeled pairs never return to the queue.")
        with gr.Row():
            # No minimum/maximum here: the ranges are checked in core, whose message says what to change.
            overlap = gr.Number(label="Labels per comparison (overlap, 1 to 10)", precision=0, elem_id="team-overlap")
            lease = gr.Number(label="Lease (seconds, 10 to 86400)", precision=0)
            default_priority = gr.Number(label="Default priority of new comparisons", precision=0)
        with gr.Row():
            open_to_all = gr.Checkbox(label="Open to every annotator", value=True)
            members = gr.Textbox(label="Or only these annotators (comma-separated names)")
            archived = gr.Checkbox(label="Archived (hands out nothing)")
        dataset_guidelines = gr.Textbox(label="Guidelines (Markdown)", lines=6, elem_id="team-guidelines")
        save_dataset = gr.Button("Save dataset settings", size="sm", elem_id="team-save-dataset")
    with gr.Accordion("Store settings (admins)", open=False, visible=False) as store_settings:
        inspect_allowed = gr.Checkbox(label="Annotators may use the Inspect tab on text they paste (never stored "
                                            "comparisons or diagnostics)", elem_id="team-annotators-inspect")
    settings_status = gr.Markdown(elem_id="team-settings-status")
    render_competence_section(store, dataset)
    render_loop_panel(store, dataset, tab)
    settings_fields = [overlap, lease, default_priority, open_to_all, members, archived, dataset_guidelines]

    def show_team(chosen: str | None, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            summaries = datasets_for(store, actor)
            names = [s.name for s in summaries]
            chosen = chosen if chosen in names else ALL_DATASETS
            report = team_report(store, actor, dataset=chosen or None)
        except USER_ERRORS as error:
            return {summary: str(error)}
        picked = next((s for s in summaries if s.name == chosen), None)
        updates = {
            dataset: gr.Dropdown(choices=[("All datasets", ALL_DATASETS)] + [(name, name) for name in names],
                                 value=chosen),
            summary: _summary(report, picked.overlap if picked else None),
            annotators: [
                [a.name, a.labels, _number(a.median_seconds, 1), _number(a.left_pick_rate)] for a in report.annotators
            ],
            disagreements: [[d.comparison_id, d.prompt_excerpt, d.votes] for d in report.disagreements],
            comments: [[c.comparison_id, c.annotator, c.comment, c.prompt_excerpt] for c in report.comments],
            inspect_allowed: annotators_may_inspect(store),
            dataset_settings: gr.Accordion(visible=actor.can(Permission.CHANGE_SETTINGS)),
            store_settings: gr.Accordion(visible=actor.can(Permission.CHANGE_SETTINGS)),
        }
        if picked is not None:
            updates.update({overlap: picked.overlap, lease: picked.lease_seconds,
                            default_priority: picked.default_priority, open_to_all: picked.open_to_all,
                            members: ", ".join(picked.members), archived: picked.archived,
                            dataset_guidelines: picked.guidelines})
        return updates

    team_outputs = [dataset, summary, annotators, disagreements, comments, inspect_allowed, dataset_settings,
                    store_settings, *settings_fields]
    refresh.click(show_team, inputs=dataset, outputs=team_outputs, api_visibility="private", api_name="show_team")
    dataset.input(show_team, inputs=dataset, outputs=team_outputs, api_visibility="private", api_name="show_team_for_dataset")
    if tab is not None:
        tab.select(show_team, inputs=dataset, outputs=team_outputs, api_visibility="private", api_name="show_team_on_tab")

    def save_dataset_settings(chosen, overlap_value, lease_value, priority_value, everyone, names, is_archived,  # noqa: ANN001
                              text, request: gr.Request) -> str:
        listed = tuple(name.strip() for name in (names or "").split(",") if name.strip())
        try:
            change_dataset_settings(store, current_actor(store, request), chosen or "", DatasetSettings(
                overlap=int(overlap_value or 0), lease_seconds=int(lease_value or 0),
                default_priority=int(priority_value or 0), guidelines=text or "", archived=bool(is_archived),
                open_to_all=bool(everyone) or not listed, members=() if everyone or not listed else listed,
            ))
        except USER_ERRORS as error:
            return str(error)
        return f"Saved the settings of dataset {chosen}."

    save_dataset.click(save_dataset_settings, inputs=[dataset, *settings_fields], outputs=settings_status,
                       api_visibility="private", api_name="save_dataset_settings")

    def save_inspect_setting(allowed: bool, request: gr.Request) -> str:
        try:
            allow_annotators_to_inspect(store, current_actor(store, request), bool(allowed))
        except USER_ERRORS as error:
            return str(error)
        return ("Saved: annotators see the Inspect tab (after a reload), for text they paste."
                if allowed else "Saved: annotators do not see the Inspect tab.")

    inspect_allowed.input(save_inspect_setting, inputs=inspect_allowed, outputs=settings_status, api_visibility="private", api_name="save_inspect_setting")
    return refresh


# ----- Annotator competence: fitted on demand by one core function (core.labeling.competence).
COMPETENCE_HEADERS = ["annotator", "labels (n)", "accuracy", "side accuracy (n)", "tie share", "left-side picks (n, p)",
                      "flags", "withheld"]


def _competence_rows(annotators: list[AnnotatorCompetence]) -> list[list]:
    return [[a.name, a.n, f"{a.accuracy:.2f}",
             f"{_number(a.side_accuracy)} ({a.side_n})", f"{a.tie_share:.2f}",
             f"{_number(a.left_pick_rate)} ({a.sided_n}, p={_number(a.left_pick_p, 3)})",
             ", ".join(a.flags) or "none", "; ".join(a.withheld)] for a in annotators]


def _competence_summary(description: str) -> str:
    return (description + ". Flags are judged on at least "
            f"**{MIN_COMPETENCE_LABELS}** labels of the kind they read, else withheld with their n: near-random (side "
            f"accuracy within 0.5 ± {NEAR_RANDOM_BAND}), inverted (below {INVERTED_BELOW:.2f}: the worse side more often "
            f"than not), position-biased (left-side picks, binomial p < {POSITION_BIAS_P}), always-tie (ties ≥ "
            f"{ALWAYS_TIE_SHARE:.0%} of labels).")


def render_competence_section(store: Store, dataset: gr.Dropdown) -> None:
    with gr.Accordion("Annotator competence", open=False, elem_id="team-competence") as section:
        gr.Markdown("An annotator model weighs each label by its author's estimated competence; the export and "
                    "training use the same fit with `--aggregate`.")
        with gr.Row():
            method = gr.Dropdown(choices=list(COMPETENCE_MODELS), value=COMPETENCE_MODELS[0], label="Model",
                                 elem_id="team-competence-model")
            fit_button = gr.Button("Fit", size="sm", elem_id="team-competence-fit")
        status = gr.Markdown(elem_id="team-competence-status")
        table = gr.Dataframe(headers=COMPETENCE_HEADERS, interactive=False, wrap=True, elem_id="team-competence-table")
        with gr.Row():
            refit_every = gr.Number(label="Background refit (Dawid-Skene) every N new human labels per dataset, "
                                          "0 = on demand only (admins)", precision=0, elem_id="team-competence-every")
            save_refit = gr.Button("Save", size="sm", elem_id="team-competence-save")

    def fit_competence(chosen: str | None, model: str, request: gr.Request) -> dict:
        try:
            fit = annotator_competence(store, current_actor(store, request), dataset=chosen or None, method=model)
        except USER_ERRORS as error:
            return {status: html.escape(str(error))}
        return {status: _competence_summary(fit.description()), table: _competence_rows(fit.annotators)}

    def show_last_competence(chosen: str | None, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            kept = last_competence_fit(store, actor, dataset=chosen or None)
        except USER_ERRORS as error:
            return {status: html.escape(str(error))}
        every = competence_refit_every(store)
        if kept is None:
            return {refit_every: every, table: [], status: "No kept fit of this dataset: choose a dataset and **Fit**"
                    + (f", or wait for the background refit (every {every} human labels)." if every else ".")}
        return {refit_every: every, table: _competence_rows(kept["annotators"]),
                status: _competence_summary(f"Background fit of {kept['fitted_at']}: {kept['description']}")}

    def save_competence_refit(every: float | None, request: gr.Request) -> dict:
        try:
            set_competence_refit(store, current_actor(store, request), int(every or 0))
        except USER_ERRORS as error:
            return {status: html.escape(str(error))}
        return {status: f"Saved: annotator models refit every {int(every or 0)} new human labels." if every
                else "Saved: annotator models are fitted on demand only."}

    fit_button.click(fit_competence, inputs=[dataset, method], outputs=[status, table], api_name="fit_competence",
                     api_visibility="private")
    section.expand(show_last_competence, inputs=dataset, outputs=[refit_every, table, status],
                   api_name="show_last_competence", api_visibility="private")
    save_refit.click(save_competence_refit, inputs=refit_every, outputs=status, api_name="save_competence_refit",
                     api_visibility="private")


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
    section.expand(show_users, outputs=outputs, api_visibility="private", api_name="show_users_on_open")
    add.click(add_account, inputs=[name, role, password], outputs=outputs, api_visibility="private", api_name="add_account")
    set_role.click(change_account_role, inputs=[name, role], outputs=outputs, api_visibility="private", api_name="change_account_role")
    reset.click(reset_account_password, inputs=[name, password], outputs=outputs, api_visibility="private", api_name="reset_account_password")
    disable.click(disable_login, inputs=name, outputs=outputs, api_visibility="private", api_name="disable_login")
    enable.click(enable_login, inputs=name, outputs=outputs, api_visibility="private", api_name="enable_login")
    return section
