"""The Data tab: what the store holds, importing a file, exporting a TRL dataset."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from app.formatting import code_block, counts_markdown, inline_text
from app.session import USER_ERRORS, current_actor
from core.config_fields import ConfigError
from core.data.exporter import EXPORT_FORMATS, PROMPT_FORMATS, NothingToExport, export_for_download
from core.data.importer import ImportConfig, ImportRejected, import_upload
from core.data.summary import store_summary
from storage.engine import Store


def render_data_tab(store: Store, blocks: gr.Blocks) -> gr.Markdown:
    """Build the tab inside the current Blocks; returns the counts panel so other tabs can refresh it."""

    def current_counts(request: gr.Request) -> str:
        try:
            return counts_markdown(store_summary(store, current_actor(store, request)))
        except USER_ERRORS as error:
            return html.escape(str(error))

    counts = gr.Markdown(elem_id="store-counts")
    refresh = gr.Button("Refresh counts", size="sm")
    refresh.click(current_counts, outputs=counts, api_visibility="private")
    blocks.load(current_counts, outputs=counts, api_visibility="private")

    with gr.Row():
        with gr.Column():
            gr.Markdown(
                "### Import\nTRL preference rows (`prompt`/`chosen`/`rejected`, standard or conversational, "
                "implicit prompt allowed, optional `margin`) or candidates to label (`prompt` + `completions`). "
                "JSONL, JSON, CSV, Parquet, `.gz`. A file with any bad row is refused whole."
            )
            upload = gr.File(label="File to import", file_types=[".jsonl", ".json", ".csv", ".parquet", ".gz", ".ndjson"])
            dry_run = gr.Checkbox(label="Check only (dry run)", value=False)
            import_button = gr.Button("Import", variant="primary", elem_id="import-button")
            import_result = gr.Markdown(elem_id="import-result")
        with gr.Column():
            gr.Markdown("### Export\nOne row per comparison, annotators folded by majority; ties, both-bad and skips left out.")
            export_format = gr.Dropdown(list(EXPORT_FORMATS), value="jsonl", label="Format")
            prompt_format = gr.Dropdown(
                list(PROMPT_FORMATS), value="auto", label="Prompts", info="auto: all, refused if text and chat are mixed"
            )
            test_size = gr.Slider(0.0, 0.5, value=0.0, step=0.05, label="Held-out test fraction")
            export_button = gr.Button("Export", elem_id="export-button")
            export_result = gr.Markdown(elem_id="export-result")
            export_file = gr.File(label="Download", interactive=False)

    # Each import clears the upload box, so the next file (or the fixed one) can be dropped in.
    def run_import(path: str | None, check_only: bool, request: gr.Request) -> tuple[str, str, None]:
        if not path:
            return "Choose a file first.", current_counts(request), None
        try:
            config = ImportConfig(Path(path), dry_run=check_only)
            report = import_upload(store, current_actor(store, request), config)
        except USER_ERRORS as error:
            return f"**Not allowed.** {error}", current_counts(request), None
        except ImportRejected as rejected:
            # Problems name the uploaded file's temporary path; show the user's file name instead.
            message = str(rejected).replace(str(Path(path).parent) + "/", "")
            refusal = f"**Import refused, nothing written** ({rejected.total} problem(s)):\n\n{code_block(message)}"
            return refusal, current_counts(request), None
        return f"**Imported.** {report.summary()}", current_counts(request), None

    import_button.click(run_import, inputs=[upload, dry_run], outputs=[import_result, counts, upload], api_visibility="private")

    def run_export(format_name: str, prompts: str, test_fraction: float, request: gr.Request) -> tuple[str, str | None]:
        try:
            download, report = export_for_download(store, current_actor(store, request), format=format_name,
                                                   prompt_format=prompts, test_size=float(test_fraction or 0))
        except USER_ERRORS as error:
            return f"**Not allowed.** {error}", None
        except (NothingToExport, ConfigError) as error:
            return f"**Nothing exported.** {inline_text(error)}", None
        return f"**Exported.** {report.summary().replace(str(report.out), download.name)}", str(download)

    export_button.click(
        run_export, inputs=[export_format, prompt_format, test_size], outputs=[export_result, export_file], api_visibility="private"
    )
    return counts
