"""The Gradio UI: thin callbacks over core/ (see README, "Design")."""

from app.gradio_stubs import skip_gradio_stub_writing

skip_gradio_stub_writing()  # before any app module imports Gradio: ~3 CPU-s less per start
