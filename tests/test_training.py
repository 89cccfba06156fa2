"""Training through the real runner: a child process per job, state in the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import PROJECT_ROOT
from sqlalchemy import text

from core.accounts import actor_for
from core.data.importer import import_rows
from core.training.config import ConfigError, TrainingConfig, suggest_hyperparameters
from storage.jobs import job_dir
from core.jobs.scheduling import cancel_job, resume_job, start_next_job, submit_job, worker_command
from core.training.trainer import TrainingError, latest_complete_checkpoint, length_report, take_snapshot
from storage.jobs import get_job, mark_orphans_interrupted, metrics_of
from storage.registry import model_by_name

pytestmark = pytest.mark.slow


def separable_pairs(n: int = 64) -> list[dict]:
    def reply(i: int, good: bool) -> list[dict[str, str]]:
        text = f"<think>\ncheck {i} carefully\n</think>\n\nThe answer is right." if good else "no idea, whatever"
        return [{"role": "assistant", "content": text}]

    return [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}], "chosen": reply(i, True),
             "rejected": reply(i, False)} for i in range(n)]


@pytest.fixture
def training_store(store):
    import_rows(store, separable_pairs(), source="import:separable")
    return store


def wait_for(store, job_id: int, statuses: tuple[str, ...], seconds: float = 300, condition=None):  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with store.read() as session:
            job = get_job(session, job_id)
        if job.status in statuses and (condition is None or condition(job)):
            return job
        time.sleep(0.5)
    log = (job_dir(store, job_id) / "train.log")
    raise AssertionError(f"job {job_id} is {job.status}, waited for {statuses}\n{log.read_text()[-3000:] if log.exists() else ''}")


def test_the_runner_trains_registers_and_the_folder_loads_with_pipeline(training_store):
    store = training_store
    admin = actor_for(store, None)
    config = TrainingConfig(max_steps=60, logging_steps=10, save_steps=30, eval_fraction=0.25, seed=0,
                            output_name="separable-rm")
    job_id = submit_job(store, admin, config)
    assert start_next_job(store) == job_id
    assert start_next_job(store) is None  # one job at a time
    job = wait_for(store, job_id, ("succeeded", "failed"))
    assert job.status == "succeeded", job.error
    with store.read() as session:
        record = model_by_name(session, "separable-rm")
        series = metrics_of(session, job_id)
    assert record.eval_accuracy >= 0.9 and record.n_pairs == 64 and record.job_id == job_id
    assert {"loss", "accuracy", "margin", "eval_accuracy", "mean_reward"} <= set(series)
    assert job.current_step == job.total_steps == 60

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(record.path)
    tokenizer = AutoTokenizer.from_pretrained(record.path)
    unseen = separable_pairs(80)[70]  # a pair that was not in the training data
    texts = [tokenizer.apply_chat_template(unseen["prompt"] + unseen[side], tokenize=False) for side in ("chosen", "rejected")]
    with torch.inference_mode():
        direct = [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]
    piped = [out["score"] for out in pipeline("text-classification", model=record.path, function_to_apply="none")(texts)]
    assert piped == pytest.approx(direct, abs=1e-5)
    assert direct[0] > direct[1]


def test_cancel_stops_a_running_job_at_its_next_step(training_store):
    store = training_store
    admin = actor_for(store, None)
    job_id = submit_job(store, admin, TrainingConfig(max_steps=5000, logging_steps=50, save_steps=5000))
    start_next_job(store)
    wait_for(store, job_id, ("running",), condition=lambda job: job.current_step > 0)
    assert cancel_job(store, admin, job_id) == "running"
    job = wait_for(store, job_id, ("cancelled", "failed"), seconds=120)
    assert job.status == "cancelled" and job.current_step < 5000
    queued = submit_job(store, admin, TrainingConfig(max_steps=5))
    assert cancel_job(store, admin, queued) == "cancelled"  # a queued job is cancelled at once


def test_a_killed_job_is_interrupted_and_resumes_from_its_last_complete_checkpoint(training_store):
    store = training_store
    admin = actor_for(store, None)
    job_id = submit_job(store, admin, TrainingConfig(max_steps=120, logging_steps=10, save_steps=20))
    start_next_job(store)
    checkpoints = job_dir(store, job_id) / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (latest_complete_checkpoint(checkpoints) and
                                               int(latest_complete_checkpoint(checkpoints).name.split("-")[1]) >= 40):
        time.sleep(0.3)
    with store.read() as session:
        pid = get_job(session, job_id).pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    saved = int(latest_complete_checkpoint(checkpoints).name.split("-")[1])
    # A half-saved folder (no marker), as a crash in the middle of a save leaves: never resumed from.
    (checkpoints / "checkpoint-9999").mkdir()

    with store.write() as session:  # what a restarted app does first
        assert mark_orphans_interrupted(session) == [job_id]
    with store.read() as session:
        assert get_job(session, job_id).status == "interrupted"

    resume_job(store, admin, job_id)
    start_next_job(store)
    job = wait_for(store, job_id, ("succeeded", "failed"))
    assert job.status == "succeeded", job.error
    log = (job_dir(store, job_id) / "train.log").read_text()
    resumed = int(log.split("resuming from checkpoint-")[1].split()[0])
    assert resumed >= saved >= 40 and resumed != 9999


def test_lora_adapters_save_and_reload_with_identical_rewards(tmp_path):
    from peft import AutoPeftModelForSequenceClassification, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.training.demo_model import build_demo_reward_model
    from core.training.trainer import lora_config, save_reward_model

    base = build_demo_reward_model(tmp_path / "base", ["some words for the tokenizer to learn"] * 20, hidden_size=32,
                                   num_layers=2, num_heads=2)
    tokenizer = AutoTokenizer.from_pretrained(base)
    peft_model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(base),
                                lora_config(TrainingConfig(lora=True, lora_r=4)))
    torch.manual_seed(1)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:  # LoRA starts as a no-op (B = 0): give it weight so the test can tell
            parameter.data.normal_(0, 0.5)
    peft_model.eval()  # LoRA dropout off, as in a reloaded model
    inputs = tokenizer(["some words<|im_end|>", "for the tokenizer to learn<|im_end|>"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        expected = peft_model(**inputs).logits[:, 0]

    class Holder:
        model = peft_model

    save_reward_model(Holder, tokenizer, tmp_path / "adapter", lora=True, quantized=True)
    reloaded = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter")
    save_reward_model(Holder, tokenizer, tmp_path / "merged", lora=True, quantized=False)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    with torch.inference_mode():
        assert torch.allclose(reloaded(**inputs).logits[:, 0], expected, atol=1e-5)
        assert torch.allclose(merged(**inputs).logits[:, 0], expected, atol=1e-5)


def test_the_length_report_counts_what_max_length_would_drop(store):
    rows = [{"prompt": "Q? ", "chosen": " short", "rejected": " also short"}] * 3
    rows += [{"prompt": f"Long {i}? ", "chosen": " word" * 300, "rejected": " brief"} for i in range(2)]
    import_rows(store, [dict(r, prompt=f"{r['prompt']}{i}") for i, r in enumerate(rows)], source="import:lengths")
    config = TrainingConfig(max_length=64, eval_fraction=0.0)
    snapshot = take_snapshot(store, config)
    from core.training.trainer import load_tokenizer

    tokenizer = load_tokenizer(config, snapshot, store.data_dir / "jobs" / "preview")
    report = length_report(tokenizer, snapshot, 64)
    assert (report.train_pairs, report.dropped_train) == (5, 2)
    assert "drops 2 train" in report.summary()


def test_training_needs_labels(store):
    with pytest.raises(TrainingError, match="labeled pair"):
        take_snapshot(store, TrainingConfig())


@pytest.mark.parametrize("kwargs,message", [
    ({"load_in_4bit": True}, "load_in_4bit needs lora"),
    ({"eval_fraction": 0.9}, "eval_fraction must be between"),
    ({"max_steps": 0, "num_train_epochs": 0}, "set max_steps or num_train_epochs"),
    ({"base_model": " "}, "base_model is empty"),
])
def test_bad_training_configs_say_how_to_fix_them(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainingConfig(**kwargs)


def test_suggestions_follow_the_guides_table():
    assert suggest_hyperparameters(494_000_000) == (2e-5, 8)
    assert suggest_hyperparameters(4_000_000_000) == (1e-5, 4)
    assert suggest_hyperparameters(8_000_000_000) == (5e-6, 2)


def test_the_worker_command_is_plain_python_on_one_device_and_accelerate_launch_on_several():
    """Only the argument lists; the several-process run itself is
    test_training_guarantees.py::test_two_processes_train_one_job_and_only_the_main_one_writes."""
    single = worker_command(7, gpus=1)
    assert single[1:] == ["-m", "core.jobs.worker", "--job", "7"]
    multi = worker_command(7, gpus=4)
    assert multi[1:6] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4"]
    assert multi[-4:] == ["-m", "core.jobs.worker", "--job", "7"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_trains_in_bf16_and_4bit_lora_trains_a_small_qwen(training_store):
    """On a CUDA GPU: the job's arguments and its log say bf16 on the GPU (mixed precision: the
    master weights stay float32), and 4-bit + LoRA trains a small Qwen built locally."""
    from core.training.trainer import reward_config, run_training

    plain = TrainingConfig(max_steps=2, output_name="gpu-bf16")
    args = reward_config(plain, training_store.data_dir / "x", n_parameters=None)
    assert args.bf16 and not args.use_cpu
    lines: list[str] = []
    outcome = run_training(training_store, plain, training_store.data_dir / "jobs" / "bf16", log=lines.append)
    assert any("bf16 on gpu" in line for line in lines), lines  # the trainer ran under bf16 autocast
    config = TrainingConfig(lora=True, load_in_4bit=True, max_steps=20, logging_steps=5, save_steps=20,
                            output_name="gpu-4bit")
    outcome = run_training(training_store, config, training_store.data_dir / "jobs" / "gpu", log=lines.append)
    assert outcome.status == "succeeded" and (outcome.model_dir / "adapter_config.json").exists()


def test_an_unreachable_hub_model_says_so_and_offers_the_demo(training_store, monkeypatch):
    import socket

    from core.training.trainer import load_tokenizer

    def no_dns(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise socket.gaierror("no network")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    config = TrainingConfig(base_model="Qwen/Qwen2.5-0.5B-Instruct")
    started = time.monotonic()
    with pytest.raises(TrainingError, match="use base_model 'demo'"):
        load_tokenizer(config, take_snapshot(training_store, config), training_store.data_dir / "jobs" / "x")
    assert time.monotonic() - started < 20


def test_a_classifier_with_several_labels_trains_with_a_one_output_head(training_store, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.training.demo_model import build_demo_reward_model
    from core.training.trainer import load_model_for_training

    folder = build_demo_reward_model(tmp_path / "three", ["some words"] * 10, hidden_size=32, num_layers=1, num_heads=2)
    AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True).save_pretrained(folder)
    model, notes = load_model_for_training(TrainingConfig(base_model=str(folder)), AutoTokenizer.from_pretrained(folder), tmp_path)
    assert model.config.num_labels == 1 and model.score.out_features == 1
    assert any("re-initialised with one output" in note for note in notes)


def test_pad_equal_to_eos_gets_a_distinct_pad_token(tmp_path):
    from transformers import AutoTokenizer

    from core.training.demo_model import build_demo_reward_model
    from core.training.trainer import PAD_TOKEN, load_model_for_training

    folder = build_demo_reward_model(tmp_path / "m", ["some words"] * 10, hidden_size=32, num_layers=1, num_heads=2)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    model, notes = load_model_for_training(TrainingConfig(base_model=str(folder)), tokenizer, tmp_path)
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert any("used EOS as its pad token" in note for note in notes)


def test_the_form_becomes_the_config_empty_numbers_zero_dates_parsed_annotators_split():
    form = {"base_model": "demo", "output_name": "from-form", "max_steps": None, "learning_rate": "",
            "labels_since": " 2026-11-01 ", "annotators": " ann, bob ,, ", "lora": True, "eval_fraction": 0.2}
    config = TrainingConfig.from_form(form)
    assert (config.output_name, config.max_steps, config.learning_rate, config.lora) == ("from-form", 0, 0.0, True)
    assert config.labels_since.isoformat() == "2026-11-01T00:00:00"
    assert config.annotators == ["ann", "bob"]
    assert TrainingConfig.from_form({"annotators": "", "labels_since": ""}).annotators is None
    with pytest.raises(ConfigError, match="labels since"):
        TrainingConfig.from_form({"labels_since": "last tuesday"})
    with pytest.raises(ConfigError, match="output_name"):
        TrainingConfig.from_form({"output_name": "../up"})


def test_a_running_jobs_eta_is_the_measured_time_per_step_times_the_steps_left(training_store):
    from core.accounts import operator_actor
    from core.jobs.scheduling import job_report
    from core.training.trainer import STEP_CLOCK_METRIC

    admin = operator_actor(training_store)
    job_id = submit_job(training_store, admin, TrainingConfig(max_steps=40))
    with training_store.write() as session:  # steps 1 to 10 took 90 s after warm-up: 10 s a step, 30 steps to go
        session.execute(text("UPDATE trainingjob SET status = 'running', current_step = 10, total_steps = 40 "
                             "WHERE id = :id"), {"id": job_id})
        for step, seconds in ((1, 0.0), (5, 40.0), (10, 90.0)):
            session.execute(text("INSERT INTO trainingmetric (job_id, step, name, value) VALUES (:j, :s, :n, :v)"),
                            {"j": job_id, "s": step, "n": STEP_CLOCK_METRIC, "v": seconds})
    report = job_report(training_store, admin, job_id)
    assert report.eta_seconds == pytest.approx(300)
    assert report.fraction == pytest.approx(0.25)
    assert STEP_CLOCK_METRIC not in report.metrics  # the job's clock is not drawn as a training metric
    with training_store.write() as session:
        session.execute(text("UPDATE trainingjob SET status = 'succeeded' WHERE id = :id"), {"id": job_id})
    assert job_report(training_store, admin, job_id).eta_seconds is None


def test_the_eta_comes_from_measured_step_times_after_warm_up():
    """At step 1/34 the ETA said "7 min 10 s" for a 1-minute job (loading and warm-up counted as step time). Now:
    no ETA until two steps after the first were measured, then seconds per step between them times the steps left."""
    from core.jobs.scheduling import eta_from_step_clock

    assert eta_from_step_clock([], 34) is None
    assert eta_from_step_clock([(1, 0.0)], 34) is None  # the first step is the origin, not a sample
    assert eta_from_step_clock([(1, 0.0), (2, 1.5)], 34) is None  # one measured step: not yet
    assert eta_from_step_clock([(1, 0.0), (3, 2.0), (5, 4.0)], 34) == pytest.approx(29.0)  # 1 s/step x 29 steps


def test_the_train_charts_have_axes_and_say_what_an_empty_panel_waits_for():
    from app.train_tab import CHARTS, _figure

    figure = _figure({"loss": [(1, 0.7), (2, 0.6)]})
    notes = [a.text for a in figure.layout.annotations if a.text.startswith("waiting")]
    assert notes == ["waiting for the first evaluation"] * (len(CHARTS) - 1)
    assert figure.layout.xaxis.title.text == "step" and figure.layout.yaxis.title.text == "loss"
    assert [a.text for a in _figure({}).layout.annotations if a.text.startswith("waiting")][0] == \
        "waiting for the first logged step"


def test_the_demo_training_stops_when_the_app_that_started_it_is_gone(tmp_path):
    """The app trains the demo model in a child process; stopped, the app leaves no orphan running on.
    Here the starting process exits at once: the child must end on its own well before training could."""
    import subprocess

    from conftest import PROJECT_ROOT

    out = tmp_path / "demo"
    starter = ("import os, subprocess, sys; "
               "child = subprocess.Popen([sys.executable, '-m', 'core.training.demo_model', '--db', sys.argv[1], "
               "'--out', sys.argv[2], '--parent-pid', str(os.getpid())]); print(child.pid)")
    done = subprocess.run([sys.executable, "-c", starter, f"sqlite:///{tmp_path / 's.db'}", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}") and \
            not open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{child}") or \
        open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", "the demo training outlived its app"
    assert not (out / "model.safetensors").exists()


_SCHEDULER_TICKS = """
import subprocess, sys
from storage.engine import Store
from storage.jobs import create_job, get_job
from core.jobs.scheduling import start_next_job
store = Store(sys.argv[1])
start_next_job(store)
print("idle tick imported torch:", "torch" in sys.modules)
with store.write() as session:
    job_id = create_job(session, {"base_model": "none"})
def no_child(*args, **kwargs):  # the GPU count is the point here, not the worker
    raise OSError("no worker in this test")
subprocess.Popen = no_child
start_next_job(store)
with store.read() as session:
    print("job:", get_job(session, job_id).status)
print("tick with a waiting job imported torch:", "torch" in sys.modules)
"""


def test_the_scheduler_imports_torch_to_count_gpus_only_once_a_job_waits(db_url):
    """An app nobody trains in never loads torch for the scheduler (~3 CPU-s and ~200 MB per app); the oracle is
    a fresh interpreter's ``sys.modules``, and the second tick is the control that the check can see torch."""
    done = subprocess.run([sys.executable, "-c", _SCHEDULER_TICKS, db_url], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["idle tick imported torch: False", "job: failed",
                                        "tick with a waiting job imported torch: True"], done.stdout
