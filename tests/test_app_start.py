"""The app's UI imports Gradio without Gradio's import-time stub writer (app/gradio_stubs.py): ~3 CPU-s of
every app start on this machine. The oracle is Python's own audit hook: which of Gradio's ``.pyi`` files the
import opens (the writer reads and rewrites each component's stub), not the module under test."""

from __future__ import annotations

import subprocess
import sys

from conftest import PROJECT_ROOT

_COUNT_STUB_OPENS = """
import sys
opened = []
def audit(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].endswith(".pyi") and "/gradio/" in args[0]:
        opened.append(args[0])
sys.addaudithook(audit)
{imports}
import gradio
print(len(opened))
"""


def _stub_files_opened(imports: str) -> int:
    done = subprocess.run([sys.executable, "-c", _COUNT_STUB_OPENS.format(imports=imports)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # the imports themselves worked
    return int(done.stdout)


def test_the_ui_imports_gradio_without_reading_or_writing_its_type_stubs():
    plain = _stub_files_opened("")  # Gradio on its own: the control, so the oracle can see the writer
    assert plain > 50, f"plain `import gradio` opened {plain} stub files: the writer this skips is gone upstream"
    through_app = _stub_files_opened("import app.ui")
    assert through_app == 0, f"importing the UI opened {through_app} of Gradio's .pyi files"
