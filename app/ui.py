"""The RewardLab page: one Blocks with the Label, Data, Train, Inspect and Team tabs, and the API."""

from __future__ import annotations

import gradio as gr

from app.api import register_api
from app.data_tab import render_data_tab
from app.inspect_tab import render_inspect_tab
from app.label_tab import render_label_tab
from app.session import USER_ERRORS, current_actor
from app.team_tab import render_team_tab, render_users_section
from app.train_tab import render_train_tab
from core.accounts import Permission, accounts_exist
from core.scoring.inspection import may_inspect
from storage.engine import Store

TITLE = "RewardLab"


LOG_OUT_JS = """() => {
    fetch(new URL("logout", window.location.href), {method: "POST", credentials: "same-origin"})
        .finally(() => window.location.assign(window.location.pathname));
}"""


def build_ui(store: Store) -> gr.Blocks:
    # Files Gradio serves (exports, uploads) are copied into its cache: delete those older than 15
    # minutes, checking every 10, so no export lingers in the temporary folder.
    with gr.Blocks(title=TITLE, delete_cache=(600, 900)) as blocks:
        with gr.Row(equal_height=False, elem_id="app-header"):
            # One line: the Label tab must leave room at 1280x800 for the prompt and both answers.
            gr.Markdown(f"# {TITLE}\nLabel preferences, train reward models on them, and inspect what they reward.",
                        elem_id="app-title")
            # Logging out is a POST (app/http_guard.py ends this user's sessions in the store and clears the
            # cookies); a GET /logout is refused, so an image or link on another site cannot log anyone out.
            logout = gr.Button("Log out", size="sm", scale=0, min_width=100, visible=accounts_exist(store),
                               elem_id="logout-button")
            logout.click(None, js=LOG_OUT_JS, api_visibility="private")
        with gr.Tabs():
            with gr.Tab("Label", id="label"):
                render_label_tab(store, blocks)
            # Restricted tabs start hidden and are shown to the roles that may use them: in Gradio 6.31 an
            # update to visible=False leaves the tab button on screen, while visible=True works.
            with gr.Tab("Data", id="data", visible=False) as data_tab:
                render_data_tab(store, blocks, data_tab)
            with gr.Tab("Train", id="train", visible=False) as train_tab:
                render_train_tab(store, blocks, train_tab)
            with gr.Tab("Inspect", id="inspect", visible=False) as inspect_tab:
                render_inspect_tab(store, blocks, inspect_tab)
            with gr.Tab("Team", id="team", visible=False) as team_tab:
                render_team_tab(store, team_tab)
                users_section = render_users_section(store)
        register_api(store)

        # Show each person the tabs their role may use; the handlers check the role again.
        def tabs_for(request: gr.Request) -> dict:
            try:
                actor = current_actor(store, request)
            except USER_ERRORS:
                return {}
            return {
                data_tab: gr.Tab(visible=actor.can(Permission.IMPORT) or actor.can(Permission.EXPORT)),
                train_tab: gr.Tab(visible=actor.can(Permission.TRAIN)),
                inspect_tab: gr.Tab(visible=may_inspect(store, actor)),
                team_tab: gr.Tab(visible=actor.can(Permission.VIEW_TEAM)),
                users_section: gr.Accordion(visible=actor.can(Permission.MANAGE_USERS)),
            }

        blocks.load(tabs_for, outputs=[data_tab, train_tab, inspect_tab, team_tab, users_section],
                    api_visibility="private", api_name="tabs_for_on_load")
    return blocks
