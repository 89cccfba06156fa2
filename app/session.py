"""Who is asking: every handler resolves the actor from the Gradio request, never from a form."""

from __future__ import annotations

import gradio as gr

from core.accounts import AccountDisabled, Actor, PermissionDenied, actor_for
from core.labeling.actions import LABELING_ERRORS
from storage.engine import Store

# Errors whose message is meant for the person at the keyboard.
USER_ERRORS = (PermissionDenied, *LABELING_ERRORS)


def current_actor(store: Store, request: gr.Request | None) -> Actor:
    """The actor of ``request``. Raises ``PermissionDenied``; for an account disabled since it logged in
    (``AccountDisabled``) its login tokens are dropped first, so its next page load asks for a login."""
    username = getattr(request, "username", None) if request is not None else None
    try:
        return actor_for(store, username)
    except AccountDisabled:
        _end_sessions_of(request, username)
        raise


def _end_sessions_of(request: gr.Request | None, username: str | None) -> None:
    # Gradio keeps its login tokens in memory on its app (token -> user name); its /logout route
    # deletes a user's tokens the same way.
    http_request = getattr(request, "request", None)
    tokens = getattr(getattr(http_request, "app", None), "tokens", None)
    if not username or not isinstance(tokens, dict):
        return
    for token, owner in list(tokens.items()):
        if owner == username:
            tokens.pop(token, None)
