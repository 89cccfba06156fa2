"""The Train tab: a form built from ``TrainingConfig``, a data check before any training, the job
queue, and live charts of the selected job."""

from __future__ import annotations

import dataclasses
import html
import typing
from datetime import datetime

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.formatting import code_block, inline_text, plot_text
from app.session import USER_ERRORS, current_actor
from core.accounts import Permission
from core.config_fields import ConfigError, field_base_type
from core.data.datasets import datasets_for
from core.training.config import DEMO_BASE, HUB_PRESETS, TrainingConfig
from core.jobs.scheduling import JobError, cancel_job, job_report, preview_training, recent_jobs, resume_job, submit_job
from core.training.trainer import TrainingError
from storage.engine import Store

MAIN_FIELDS = ("base_model", "output_name", "dataset", "max_steps", "num_train_epochs", "learning_rate",
               "per_device_train_batch_size", "max_length", "eval_fraction", "lora")
JOB_HEADERS = ["job", "status", "base model", "datasets", "progress", "reward model", "error or loop note"]
CHARTS = (("loss", "loss"), ("accuracy", "accuracy"), ("margin", "margin"), ("reward", "mean_reward"))


def _component(field: dataclasses.Field, annotation) -> gr.components.Component:  # noqa: ANN001
    """One form control per config field, from its type and help."""
    label, info = field.name.replace("_", " "), field.metadata["help"]
    base, _ = field_base_type(annotation)
    if field.name == "base_model":
        return gr.Dropdown([DEMO_BASE, *HUB_PRESETS], value=field.default, allow_custom_value=True, label=label, info=info)
    if field.name == "dataset":  # choices are the store's datasets, filled when the page loads
        return gr.Dropdown([], value=[], multiselect=True, label="datasets", info=info, elem_id="train-datasets")
    if "choices" in field.metadata:
        return gr.Dropdown(list(field.metadata["choices"]), value=field.default, label=label, info=info)
    if annotation is bool:
        return gr.Checkbox(value=field.default, label=label, info=info)
    if annotation in (int, float):
        return gr.Number(value=field.default, label=label, info=info, precision=0 if annotation is int else None)
    if base is datetime:
        return gr.Textbox(value="", label=label, info=info + " (YYYY-MM-DD)")
    return gr.Textbox(value="" if field.default in (None, dataclasses.MISSING) else str(field.default),
                      label=label, info=info)


def _config_from_form(controls: dict, form: dict) -> TrainingConfig:
    """The config from a ``{component: value}`` dict of the form (Gradio's set-of-inputs call)."""
    return TrainingConfig.from_form({name: form[control] for name, control in controls.items()})


JOB_KIND_NAMES = {"rescore": "(rescore queue)", "competence": "(annotator model)"}


def _jobs_table(store: Store, actor) -> list[list]:  # noqa: ANN001
    rows = []
    for job in recent_jobs(store, actor):
        progress = f"{job.current_step}/{job.total_steps}" if job.total_steps else (str(job.current_step) if job.current_step else "")
        # A rescore job of the loop scores a dataset's queue, a competence job refits its annotator model: neither
        # has a base model of its own.
        loop_job = job.kind in JOB_KIND_NAMES
        base = JOB_KIND_NAMES[job.kind] if loop_job else job.config.get("base_model", "")
        datasets = [job.config["loop_dataset"]] if loop_job else job.config.get("dataset") or []
        said = job.error or job.note or ""
        rows.append([job.id, job.status, base, ", ".join(datasets) or "all", progress, job.reward_model_name or "",
                     said.splitlines()[0][:160] if said else ""])
    return rows


def _figure(metrics: dict[str, list[tuple[int, float]]]) -> go.Figure:
    figure = make_subplots(rows=1, cols=4, subplot_titles=[title for title, _ in CHARTS])
    for column, (title, key) in enumerate(CHARTS, start=1):
        names = [key, f"eval_{key}"] + (["min_reward", "max_reward"] if key == "mean_reward" else [])
        drawn = False
        for name in names:
            points = metrics.get(name, [])
            if points:
                drawn = True
                figure.add_trace(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], mode="lines+markers",
                                            name=plot_text(name)), row=1, col=column)
        figure.update_xaxes(title_text="step", row=1, col=column)
        figure.update_yaxes(title_text=title, row=1, col=column)
        if not drawn:  # say what the empty panel waits for, rather than show a bare title
            waiting = "waiting for the first logged step" if key == "loss" else "waiting for the first evaluation"
            figure.add_annotation(text=waiting, showarrow=False, font={"color": "#6b7280"},
                                  xref=f"x{column if column > 1 else ''} domain", yref=f"y{column if column > 1 else ''} domain",
                                  x=0.5, y=0.5)
    figure.update_layout(height=320, margin={"t": 40, "l": 50, "r": 10, "b": 40}, legend={"orientation": "h"})
    return figure


def _progress(report) -> str:  # noqa: ANN001
    if report is None:
        return "No job selected."
    bar = "█" * int(report.fraction * 30) + "░" * (30 - int(report.fraction * 30))
    if report.eta_seconds is not None:
        eta = f" · about {int(report.eta_seconds // 60)} min {int(report.eta_seconds % 60)} s left (measured step times)"
    else:
        eta = " · time left: measuring the first steps" if report.status == "running" else ""
    total = report.total_steps or "?"
    lines = [f"**Job {report.id}** · {report.status} · `{bar}` {report.step}/{total} steps ({report.fraction:.0%}){eta}"]
    if report.reward_model_name:
        lines.append(f"Registered reward model: **{inline_text(report.reward_model_name)}** (Inspect tab)")
    if report.error:
        lines.append(f"Reason: {inline_text(report.error)}")
    if report.note:
        lines.append(f"Loop: {inline_text(report.note)}")
    return "\n\n".join(lines)


