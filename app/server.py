"""Starting the web app: open the store, load the demo data into an empty one, launch Gradio."""

from __future__ import annotations

import os

# Before gradio is imported: no usage analytics leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from core.demo_data import load_demo_data_if_empty  # noqa: E402
from storage.engine import Store  # noqa: E402


def serve(*, db_url: str | None, host: str, port: int, load_demo: bool) -> None:
    from app.ui import build_ui

    store = Store(db_url)
    if load_demo and load_demo_data_if_empty(store):
        print(f"loaded the demo dataset into the empty store {store.url}")
    print(f"RewardLab store: {store.url}")
    blocks = build_ui(store)
    blocks.queue(default_concurrency_limit=8)
    blocks.launch(server_name=host, server_port=port, ssr_mode=False, show_error=True, footer_links=[], enable_monitoring=False)
