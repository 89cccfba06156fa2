"""Who is asking: every handler resolves the actor from the Gradio request, never from a form."""

from __future__ import annotations

import gradio as gr

from core.accounts import Actor, PermissionDenied, actor_for
from core.labeling.actions import LABELING_ERRORS
from storage.engine import Store

# Errors whose message is meant for the person at the keyboard.
USER_ERRORS = (PermissionDenied, *LABELING_ERRORS)


def current_actor(store: Store, request: gr.Request | None) -> Actor:
    """The actor of ``request``. Raises ``PermissionDenied`` (``AccountDisabled`` for an account disabled
    while a request of its was on the way; its sessions were ended in the store with the disable, so
    its next page load asks for a login)."""
    username = getattr(request, "username", None) if request is not None else None
    return actor_for(store, username)