def render_train_tab(store: Store, blocks: gr.Blocks, tab: gr.Tab | None = None) -> None:
    hints = typing.get_type_hints(TrainingConfig)
    fields = [f for f in dataclasses.fields(TrainingConfig) if "help" in f.metadata]
    controls: dict[str, gr.components.Component] = {}
    with gr.Row():
        for field in fields:
            if field.name in MAIN_FIELDS[:5]:
                controls[field.name] = _component(field, hints[field.name])
    with gr.Row():
        for field in fields:
            if field.name in MAIN_FIELDS[5:]:
                controls[field.name] = _component(field, hints[field.name])
    with gr.Accordion("All options (LoRA, 4-bit, optimisation, data filters)", open=False):
        with gr.Row(equal_height=False):
            for field in fields:
                if field.name not in MAIN_FIELDS:
                    controls[field.name] = _component(field, hints[field.name])
    form_inputs = set(controls.values())
    with gr.Row():
        check = gr.Button("Check data", elem_id="train-check")
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
    form_status = gr.Markdown(elem_id="train-form-status")
    jobs = gr.Dataframe(headers=JOB_HEADERS, interactive=False, elem_id="train-jobs")
    with gr.Row():
        job_id = gr.Number(label="Job", precision=0, elem_id="train-job-id")
        cancel = gr.Button("Cancel job", elem_id="train-cancel")
        resume = gr.Button("Resume job", elem_id="train-resume")
    progress = gr.Markdown(elem_id="train-progress")
    chart = gr.Plot(elem_id="train-chart")
    with gr.Accordion("Log", open=False):
        log = gr.Markdown(elem_id="train-log")
    timer = gr.Timer(2.0, active=False)

    def show_jobs(selected: float | None, request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            table = _jobs_table(store, actor)
            if selected is None and table:
                selected = table[0][0]
            report = job_report(store, actor, int(selected)) if selected else None
        except USER_ERRORS as error:  # not a training role: the reason, and nothing else
            return {progress: html.escape(str(error)), timer: gr.Timer(active=False)}
        active = any(row[1] in ("queued", "running") for row in table)
        return {jobs: table, job_id: selected, progress: _progress(report), chart: _figure(report.metrics) if report else None,
                log: code_block(report.log) if report and report.log else "", timer: gr.Timer(active=active)}

    outputs = [jobs, job_id, progress, chart, log, timer]
    blocks.load(show_jobs, inputs=job_id, outputs=outputs, api_visibility="private", api_name="show_jobs_on_load")

    def pick_job(event: gr.SelectData, request: gr.Request) -> dict:
        row = getattr(event, "row_value", None) or []  # no row when called without a click
        return show_jobs(row[0] if row else None, request)

    jobs.select(pick_job, outputs=outputs, api_visibility="private", api_name="pick_job_on_row")

    def dataset_choices(request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            actor.require(Permission.TRAIN)
            summaries = datasets_for(store, actor)
        except USER_ERRORS as error:
            return {form_status: html.escape(str(error))}
        return {controls["dataset"]: gr.Dropdown(choices=[(f"{s.name} ({s.prompt_kind or 'empty'})", s.name)
                                                          for s in summaries if s.labels])}

    blocks.load(dataset_choices, outputs=[controls["dataset"], form_status], api_visibility="private", api_name="dataset_choices_on_load")
    if tab is not None:  # labels given since the page loaded make more datasets trainable
        tab.select(dataset_choices, outputs=[controls["dataset"], form_status], api_visibility="private", api_name="dataset_choices_on_tab")
    timer.tick(show_jobs, inputs=job_id, outputs=outputs, api_visibility="private", api_name="show_jobs_on_timer")
    job_id.submit(show_jobs, inputs=job_id, outputs=outputs, api_visibility="private", api_name="show_jobs")
    if tab is not None:  # the active-learning loop queues jobs by itself: opening the tab shows them
        tab.select(show_jobs, inputs=job_id, outputs=outputs, api_visibility="private", api_name="show_jobs_on_tab")

    def preview(form: dict, request: gr.Request) -> str:
        try:
            return preview_training(store, current_actor(store, request), _config_from_form(controls, form))
        except (*USER_ERRORS, ConfigError, TrainingError, ValueError) as error:
            return f"**Cannot train yet.** {html.escape(str(error))}"

    check.click(preview, inputs=form_inputs, outputs=form_status, api_visibility="private", api_name="preview_training")

    def submit(form: dict, request: gr.Request) -> dict:
        try:
            config = _config_from_form(controls, form)
            new_id = submit_job(store, current_actor(store, request), config)
        except (*USER_ERRORS, ConfigError, ValueError) as error:
            return {form_status: f"**Not started.** {html.escape(str(error))}"}
        return {**show_jobs(new_id, request), form_status: f"Job {new_id} queued; it starts as soon as no other job runs.",
                timer: gr.Timer(active=True)}

    start.click(submit, inputs=form_inputs, outputs=[*outputs, form_status],
                api_visibility="private", api_name="submit_job")

    def act(action):  # noqa: ANN001, ANN202
        def handler(selected: float | None, request: gr.Request) -> dict:
            if not selected:
                return {progress: "Choose a job first."}
            try:
                action(store, current_actor(store, request), int(selected))
            except (*USER_ERRORS, JobError) as error:
                return {progress: html.escape(str(error))}
            return {**show_jobs(selected, request), timer: gr.Timer(active=True)}

        return handler

    cancel.click(act(cancel_job), inputs=job_id, outputs=outputs, api_visibility="private", api_name="cancel_job")
    resume.click(act(resume_job), inputs=job_id, outputs=outputs, api_visibility="private", api_name="resume_job")
