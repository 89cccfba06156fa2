"""The training job's configuration: one dataclass, from which the Train tab form, the ``train``
command's flags and the stored job record are all built.

Defaults that differ from TRL's ``RewardConfig``: ``bf16`` is chosen for the machine (TRL defaults to
bf16, which fails on a CPU), and the held-out split is taken from the store's labels.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.config_fields import ConfigError, config_field
from core.preferences.competence import AGGREGATES

DEMO_BASE = "demo"
# Presets from the reward-modeling guides; they need the hub (or a local copy) the first time.
HUB_PRESETS = {
    "Qwen/Qwen2.5-0.5B-Instruct": {},
    "Qwen/Qwen3-4B-Thinking-2507": {"lora": True, "load_in_4bit": True},
}
QUANT_TYPES = ("nf4", "fp4")
SAMPLING_STRATEGIES = ("group_by_length", "random")
# A registered model's name is also its folder's name under the models folder: nothing that could
# climb out of it ("..", "/", an absolute path) and no "@", which separates a name from its version.
OUTPUT_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
OUTPUT_NAME_RULE = ("letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters, "
                    "and no '..'")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class TrainingConfig:
    """A reward-model training job."""

    # --- model
    base_model: str = config_field(
        DEMO_BASE, help="'demo' (a tiny Qwen3 built locally, works offline), a local model folder, or a hub id"
    )
    output_name: str = config_field(
        "", help="name of the registered reward model (" + OUTPUT_NAME_RULE + "); reusing a name adds a new "
        "version, name@v2, never overwrites; empty = rm-job-<job id>"
    )
    # --- LoRA
    lora: bool = config_field(False, help="train LoRA adapters (task_type SEQ_CLS, the score head fully trained)")
    lora_r: int = config_field(16, help="LoRA rank")
    lora_alpha: int = config_field(32, help="LoRA alpha")
    lora_dropout: float = config_field(0.05, help="LoRA dropout")
    lora_target_modules: str = config_field(
        "all-linear", help="comma-separated module names, or all-linear"
    )
    # --- quantization (GPU)
    load_in_4bit: bool = config_field(False, help="load the base model in 4 bits with bitsandbytes (needs lora)")
    bnb_4bit_quant_type: str = config_field("nf4", help="4-bit quantization type", choices=QUANT_TYPES)
    bnb_4bit_use_double_quant: bool = config_field(True, help="double quantization (saves ~0.4 bit per parameter)")
    bnb_4bit_compute_dtype: str = config_field("bfloat16", help="compute dtype of 4-bit layers", choices=COMPUTE_DTYPES)
    # --- optimisation
    learning_rate: float = config_field(0.0, help="0 = suggested from the model size (guides' table)")
    per_device_train_batch_size: int = config_field(0, help="0 = suggested from the model size")
    gradient_accumulation_steps: int = config_field(1, help="gradient accumulation steps")
    num_train_epochs: float = config_field(1.0, help="epochs (ignored when max_steps > 0)")
    max_steps: int = config_field(0, help="stop after this many optimizer steps; 0 = use epochs")
    max_length: int = config_field(1024, help="longest pair in tokens; longer pairs are dropped (reported before start)")
    center_rewards_coefficient: float = config_field(0.01, help="pulls rewards towards zero (guides: 0.01)")
    disable_dropout: bool = config_field(True, help="disable dropout in the model (TRL's default)")
    seed: int = config_field(42, help="random seed (data split and initialisation)")
    train_sampling_strategy: str = config_field(
        "group_by_length", choices=SAMPLING_STRATEGIES,
        help="group_by_length: batches of pairs of similar length, so little of each batch is padding (long-tailed "
             "reasoning data); random: TRL's default shuffling",
    )
    group_by_prompt: bool = config_field(
        False, help="score each response once per step: a batch holds whole prompts (per_device_train_batch_size "
        "counts prompts), every response of a prompt is scored once, and the loss is the weighted Bradley-Terry loss "
        "over its pairs (a ranking of K responses: K forward passes instead of TRL's 2 per pair); the held-out split "
        "takes whole prompts",
    )
    padding_free: bool = config_field(
        True, help="padding-free batches: a batch's sequences end to end in one row with no pad tokens, attention "
        "kept within each sequence (models running SDPA attention; others train on padded batches, and the job log "
        "says so). Same loss and rewards as padded batches",
    )
    logging_steps: int = config_field(5, help="log metrics every N steps")
    save_steps: int = config_field(50, help="save a resumable checkpoint every N steps")
    # --- data
    eval_fraction: float = config_field(0.1, help="fraction of pairs held out for evaluation (0 to 0.5)")
    step_neutral: str = config_field(
        "correct", help="training on steps datasets (a process reward model): a step folded to neutral counts as "
        "correct, wrong, or drop (its trace is left out)", choices=("correct", "wrong", "drop"))
    labels_since: datetime | None = config_field(None, help="only labels given at or after this time (ISO date)")
    annotators: list[str] | None = config_field(None, help="only labels by these user names")
    dataset: list[str] | None = config_field(
        None, help="train on these datasets (several of one prompt kind may be combined); empty = all datasets"
    )
    aggregate: str = config_field(
        "majority", help="how several annotators' labels decide a pair: majority, dawid-skene or mace (an annotator "
        "model fitted per dataset weighs each label by its author's competence)", choices=AGGREGATES)
    soft_labels: bool = config_field(
        False, help="with aggregate dawid-skene or mace: weigh each pair's loss by its net posterior preference "
        "P(chosen) - P(rejected)")

    def __post_init__(self) -> None:
        if not self.base_model.strip():
            raise ConfigError("base_model is empty: use 'demo', a local folder or a hub id")
        if self.output_name and (not OUTPUT_NAME_PATTERN.fullmatch(self.output_name) or ".." in self.output_name):
            raise ConfigError(f"output_name {self.output_name!r} is not allowed: use {OUTPUT_NAME_RULE}")
        if self.load_in_4bit and not self.lora:
            raise ConfigError("load_in_4bit needs lora: 4-bit weights cannot be trained directly; turn lora on")
        if self.step_neutral not in ("correct", "wrong", "drop"):
            raise ConfigError(f"step_neutral must be correct, wrong or drop, got {self.step_neutral!r}")
        if not 0 <= self.eval_fraction <= 0.5:
            raise ConfigError(f"eval_fraction must be between 0 and 0.5, got {self.eval_fraction}")
        for name in ("lora_r", "lora_alpha", "gradient_accumulation_steps", "logging_steps", "save_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "per_device_train_batch_size", "max_steps", "num_train_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} cannot be negative")
        if self.max_steps == 0 and self.num_train_epochs == 0:
            raise ConfigError("set max_steps or num_train_epochs above 0")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if self.soft_labels and self.aggregate == "majority":
            raise ConfigError("soft labels are an annotator model's posterior: set aggregate to dawid-skene or mace")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout must be in [0, 1)")

    def to_record(self) -> dict[str, Any]:
        """JSON-safe fields for the job record."""
        record = dataclasses.asdict(self)
        record["labels_since"] = self.labels_since.isoformat() if self.labels_since else None
        return record

    @classmethod
    def from_form(cls, values: dict[str, Any]) -> "TrainingConfig":
        """The config from a form's raw values by field name: empty numbers are 0, a date is ISO
        text (empty = none), annotators and datasets are comma-separated names or lists (empty = all). Raises ``ConfigError``."""
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in values.items():
            hint = hints[name]
            try:
                if hint is int:
                    value = int(value or 0)
                elif hint is float:
                    value = float(value or 0)
                elif name == "labels_since":
                    value = datetime.fromisoformat(value.strip()) if value and value.strip() else None
                elif name in ("annotators", "dataset"):
                    if isinstance(value, str):
                        value = value.split(",")
                    value = [v.strip() for v in (value or []) if v and v.strip()] or None
            except (TypeError, ValueError):
                raise ConfigError(f"{name.replace('_', ' ')}: {value!r} is not a valid value") from None
            kwargs[name] = value
        return cls(**kwargs)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "TrainingConfig":
        values = dict(record)
        if values.get("labels_since"):
            values["labels_since"] = datetime.fromisoformat(values["labels_since"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# (upper bound on parameters, learning rate, batch size): the reward-modeling guides' table.
SUGGESTIONS = ((1e9, 2e-5, 8), (7.5e9, 1e-5, 4), (13.5e9, 5e-6, 2), (float("inf"), 5e-6, 1))
DEMO_SUGGESTION = (3e-3, 8)  # a 100k-parameter model learns at a far higher rate than the table's


def suggest_hyperparameters(n_parameters: int | None, *, demo: bool = False,
                            responses_per_example: float = 2.0) -> tuple[float, int]:
    """(learning rate, per-device batch size) for a model of this size. The table counts pairs; with
    examples of another size (prompt groups under ``group_by_prompt``), the batch holds about as many
    responses as the table's batch of pairs."""
    learning_rate, pairs = DEMO_SUGGESTION if demo else next(
        ((rate, batch) for bound, rate, batch in SUGGESTIONS if n_parameters is None or n_parameters < bound),
        SUGGESTIONS[-1][1:])
    return learning_rate, max(1, round(2 * pairs / responses_per_example))
