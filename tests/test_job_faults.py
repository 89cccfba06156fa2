"""Jobs that go wrong end as failed with the reason, and the app keeps serving labels meanwhile."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, setup_cli, start_app
from test_training import separable_pairs, wait_for

from core.accounts import actor_for
from core.data.importer import import_rows
from core.training.config import TrainingConfig
from core.jobs.scheduling import start_next_job, submit_job

pytestmark = pytest.mark.slow


# On PostgreSQL too: the job that writes step metrics and then fails, and labels served while a job trains (the
# worker and the app write to one store at once); the other failures reach the store the same way.
@pytest.mark.parametrize("config,reason", [
    (TrainingConfig(base_model="/no/such/model", max_steps=5), "cannot load '/no/such/model'"),
    pytest.param(TrainingConfig(max_steps=40, logging_steps=1, learning_rate=1e12, center_rewards_coefficient=0.0),
                 "became nan at step", marks=pytest.mark.postgres),
    (TrainingConfig(max_steps=5, max_length=4), "every training pair is longer than max_length 4: raise max_length"),
])
def test_a_failing_job_ends_failed_with_its_reason(store, config, reason):
    import_rows(store, separable_pairs(24), source="import:separable")
    job_id = submit_job(store, actor_for(store, None), config)
    start_next_job(store)
    job = wait_for(store, job_id, ("failed", "succeeded"))
    assert job.status == "failed"
    assert reason in job.error.lower() or reason in job.error


@pytest.mark.postgres
def test_labels_are_served_while_a_job_trains(db_url, tmp_path, store):
    from gradio_client import Client

    import_rows(store, separable_pairs(24), source="import:separable")
    rows = [{"prompt": f"P{i}", "completions": [f"x{i}", f"y{i}"]} for i in range(20)]
    source = tmp_path / "c.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert setup_cli("import", str(source), "--dataset", "to-label", db_url=db_url).returncode == 0
    assert run_cli("adduser", "ann", "--role", "annotator", "--password", "long enough pw", db_url=db_url).returncode == 0
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    try:
        job_id = submit_job(store, _admin(store), TrainingConfig(max_steps=3000, dataset=["default"]))
        wait_for(store, job_id, ("running",), condition=lambda job: job.current_step > 0)
        client = Client(app.url, auth=("ann", "long enough pw"), verbose=False)
        for _ in range(10):
            item = client.predict(api_name="/next")
            assert client.predict(item["comparison_id"], "a", "", "", api_name="/label")["changed"]
        with store.read() as session:
            from storage.jobs import get_job

            assert get_job(session, job_id).status == "running"
    finally:
        app.process.terminate()
        app.process.wait(timeout=10)
    from core.jobs.scheduling import cancel_job

    cancel_job(store, _admin(store), job_id)
    wait_for(store, job_id, ("cancelled", "interrupted", "failed"), seconds=120)


def _admin(store):  # noqa: ANN001, ANN202
    from core.accounts import add_user

    try:
        add_user(store, "boss", "admin", "long enough pw")
    except ValueError:
        pass
    return actor_for(store, "boss")


def test_a_job_that_runs_out_of_memory_ends_failed_with_the_reason(store, tmp_path):
    """A base whose weights cannot be allocated: the allocator's out-of-memory error is the reason."""
    import json as _json

    from core.training.demo_model import build_demo_reward_model

    import_rows(store, separable_pairs(8), source="import:separable")
    folder = build_demo_reward_model(tmp_path / "huge", ["a b c d"] * 10, hidden_size=32, num_layers=1, num_heads=2)
    config = _json.loads((folder / "config.json").read_text())
    config.update(hidden_size=32768, intermediate_size=1_048_576, num_attention_heads=64, num_key_value_heads=64,
                  head_dim=512)  # one MLP matrix alone is 128 GiB
    (folder / "config.json").write_text(_json.dumps(config))
    job_id = submit_job(store, actor_for(store, None), TrainingConfig(base_model=str(folder), max_steps=5))
    start_next_job(store)
    job = wait_for(store, job_id, ("failed", "succeeded"))
    assert job.status == "failed" and "can't allocate memory" in job.error
