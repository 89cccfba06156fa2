"""The Data tab: the datasets and what they hold, importing a file into a dataset, exporting a TRL
dataset (with or without the evidence), and the record browser."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from app.formatting import code_block, counts_markdown, inline_text
from app.records_panel import render_records_panel
from app.session import USER_ERRORS, current_actor
from core.config_fields import ConfigError
from core.data.datasets import DEFAULT_DATASET, datasets_for
from core.data.exporter import EXPORT_FORMATS, PROMPT_FORMATS, export_for_download
from core.preferences.competence import AGGREGATES
from core.preferences.pairs import NothingToExport
from core.data.importer import QUESTIONS, ImportConfig, ImportRejected, import_upload, question_for_upload
from core.preferences.rankings import RANKING_PAIRS
from core.data.summary import store_summary
from storage.engine import Store


def _datasets_markdown(summaries: list) -> str:
    if not summaries:
        return "_No dataset yet: import a file to make one._"
    lines = ["| dataset | kind | comparisons | labeled | waiting | labels | overlap | who labels |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for s in summaries:
        who = "all annotators" if s.open_to_all else (", ".join(s.members) or "nobody yet")
        name = inline_text(s.name) + (" (archived)" if s.archived else "")
        lines.append(f"| {name} | {s.prompt_kind or '-'} | {s.comparisons} | {s.labeled} | {s.waiting} | {s.labels} "
                     f"| {s.overlap} | {inline_text(who)} |")
    return "\n".join(lines)


def render_data_tab(store: Store, blocks: gr.Blocks, tab: gr.Tab | None = None) -> gr.Markdown:
    """Build the tab inside the current Blocks; its counts refresh when ``tab`` is opened. Returns
    the counts panel so other tabs can refresh it."""

    counts = gr.Markdown(elem_id="store-counts")
    datasets_md = gr.Markdown(elem_id="data-datasets")
    refresh = gr.Button("Refresh counts", size="sm")
    with gr.Row():
        with gr.Column():
            gr.Markdown(
                "### Import\nTRL preference rows (`prompt`/`chosen`/`rejected`, standard or conversational, "
                "implicit prompt allowed, optional `margin`) or candidates to label (`prompt` + `completions`). "
                "JSONL, JSON, CSV, Parquet, `.gz`. A file with any bad row is refused whole. A dataset holds "
                "text prompts or chat prompts, fixed by its first import; type a new name to make a dataset. "
                "A **ranking** dataset takes candidates with 3 to 9 completions, which annotators order best to worst."
            )
            upload = gr.File(label="File to import", file_types=[".jsonl", ".json", ".csv", ".parquet", ".gz", ".ndjson"],
                             elem_id="import-file")
            import_dataset = gr.Dropdown(choices=[DEFAULT_DATASET], value=DEFAULT_DATASET, allow_custom_value=True,
                                         label="Into dataset", elem_id="import-dataset")
            question = gr.Radio([("the dataset's own (pairwise if new)", ""), *[(q, q) for q in QUESTIONS]], value="",
                                label="Question", elem_id="import-question")
            dry_run = gr.Checkbox(label="Check only (dry run)", value=False)
            import_button = gr.Button("Import", variant="primary", elem_id="import-button")
            import_result = gr.Markdown(elem_id="import-result")
        with gr.Column():
            gr.Markdown("### Export\nOne row per comparison, annotators folded by majority (or an annotator model); ties, "
                        "both-bad and skips left out.")
            export_datasets = gr.Dropdown(choices=[], multiselect=True, label="Datasets (one prompt kind; none = all)",
                                          elem_id="export-datasets")
            export_format = gr.Dropdown(list(EXPORT_FORMATS), value="jsonl", label="Format")
            prompt_format = gr.Dropdown(
                list(PROMPT_FORMATS), value="auto", label="Prompts", info="auto: all, refused if text and chat are mixed"
            )
            test_size = gr.Slider(0.0, 0.5, value=0.0, step=0.05, label="Held-out test fraction")
            with gr.Row():
                ranking_pairs = gr.Dropdown(list(RANKING_PAIRS), value="all", label="Pairs from rankings",
                                            info="each pair weighs 1/(pairs of its ranking)", elem_id="export-ranking-pairs")
                ranking_margin = gr.Checkbox(label="Margin from the place gap (rankings)", value=False)
            with gr.Row():
                aggregate = gr.Dropdown(list(AGGREGATES), value="majority", label="Several annotators",
                                        info="majority vote, or an annotator model weighing each by competence",
                                        elem_id="export-aggregate")
                soft_labels = gr.Checkbox(label="Soft labels: a weight column, the posterior's net preference "
                                                "(with an annotator model)", value=False, elem_id="export-soft-labels")
            with_metadata = gr.Checkbox(label="With metadata: comparison id, dataset, source, models, every vote with its "
                                              "strength, comment, seconds and time (TRL ignores the extra columns)",
                                        elem_id="export-metadata")
            export_button = gr.Button("Export", elem_id="export-button")
            export_result = gr.Markdown(elem_id="export-result")
            export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
    with gr.Accordion("Records", open=True):
        records_dataset = gr.Dropdown(choices=[], label="Dataset", elem_id="records-dataset")
        render_records_panel(store, records_dataset)

    def current_counts(request: gr.Request) -> dict:
        try:
            actor = current_actor(store, request)
            summaries = datasets_for(store, actor)
            totals = counts_markdown(store_summary(store, actor))
        except USER_ERRORS as error:
            return {counts: html.escape(str(error))}
        names = [s.name for s in summaries]
        return {
            counts: totals,
            datasets_md: _datasets_markdown(summaries),
            import_dataset: gr.Dropdown(choices=sorted(set(names) | {DEFAULT_DATASET})),
            export_datasets: gr.Dropdown(choices=names),
            records_dataset: gr.Dropdown(choices=names),
        }

    count_outputs = [counts, datasets_md, import_dataset, export_datasets, records_dataset]
    refresh.click(current_counts, outputs=count_outputs, api_visibility="private", api_name="current_counts")
    blocks.load(current_counts, outputs=count_outputs, api_visibility="private", api_name="current_counts_on_load")
    if tab is not None:
        tab.select(current_counts, outputs=count_outputs, api_visibility="private", api_name="current_counts_on_tab")

    # Each import clears the upload box, so the next file (or the fixed one) can be dropped in.
    def run_import(path: str | None, dataset: str | None, asked: str | None, check_only: bool,
                   request: gr.Request) -> dict:
        def outcome(message: str, *, keep_file: bool = False) -> dict:
            # An import or a refusal clears the upload box, so the next file (or the fixed one) can be
            # dropped in; a dry run that passed keeps it, since importing that file is the next step. The
            # Question goes back to "the dataset's own" with the file: the next file says what it suggests.
            updates = {import_result: message, **current_counts(request)}
            if not keep_file:
                updates[upload] = None
                updates[question] = ""
            return updates

        if not path:
            return outcome("Choose a file first.")
        try:
            config = ImportConfig(Path(path), dataset=(dataset or DEFAULT_DATASET).strip(), question=asked or None,
                                  dry_run=check_only, ask_question=True)
            report = import_upload(store, current_actor(store, request), config)
        except ConfigError as error:
            return outcome(f"**Not imported.** {inline_text(error)}")
        except USER_ERRORS as error:
            return outcome(f"**Not allowed.** {error}")
        except ImportRejected as rejected:
            # Problems name the uploaded file's temporary path; show the user's file name instead.
            message = str(rejected).replace(str(Path(path).parent) + "/", "")
            return outcome(f"**Import refused, nothing written** ({rejected.total} problem(s)):\n\n{code_block(message)}")
        return outcome(f"**{'Checked' if check_only else 'Imported'}.** {inline_text(report.summary())}",
                       keep_file=check_only)

    import_button.click(run_import, inputs=[upload, import_dataset, question, dry_run],
                        outputs=[import_result, upload, question, *count_outputs], api_visibility="private", api_name="run_import")

    def suggest_question(path: str | None, request: gr.Request) -> dict:
        """What the dropped file suggests: pairs are pairwise; candidates of 3 to 9 completions ask."""
        if not path:
            return {question: ""}
        try:
            suggested = question_for_upload(store, current_actor(store, request), Path(path))
        except USER_ERRORS as error:
            return {import_result: f"**Not allowed.** {error}"}
        if suggested is not None:
            return {question: suggested, import_result: f"The file holds pairs: Question set to **{suggested}**."}
        return {question: "", import_result: "The file holds candidates of 3 to 9 completions: for a new dataset, "
                                             "choose the **Question**: pairwise (each pair of them) or ranking (one order)."}

    upload.upload(suggest_question, inputs=upload, outputs=[question, import_result], api_visibility="private", api_name="suggest_question")

    def run_export(datasets: list[str] | None, format_name: str, prompts: str, test_fraction: float, metadata: bool,
                   pairs_mode: str, margin: bool, folding: str, soft: bool, request: gr.Request) -> tuple[str, str | None]:
        try:
            download, report = export_for_download(store, current_actor(store, request), format=format_name,
                                                   prompt_format=prompts, test_size=float(test_fraction or 0),
                                                   datasets=list(datasets or []) or None, with_metadata=bool(metadata),
                                                   ranking_pairs=pairs_mode or "all", ranking_margin=bool(margin),
                                                   aggregate=folding or "majority", soft_labels=bool(soft))
        except USER_ERRORS as error:
            return f"**Not allowed.** {error}", None
        except (NothingToExport, ConfigError) as error:
            return f"**Nothing exported.** {inline_text(error)}", None
        return f"**Exported.** {report.summary().replace(str(report.out), download.name)}", str(download)

    export_button.click(
        run_export, inputs=[export_datasets, export_format, prompt_format, test_size, with_metadata, ranking_pairs,
                            ranking_margin, aggregate, soft_labels],
        outputs=[export_result, export_file], api_visibility="private"
    , api_name="run_export")
    return counts
