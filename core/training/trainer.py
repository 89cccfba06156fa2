"""Training a reward model with TRL's RewardTrainer (Bradley-Terry loss) on the store's labels.

The data snapshot comes from the export path (``build_preference_rows``), so what trains is what an
export would write. Before any GPU time is spent, ``length_report`` says how many pairs train and
evaluate and how many ``max_length`` would drop (TRL drops longer pairs silently, trl#2488).

Known traps, each fixed or refused with a message:

* no pad token, or pad == EOS (the pooled reward would be read one token early, since the appended
  EOS is taken for padding): a distinct ``<|pad|>`` token is added and the embeddings resized;
* a checkpoint whose classifier has ``num_labels != 1``: loaded with one output, the head re-initialised;
* ``RewardConfig`` defaults to bf16, which fails on a CPU: bf16 only where the GPU supports it;
* 4-bit + LoRA with fp32 compute: the trainer casts the trainable score head to bf16 and the matmul
  fails on mismatched dtypes, so 4-bit runs train in bf16.

A job stores its metrics, progress and heartbeat through ``StoreCallback``, stops at the next step
when a cancel is requested, and writes a ``COMPLETE`` marker into each checkpoint after it is fully
saved; a resumed job continues from the newest marked checkpoint only.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.preferences.pairs import PreferenceRows, build_preference_rows, response_text, split_rows
from core.model_folders import model_folder, models_folder
from core.scoring.engine import format_example
from core.training import packing
from core.training.config import DEMO_BASE, TrainingConfig, suggest_hyperparameters
from core.training.grouped import (
    GroupCollator,
    PromptGroupBatches,
    WeightedPairCollator,
    WeightedPairLoss,
    complete_pair_columns,
    group_rows,
    group_summary,
    responses_per_group,
    split_by_prompt,
)
from core.training.packing import PackingCollator
from storage.engine import Store
from storage.jobs import beat, record_metrics
from storage.registry import next_version_name, register_model

CHECKPOINT_MARKER = "COMPLETE"
PAD_TOKEN = "<|pad|>"


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


@dataclass
class DataSnapshot:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    content_hash: str
    left_out: dict[str, int]

    @property
    def n_pairs(self) -> int:
        return len(self.train) + len(self.eval)


def take_snapshot(store: Store, config: TrainingConfig) -> DataSnapshot:
    try:
        prepared: PreferenceRows = build_preference_rows(store, since=config.labels_since, annotators=config.annotators,
                                                         datasets=config.dataset, aggregate=config.aggregate,
                                                         soft_labels=config.soft_labels)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if len(prepared.rows) < 2:
        raise TrainingError(
            f"only {len(prepared.rows)} labeled pair(s) with a majority preference; label or import more first"
        )
    try:
        rows = complete_pair_columns(prepared.rows)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    # Grouped training holds out whole prompts, so that no held-out pair shares a prompt (and so
    # responses) with a training pair; plain training keeps the export's split of pairs.
    split = split_by_prompt if config.group_by_prompt else split_rows
    train, held_out = split(rows, config.eval_fraction, config.seed)
    return DataSnapshot(train, held_out, prepared.content_hash, dict(prepared.left_out))


@dataclass
class LengthReport:
    train_pairs: int
    eval_pairs: int
    dropped_train: int
    dropped_eval: int
    max_length: int
    token_lengths: list[int] = field(repr=False)

    def summary(self) -> str:
        lengths = sorted(self.token_lengths)
        p95 = lengths[min(len(lengths) - 1, int(0.95 * (len(lengths) - 1)))]
        return (
            f"{self.train_pairs - self.dropped_train} pairs train and {self.eval_pairs - self.dropped_eval} evaluate; "
            f"max_length {self.max_length} drops {self.dropped_train} train and {self.dropped_eval} eval pair(s). "
            f"Tokens per response: median {statistics.median(lengths):.0f}, p95 {p95}, longest {lengths[-1]}."
        )


def length_report(tokenizer: Any, snapshot: DataSnapshot, max_length: int) -> LengthReport:
    """Token lengths of every pair exactly as RewardTrainer formats it, and what max_length drops."""
    lengths, dropped = [], {"train": 0, "eval": 0}
    for split, rows in (("train", snapshot.train), ("eval", snapshot.eval)):
        for row in rows:
            pair = [len(format_example(tokenizer, row["prompt"], response_text(row[k])).ids) for k in ("chosen", "rejected")]
            lengths += pair
            dropped[split] += max(pair) > max_length
    return LengthReport(len(snapshot.train), len(snapshot.eval), dropped["train"], dropped["eval"], max_length, lengths)


def _snapshot_texts(snapshot: DataSnapshot) -> list[str]:
    texts = []
    for row in snapshot.train + snapshot.eval:
        for key in ("prompt", "chosen", "rejected"):
            value = row[key]
            texts += [m["content"] for m in value] if isinstance(value, list) else [value]
    return texts


_preview_tokenizers: dict[str, Any] = {}


def preview_tokenizer(config: TrainingConfig, snapshot: DataSnapshot) -> Any:
    """The tokenizer a job with this config would use, for a preview: for ``demo``, the same BPE the
    job would train on the snapshot's texts, built once per data snapshot (no model weights, nothing
    written), so that "Check data" answers at once after the first time."""
    return preview_tokenizer_for_texts(config, snapshot.content_hash, _snapshot_texts(snapshot))


def preview_tokenizer_for_texts(config: TrainingConfig, content_hash: str, texts: list[str]) -> Any:
    """``preview_tokenizer`` for any data: ``texts`` are what the demo tokenizer would be trained on."""
    if config.base_model != DEMO_BASE:
        return load_tokenizer_for_texts(config, lambda: texts, Path())
    if content_hash not in _preview_tokenizers:
        from core.training.demo_model import build_demo_tokenizer

        _preview_tokenizers.clear()  # one snapshot at a time: the store's current data
        _preview_tokenizers[content_hash] = build_demo_tokenizer(texts * 2)
    return _preview_tokenizers[content_hash]


def load_tokenizer(config: TrainingConfig, snapshot: DataSnapshot, work_dir: Path) -> Any:
    """The tokenizer training will use (for ``demo``, built from the snapshot's texts)."""
    return load_tokenizer_for_texts(config, lambda: _snapshot_texts(snapshot), work_dir)


def load_tokenizer_for_texts(config: TrainingConfig, texts: Callable[[], list[str]], work_dir: Path) -> Any:
    """The tokenizer training will use; for ``demo``, a base model and tokenizer built from ``texts()`` (called only
    when the demo base is built)."""
    from transformers import AutoTokenizer

    if config.base_model == DEMO_BASE:
        from core.training.demo_model import build_demo_reward_model

        base = work_dir / "demo-base"
        work_dir.mkdir(parents=True, exist_ok=True)
        # Several processes of one job (one per GPU) build it once: the first holds the lock.
        with open(work_dir / ".demo-base.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (base / "config.json").exists():
                build_demo_reward_model(base, texts() * 2, seed=config.seed)
        return AutoTokenizer.from_pretrained(base)
    try:
        return AutoTokenizer.from_pretrained(config.base_model, token=hub_token(),
                                             local_files_only=local_files_only(config.base_model))
    except OSError as error:
        raise TrainingError(
            f"cannot load {config.base_model!r}: it is not a local folder and the hub could not provide it "
            f"({str(error).splitlines()[0]}). Without network, use base_model 'demo' (a small model built locally) "
            "or a folder holding the model."
        ) from None


def use_separator_as_eos(tokenizer: Any, base_model: str) -> str | None:
    """BERT-style tokenizers have no EOS, and RewardTrainer appends EOS to every standard example:
    their separator ends every sequence already, so it becomes EOS (the saved tokenizer keeps it,
    and the scorer applies the same rule to a folder without one). Returns a note saying so, or None.
    Raises ``TrainingError`` for a tokenizer with neither."""
    if tokenizer.eos_token is not None:
        return None
    if tokenizer.sep_token is None:
        raise TrainingError(f"{base_model}: the tokenizer has neither an EOS nor a separator token, and "
                            "RewardTrainer ends every example with EOS: set eos_token in the model folder's "
                            "tokenizer_config.json")
    tokenizer.eos_token = tokenizer.sep_token
    return f"the tokenizer has no EOS token: its separator {tokenizer.sep_token!r} is used as EOS"


def local_files_only(name: str) -> bool:
    """True when ``name`` is a hub id and the hub's name does not resolve: then load from the local
    cache only (``local_files_only``) instead of retrying for a minute before saying so.
    (``HF_HUB_OFFLINE`` cannot do this: huggingface_hub reads it once, at import.)"""
    import socket

    if Path(name).expanduser().exists():
        return False
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return True
    return False


def hub_token() -> str | None:
    """``HF_TOKEN`` from the environment or a ``.env`` file beside the app (for gated models)."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    env_file = Path(".env")
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "HF_TOKEN":
                return value.strip().strip("\"'")
    return None


def _device_precision(config: TrainingConfig) -> tuple[bool, bool]:
    """(use_cpu, bf16) for this machine and config."""
    import torch

    has_gpu = torch.cuda.is_available()
    if config.load_in_4bit:
        return not has_gpu, True
    return not has_gpu, bool(has_gpu and torch.cuda.is_bf16_supported())


def _shared_fields(target: type, config: TrainingConfig) -> dict[str, Any]:
    """The fields ``TrainingConfig`` declares under the same name as TRL's config class ``target``:
    they are copied as they are, so a TRL option added to ``TrainingConfig`` reaches TRL in one edit."""
    ours = {field.name for field in dataclasses.fields(TrainingConfig)}
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(target)
            if field.init and field.name in ours}


def model_config(config: TrainingConfig) -> Any:
    """TRL's ``ModelConfig`` for this job, from which TRL's own ``get_peft_config`` and
    ``get_quantization_config`` build the LoRA and bitsandbytes configs."""
    from trl import ModelConfig

    shared = _shared_fields(ModelConfig, config)
    shared.pop("lora_target_modules", None)
    model_args = ModelConfig(
        **shared,
        use_peft=config.lora,
        lora_task_type="SEQ_CLS",
        lora_modules_to_save=["score"],  # the fresh reward head is trained fully, not through adapters
        use_bnb_nested_quant=config.bnb_4bit_use_double_quant,
        dtype=config.bnb_4bit_compute_dtype,  # get_quantization_config takes the 4-bit compute dtype from here
    )
    # Set after construction: ModelConfig.__post_init__ turns a one-item list into a plain string, which
    # PEFT then matches as a regular expression against whole module paths ("q_proj" finds nothing).
    modules = config.lora_target_modules.strip()
    model_args.lora_target_modules = (
        modules if modules == "all-linear" else [m.strip() for m in modules.split(",") if m.strip()]
    )
    return model_args


def load_model_for_training(config: TrainingConfig, tokenizer: Any, work_dir: Path) -> tuple[Any, list[str]]:
    from transformers import AutoModelForSequenceClassification
    from trl import get_quantization_config

    notes = []
    source = str(work_dir / "demo-base") if config.base_model == DEMO_BASE else config.base_model
    kwargs: dict[str, Any] = {"num_labels": 1, "token": hub_token(), "local_files_only": local_files_only(source)}
    quantization = get_quantization_config(model_config(config))
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    except (RuntimeError, ValueError) as error:
        # transformers 4 said "size mismatch"; 5 says to set ignore_mismatched_sizes.
        if "size mismatch" not in str(error) and "ignore_mismatched_sizes" not in str(error):
            raise
        model = AutoModelForSequenceClassification.from_pretrained(source, ignore_mismatched_sizes=True, **kwargs)
        notes.append("the checkpoint's classifier had another number of labels: the score head was re-initialised "
                     "with one output (num_labels=1)")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        reason = "had no pad token" if tokenizer.pad_token is None else "used EOS as its pad token"
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        model.resize_token_embeddings(len(tokenizer))
        notes.append(f"the tokenizer {reason}: added {PAD_TOKEN} so the reward is read at EOS, not one token early")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, notes


def lora_config(config: TrainingConfig) -> Any:
    """The job's LoRA config (``task_type="SEQ_CLS"``), built by TRL's ``get_peft_config``; None without lora."""
    from trl import get_peft_config

    return get_peft_config(model_config(config))


def evaluation_interval(config: TrainingConfig, *, n_eval_pairs: int, batch_size: int) -> int:
    """Steps between evaluations, so that evaluating costs at most ~10% of training: one evaluation
    is a forward pass over ``n_eval_pairs`` pairs, about n_eval / (3 * batch) training steps (a step
    is a forward and a backward pass over ``batch_size`` pairs); evaluating every k steps costs
    n_eval / (3 * batch * k) of training, which is <= 0.1 for k >= 10 * n_eval / (3 * batch).
    Never more often than metrics are logged. A final evaluation always runs at the end."""
    return max(config.logging_steps, math.ceil(10 * n_eval_pairs / (3 * max(1, batch_size))))


def reward_config(config: TrainingConfig, output_dir: Path, *, n_parameters: int | None, n_eval_pairs: int = 0,
                  responses_per_example: float = 2.0) -> Any:
    """TRL's ``RewardConfig`` for the job. ``n_eval_pairs`` counts held-out examples (pairs; prompt groups
    under ``group_by_prompt``), and ``responses_per_example`` what one holds, so that a suggested batch
    of groups holds about as many responses as the suggested batch of pairs."""
    from trl import RewardConfig

    use_cpu, bf16 = _device_precision(config)
    suggested_lr, suggested_batch = suggest_hyperparameters(n_parameters, demo=config.base_model == DEMO_BASE,
                                                            responses_per_example=responses_per_example)
    batch = config.per_device_train_batch_size or suggested_batch
    return RewardConfig(**{
        **_shared_fields(RewardConfig, config),
        # where RewardLab's field means something more than TRL's ("0 = suggested"):
        "learning_rate": config.learning_rate or suggested_lr,
        "per_device_train_batch_size": batch,
        "per_device_eval_batch_size": batch,
        "max_steps": config.max_steps or -1,
        "center_rewards_coefficient": config.center_rewards_coefficient or None,
        # chosen by RewardLab for this machine and the job's folders:
        "output_dir": str(output_dir),
        "bf16": bf16,
        "use_cpu": use_cpu,
        "activation_checkpointing": False,
        "eval_strategy": "steps",
        "eval_steps": evaluation_interval(config, n_eval_pairs=n_eval_pairs, batch_size=batch),
        "save_strategy": "steps",
        "save_total_limit": 3,
        "report_to": [],
        "disable_tqdm": False,
    })


def length_grouped_reward_trainer() -> type:
    """TRL's ``RewardTrainer`` whose ``group_by_length`` sampling measures a pair by its longer side
    (a prompt group by its longest response), and which honours a ``weight`` column: pairs weighted
    as in ``core.training.grouped`` (TRL's loss when the column is absent, TRL has no weights).

    transformers' ``LengthGroupedSampler`` looks for an ``input_ids`` (or ``length``) column; TRL's
    tokenized pairs have ``chosen_ids`` and ``rejected_ids``, and the collator pads a batch to its
    longest sequence, so batches of pairs of similar length waste little on padding. (TRL pads every
    batch to its longest pair and has no packing: trl#3780.)
    """
    import datasets
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    def pair_lengths(dataset: Any) -> list[int] | None:
        if not isinstance(dataset, datasets.Dataset):
            return None
        if {"chosen_ids", "rejected_ids"} <= set(dataset.column_names):
            return [max(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"], strict=True)]
        if "response_ids" in dataset.column_names:
            return [max(map(len, group)) for group in dataset["response_ids"]]
        return None

    class LengthGroupedRewardTrainer(WeightedPairLoss, RewardTrainer):
        def __init__(self, *args, padding_free: bool = False, **kwargs) -> None:  # noqa: ANN002, ANN003
            """``padding_free``: pack each batch into one row (``core.training.packing``); the model's
            attention must already be ``packing.VARLEN_ATTENTION`` (``packing.enable``)."""
            self.padding_free = padding_free
            super().__init__(*args, **kwargs)
            if isinstance(self.data_collator, DataCollatorForPreference):  # not one the caller chose
                self.data_collator = WeightedPairCollator(self.data_collator)
            if padding_free:
                self.data_collator = PackingCollator(self.data_collator)

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if "weight" not in self._signature_columns:
                self._signature_columns.append("weight")

        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = pair_lengths(dataset) if self.args.train_sampling_strategy == "group_by_length" else None
            if lengths is not None:
                return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            dataset=dataset, lengths=lengths)
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):  # noqa: ANN001, ANN202
            lengths = pair_lengths(eval_dataset) if self.args.train_sampling_strategy == "group_by_length" else None
            if lengths is not None:
                return LengthGroupedSampler(self.args.eval_batch_size, dataset=eval_dataset, lengths=lengths)
            return super()._get_eval_sampler(eval_dataset)

    return LengthGroupedRewardTrainer


def prompt_grouped_reward_trainer() -> type:
    """The trainer of ``group_by_prompt``: ``length_grouped_reward_trainer``'s, on batches of whole
    prompts (``core.training.grouped``). It takes the same rows as TRL's ``RewardTrainer``, so
    ``prompt_grouped_reward_trainer()(model=..., args=RewardConfig(...), train_dataset=rows, ...)`` is a
    drop-in replacement; ``per_device_train_batch_size`` counts prompts."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class PromptGroupedRewardTrainer(PromptGroupBatches, length_grouped_reward_trainer()):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            if isinstance(self.data_collator, (DataCollatorForPreference, WeightedPairCollator, PackingCollator)):
                self.data_collator = GroupCollator(self.processing_class.pad_token_id, self.args.pad_to_multiple_of)
                if self.padding_free:
                    self.data_collator = PackingCollator(self.data_collator)

    return PromptGroupedRewardTrainer


def held_out_accuracy(trainer: Any) -> tuple[float | None, float | None]:
    """(accuracy, mean margin) per pair over the trainer's whole (tokenized) held-out split: chosen
    scored strictly above rejected, every pair counted once whatever its weight. A held-out prompt
    group's responses are scored once each. None when every held-out pair was longer than max_length."""
    import torch

    model = trainer.model
    was_training = model.training
    model.eval()
    correct, margins = 0, []
    with torch.no_grad():
        for example in trainer.eval_dataset:
            if "response_ids" in example:
                sequences, pairs = example["response_ids"], zip(example["chosen_index"], example["rejected_index"])
            else:
                sequences, pairs = [example["chosen_ids"], example["rejected_ids"]], [(0, 1)]
            rewards = [model(input_ids=torch.tensor([ids], device=model.device)).logits[0, 0].float().item()
                       for ids in sequences]
            for chosen, rejected in pairs:
                margins.append(rewards[chosen] - rewards[rejected])
                correct += rewards[chosen] > rewards[rejected]
    model.train(was_training)
    if not margins:
        return None, None
    return correct / len(margins), sum(margins) / len(margins)


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint whose save finished (it has the marker); half-saved ones are ignored."""
    marked = [p for p in output_dir.glob("checkpoint-*") if (p / CHECKPOINT_MARKER).exists()]
    return max(marked, key=lambda p: int(p.name.split("-")[-1])) if marked else None


STEP_CLOCK_METRIC = "step_clock_seconds"  # a job's own clock, recorded with its progress (not a training metric)


def store_callback(store: Store | None, job_id: int | None, cancel_flag: list[bool]):  # noqa: ANN202
    from transformers import TrainerCallback

    class StoreCallback(TrainerCallback):
        """Metrics, progress and heartbeat into the store; cancel requests; checkpoint markers."""

        last_beat = 0.0
        started = None  # monotonic time at the first optimizer step's end (loading and warm-up excluded)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            numeric = {k: float(v) for k, v in (logs or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for name in ("loss", "grad_norm"):
                value = numeric.get(name)
                if value is not None and not math.isfinite(value):
                    raise TrainingError(f"the {name} became {value} at step {state.global_step}: lower the learning "
                                        "rate, or check the data for empty or extreme examples")
            # A store keeps numbers: SQLite would turn NaN into NULL. Non-finite values are not recorded.
            numeric = {k: v for k, v in numeric.items() if math.isfinite(v)}
            if store is not None and job_id is not None and state.is_world_process_zero:
                with store.write() as session:
                    record_metrics(session, job_id, state.global_step, numeric)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            if store is None or job_id is None or not state.is_world_process_zero:
                return
            now = time.monotonic()
            if self.started is None:
                self.started = now
            if now - self.last_beat >= 1.0 or state.global_step == state.max_steps:
                self.last_beat = now
                with store.write() as session:
                    if beat(session, job_id, step=state.global_step, total_steps=state.max_steps):
                        cancel_flag[0] = True
                    # Seconds since the first step ended, per step: the Train tab's ETA is measured from these
                    # (the first step carries compilation and warm-up, so it is the origin, not a sample).
                    record_metrics(session, job_id, state.global_step, {STEP_CLOCK_METRIC: now - self.started})
            if cancel_flag[0]:
                control.should_training_stop = True
                control.should_save = False

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            # Called after the checkpoint is written: only now is it safe to resume from.
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir() and state.is_world_process_zero:
                (folder / CHECKPOINT_MARKER).write_text(str(state.global_step))

    return StoreCallback()


@dataclass
class TrainOutcome:
    status: str  # "succeeded" | "cancelled"
    model_name: str | None
    model_dir: Path | None
    eval_accuracy: float | None
    eval_margin: float | None
    report: LengthReport
    notes: list[str]
    resumed_from: str | None = None
    held_out: list[dict[str, Any]] = field(default_factory=list)  # the snapshot's held-out rows (the loop judges on them)


def run_training(store: Store, config: TrainingConfig, work_dir: Path, *, job_id: int | None = None,
                 resume: bool = False, cancel_flag: list[bool] | None = None, log=print) -> TrainOutcome:  # noqa: ANN001
    """Train, evaluate, save and register a reward model. Raises ``TrainingError`` with the fix."""
    import datasets

    cancel_flag = cancel_flag if cancel_flag is not None else [False]
    work_dir.mkdir(parents=True, exist_ok=True)
    snapshot = take_snapshot(store, config)
    tokenizer = load_tokenizer(config, snapshot, work_dir)
    eos_note = use_separator_as_eos(tokenizer, config.base_model)
    report = length_report(tokenizer, snapshot, config.max_length)
    log(f"data snapshot {snapshot.content_hash[:12]}: {report.summary()}")
    if report.train_pairs - report.dropped_train < 1:
        raise TrainingError(f"every training pair is longer than max_length {config.max_length}: raise max_length")
    # Seed before the model is built: a base model's fresh reward head is drawn from the RNG, and
    # without this two runs with the same --seed differ (by up to 0.46 in reward on a base causal LM).
    from transformers import set_seed

    set_seed(config.seed)
    model, notes = load_model_for_training(config, tokenizer, work_dir)
    for note in notes:
        log(f"note: {note}")
    n_parameters = sum(p.numel() for p in model.parameters())
    checkpoints = work_dir / "checkpoints"
    examples = {"n_eval_pairs": len(snapshot.eval)}
    if config.group_by_prompt:  # an example is a prompt group: evaluation cadence and batch counted in groups
        log(group_summary(snapshot.train))
        examples = {"n_eval_pairs": len(group_rows(snapshot.eval)),
                    "responses_per_example": responses_per_group(snapshot.train)}
    args = reward_config(config, checkpoints, n_parameters=n_parameters, **examples)
    if eos_note:
        args.eos_token = tokenizer.eos_token  # the separator: RewardTrainer checks it is in the vocabulary
        notes.append(eos_note)
        log(f"note: {eos_note}")
    batch = f"{args.per_device_train_batch_size}{' prompt(s)' if config.group_by_prompt else ''}"
    log(f"{n_parameters / 1e6:.2f}M parameters; learning rate {args.learning_rate}, batch {batch}, "
        f"{'bf16' if args.bf16 else 'fp32'} on {'cpu' if args.use_cpu else 'gpu'}, {args.world_size} process(es)")
    datasets.disable_progress_bars()
    train = datasets.Dataset.from_list(snapshot.train)
    held_out = datasets.Dataset.from_list(snapshot.eval) if snapshot.eval else None
    if held_out is None:
        args.eval_strategy = "no"
    padding_free = False
    if config.padding_free:
        why_not = packing.supports(model)
        if why_not is None:
            packing.enable(model)
            padding_free = True
            log("padding-free batches: each batch's sequences end to end in one row, no pad tokens")
        else:
            notes.append(f"padding_free is on but {config.base_model} cannot take it ({why_not}): padded batches")
            log(f"note: {notes[-1]}")
    trainer_class = prompt_grouped_reward_trainer() if config.group_by_prompt else length_grouped_reward_trainer()
    trainer = trainer_class(
        model=model, args=args, train_dataset=train, eval_dataset=held_out, processing_class=tokenizer,
        padding_free=padding_free,
        peft_config=lora_config(config) if config.lora else None,
        callbacks=[store_callback(store, job_id, cancel_flag)],
    )
    resume_from = latest_complete_checkpoint(checkpoints) if resume else None
    if resume:
        log(f"resuming from {resume_from.name}" if resume_from else "no complete checkpoint to resume from: starting over")
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if cancel_flag[0]:
        log("cancelled: stopped at the next step as asked")
        return TrainOutcome("cancelled", None, None, None, None, report, notes, resume_from and resume_from.name)
    metrics = trainer.evaluate() if held_out is not None else {}  # every rank takes part
    if not trainer.is_world_process_zero():
        # Launched as several processes, only the main one saves, registers and records; the others
        # wait here until it has, so that none exits (and tears down the process group) early.
        trainer.accelerator.wait_for_everyone()
        return TrainOutcome("succeeded", None, None, None, None, report, notes, resume_from and resume_from.name)
    if held_out is not None:
        # The registry's figure is per pair over the whole held-out split; the trainer's eval_accuracy
        # averages per-batch accuracies, which over-weights a short last batch.
        metrics["eval_accuracy"], metrics["eval_margin"] = held_out_accuracy(trainer)
    accuracy, margin = metrics.get("eval_accuracy"), metrics.get("eval_margin")
    name, model_dir = save_and_register(store, trainer, tokenizer, config, job_id=job_id,
                                        data_hash=snapshot.content_hash, n_examples=snapshot.n_pairs,
                                        accuracy=accuracy, margin=margin, notes=notes)
    log(f"registered {name} at {model_dir} (held-out accuracy {accuracy}, margin {margin})")
    trainer.accelerator.wait_for_everyone()
    return TrainOutcome("succeeded", name, model_dir, accuracy, margin, report, notes,
                        resume_from.name if resume_from else None, snapshot.eval)


def save_and_register(store: Store, trainer: Any, tokenizer: Any, config: TrainingConfig, *, job_id: int | None,
                      data_hash: str, n_examples: int, accuracy: float | None, margin: float | None,
                      notes: list[str]) -> tuple[str, Path]:
    """Save the trained model as a plain folder and register it under the job's name (a new version when the
    name is taken); returns the registered name and its folder."""
    base_name = config.output_name or (f"rm-job-{job_id}" if job_id else f"rm-{data_hash[:8]}")
    models_root = models_folder(store)
    staging = models_root / f".staging-{base_name}-{os.getpid()}"
    save_reward_model(trainer, tokenizer, staging, lora=config.lora, quantized=config.load_in_4bit)
    # The version is chosen, the folder moved into place and the model registered in one write
    # transaction, so two jobs finishing under one name get two versions, and nothing is replaced.
    with store.write() as session:
        name = next_version_name(session, base_name)
        model_dir = model_folder(store, name)
        if model_dir.exists():
            raise TrainingError(f"{model_dir} exists but is not registered: move it away, or choose another output_name")
        os.rename(staging, model_dir)
        register_model(
            session, name=name, path=str(model_dir), base_model=config.base_model, job_id=job_id,
            config={**config.to_record(), "notes": notes}, data_hash=data_hash, n_pairs=n_examples,
            eval_accuracy=float(accuracy) if accuracy is not None else None,
            eval_margin=float(margin) if margin is not None else None,
        )
    return name, model_dir


def save_reward_model(trainer: Any, tokenizer: Any, model_dir: Path, *, lora: bool, quantized: bool) -> None:
    """Save a folder that ``AutoModelForSequenceClassification`` and ``pipeline`` load directly.

    LoRA adapters are merged into the base weights, so the folder is a plain model. A 4-bit base
    cannot be merged exactly; its folder holds the adapter (with the fully trained score head),
    which ``AutoPeftModelForSequenceClassification`` and this app's scorer load with their base.
    """
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model = trainer.model
    if lora and not quantized:
        model = model.merge_and_unload()
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
