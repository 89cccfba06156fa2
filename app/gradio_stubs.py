"""Gradio without its import-time stub writer.

Every ``import gradio`` re-derives a ``.pyi`` type stub for each of its ~80 component classes (it parses the
class's source with ``ast`` and renders a template) and writes it into Gradio's own package folder:
``gradio.component_meta.create_or_modify_pyi``, called by the components' metaclass as each class is made.
The stubs are for type checkers, never read at run time; making them was ~3 of the ~7 CPU-s an app start
spent importing Gradio on this machine (``python -c "import gradio"``: 7.2 s; with this module, 4.3 s). It
is also the app writing into its own installation, which fails (and is then silenced) where site-packages
is read-only. Upstream: the stubs are a side effect of the
import (https://github.com/gradio-app/gradio/issues/10121, https://github.com/gradio-app/gradio/pull/13799);
import time in general: https://github.com/gradio-app/gradio/issues/7791.

The writer can only be replaced between ``gradio.component_meta`` running and the first component class
being made, which ``gradio/__init__.py`` does in one go; hence a finder on ``sys.meta_path`` that hands out
that one module with the writer replaced as soon as the module has run. ``app/__init__.py`` installs it, so
every entry point into the UI (``app.py serve``, the tests) gets it before Gradio is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

STUB_WRITER_MODULE = "gradio.component_meta"


def _write_no_stub(*args: object, **kwargs: object) -> None:
    return None


class _LoaderWithoutStubWriter(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def __getattr__(self, name: str):  # noqa: ANN204 (get_source, get_filename, ...: the file's own loader)
        return getattr(self.inner, name)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        module.create_or_modify_pyi = _write_no_stub  # looked up as a global when each class is made


class _SkipStubWriter(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path, target=None):  # noqa: ANN001, ANN201
        if name != STUB_WRITER_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderWithoutStubWriter(spec.loader)
        return spec


def skip_gradio_stub_writing() -> None:
    """Install the finder unless Gradio is already imported (then it is too late, and harmless)."""
    if STUB_WRITER_MODULE not in sys.modules and not any(isinstance(f, _SkipStubWriter) for f in sys.meta_path):
        sys.meta_path.insert(0, _SkipStubWriter())
