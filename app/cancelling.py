"""Long scoring that a user can watch and stop: a Gradio progress bar fed by ``core``'s progress
callbacks, and a Cancel button that makes the next callback raise ``ScoringCancelled``.

Gradio's own ``cancels=`` only stops waiting for the event on the page; the worker thread of a
synchronous handler runs on. The flag makes the work itself stop at its next progress report.
"""

from __future__ import annotations

import threading
from typing import Callable

import gradio as gr

from core.scoring.engine import ScoringCancelled


class CancelRequests:
    """Cancel requests by Gradio session (``session_hash``), bounded by the sessions working now."""

    def __init__(self) -> None:
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def reporter(self, request: gr.Request, progress: gr.Progress, description: str) -> Callable[[float], None]:
        """A progress callback for one run: it updates the page's bar, and raises ``ScoringCancelled``
        once this session asked to cancel. Starting a run clears an older request."""
        key = request.session_hash or ""
        with self._lock:
            self._cancelled.discard(key)

        def report(done: float) -> None:
            with self._lock:
                if key in self._cancelled:
                    self._cancelled.discard(key)
                    raise ScoringCancelled
            progress(done, desc=description)

        return report

    def cancel(self, request: gr.Request) -> None:
        with self._lock:
            self._cancelled.add(request.session_hash or "")
