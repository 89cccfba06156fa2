"""The RewardLab page: one Blocks with the Label, Data, Train and Inspect tabs."""

from __future__ import annotations

import gradio as gr

from app.data_tab import render_data_tab
from storage.engine import Store

TITLE = "RewardLab"


def build_ui(store: Store) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as blocks:
        gr.Markdown(f"# {TITLE}\nLabel preferences, train reward models on them, and inspect what they reward.")
        with gr.Tabs():
            with gr.Tab("Label", id="label"):
                gr.Markdown(
                    "The labeling workflow (queue, side-by-side comparison, shortcuts, history) is not built yet. "
                    "Comparisons waiting for a label are counted on the Data tab."
                )
            with gr.Tab("Data", id="data"):
                render_data_tab(store)
            with gr.Tab("Train", id="train"):
                gr.Markdown(
                    "Background reward-model training is not built yet. Meanwhile, export a TRL dataset from the "
                    "Data tab (or `python app.py export OUT`) and train it with TRL's `RewardTrainer`."
                )
            with gr.Tab("Inspect", id="inspect"):
                gr.Markdown("Reward inspection (thinking vs answer, per-token rewards) is not built yet.")
    return blocks
