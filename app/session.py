"""Who is asking: every handler resolves the actor from the Gradio request, never from a form."""

from __future__ import annotations

import gradio as gr

from core.accounts import Actor, PermissionDenied, actor_for
from storage.engine import Store
from storage.labels import LabelError
from storage.queue import QueueError

# Errors whose message is meant for the person at the keyboard.
USER_ERRORS = (PermissionDenied, QueueError, LabelError)


def current_actor(store: Store, request: gr.Request | None) -> Actor:
    return actor_for(store, getattr(request, "username", None) if request is not None else None)
