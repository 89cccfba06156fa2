"""Training a process reward model (PRM) on the step marks of steps datasets, as a background job.

TRL dropped its ``PRMTrainer`` (trl 1.16 has none), so this is a ``transformers.Trainer`` with its own loss, on
the same jobs, configs, checkpoints, metrics, LoRA/4-bit and registry as reward models:

* data: the stepwise traces of ``core.preferences.stepwise`` (the export's rule), split by trace;
* one forward pass per trace: the score head runs at every position of the causal backbone and is read at each
  step's position (``core.scoring.steps``), so every step's logit sees exactly its prefix;
* loss: per-step logistic loss, ``mean over steps of BCEWithLogits(logit_k, label_k)``, label 1 = correct;
* batches: length-grouped; padding-free (every trace of a batch end to end in one row, attention kept within each
  trace, ``core.training.packing``) where the model runs SDPA, else right-padded;
* the saved folder is a plain ``*ForSequenceClassification`` (num_labels 1): its reward on the prefix ending at
  step k is step k's logit, so ``pipeline``, ``score``, the trajectory engine, serve-rm and vLLM's classify take it
  as it is. ``sigmoid(reward)`` is the step's probability of being correct.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.preferences.pairs import resolve_datasets
from core.preferences.stepwise import StepwiseRows, StepwiseTrace, build_stepwise_rows
from core.scoring.steps import format_trace
from core.training import packing
from core.training.config import TrainingConfig
from core.training.trainer import (
    LengthReport,
    TrainingError,
    TrainOutcome,
    store_callback,
    latest_complete_checkpoint,
    load_model_for_training,
    load_tokenizer_for_texts,
    lora_config,
    reward_config,
    save_and_register,
)
from storage.datasets import DatasetError, dataset_by_name
from storage.engine import Store
from storage.models import Question

STEP_COLUMNS = ["input_ids", "step_positions", "step_labels"]


def is_step_training(store: Store, config: TrainingConfig) -> bool:
    """Whether the job trains a process reward model: every dataset it names asks the steps question. A mix of
    steps and pair datasets is refused (one job trains one kind of model)."""
    if not config.dataset:
        return False
    with store.read() as session:
        questions = {}
        for name in config.dataset:
            dataset = dataset_by_name(session, name)
            if dataset is None:
                return False  # the pair path names the unknown dataset
            questions[name] = dataset.question
    steps = {name for name, question in questions.items() if question == Question.STEPS.value}
    if steps and steps != set(questions):
        raise TrainingError(f"datasets {', '.join(sorted(steps))} hold reasoning steps (a process reward model) and "
                            f"{', '.join(sorted(set(questions) - steps))} hold pairs (a reward model): train them in "
                            "separate jobs")
    return bool(steps)


@dataclass
class StepSnapshot:
    train: list[StepwiseTrace]
    eval: list[StepwiseTrace]
    content_hash: str
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return sum(len(t.labels) for t in self.train + self.eval)


def take_step_snapshot(store: Store, config: TrainingConfig) -> StepSnapshot:
    try:
        dataset_ids, _ = resolve_datasets(store, config.dataset)
    except DatasetError as error:
        raise TrainingError(str(error)) from None
    prepared: StepwiseRows = build_stepwise_rows(store, dataset_ids, neutral=config.step_neutral,
                                                 since=config.labels_since, annotators=config.annotators)
    if len(prepared.traces) < 2:
        raise TrainingError(f"only {len(prepared.traces)} trace(s) with marked steps; mark or import more first")
    order = list(range(len(prepared.traces)))
    random.Random(config.seed).shuffle(order)
    n_eval = min(len(order) - 1, round(len(order) * config.eval_fraction)) if config.eval_fraction > 0 else 0
    held = set(order[:n_eval])
    train = [t for i, t in enumerate(prepared.traces) if i not in held]
    held_out = [t for i, t in enumerate(prepared.traces) if i in held]
    return StepSnapshot(train, held_out, prepared.content_hash, dict(prepared.left_out))


def tokenize_traces(tokenizer: Any, traces: list[StepwiseTrace], max_length: int) -> tuple[list[dict[str, list]], int]:
    """The training examples of ``traces`` and how many steps ``max_length`` dropped (a step whose score position
    is past it; a trace left with no step is dropped)."""
    examples, dropped = [], 0
    for trace in traces:
        formatted = format_trace(tokenizer, trace.prompt, trace.completion, trace.prefix_ends)
        kept = [(p, label) for p, label in zip(formatted.step_positions, trace.labels, strict=True) if p < max_length]
        dropped += len(trace.labels) - len(kept)
        if kept:
            end = max(p for p, _ in kept) + 1
            examples.append({"input_ids": formatted.ids[:end], "step_positions": [p for p, _ in kept],
                             "step_labels": [float(label) for _, label in kept]})
    return examples, dropped


class StepCollator:
    """Pads a batch of traces on the right (or, ``padding_free``, lays them end to end in one row with position ids
    restarting per trace and the boundaries for ``packing``'s attention), with each step's position in the batch's
    flattened tokens and its label."""

    def __init__(self, pad_token_id: int, padding_free: bool) -> None:
        self.pad_token_id, self.padding_free = pad_token_id, padding_free

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        lengths = [len(e["input_ids"]) for e in examples]
        labels = torch.tensor([label for e in examples for label in e["step_labels"]], dtype=torch.float32)
        if self.padding_free:
            starts = [sum(lengths[:i]) for i in range(len(lengths))]
            boundaries = torch.tensor([0, *[s + n for s, n in zip(starts, lengths, strict=True)]], dtype=torch.int32)
            return {
                "input_ids": torch.tensor([[t for e in examples for t in e["input_ids"]]]),
                "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
                "cu_seq_lens_q": boundaries, "cu_seq_lens_k": boundaries,
                "max_length_q": max(lengths), "max_length_k": max(lengths),
                "flat_positions": torch.tensor([s + p for s, e in zip(starts, examples, strict=True)
                                                for p in e["step_positions"]]),
                "step_labels": labels,
            }
        width = max(lengths)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            ids[row, : lengths[row]] = torch.tensor(example["input_ids"])
            mask[row, : lengths[row]] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "flat_positions": torch.tensor([row * width + p for row, e in enumerate(examples)
                                                for p in e["step_positions"]]),
                "step_labels": labels}


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                "max_length_k")


def step_logits(model: Any, score_head: Any, inputs: dict[str, Any]) -> Any:
    """Each step's logit for a ``StepCollator`` batch: the score head's output at every position, captured by a
    hook (so the call still goes through the model's wrappers: DDP, PEFT), read at the steps' positions."""
    captured: list[Any] = []
    handle = score_head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(**{name: inputs[name] for name in MODEL_INPUTS if name in inputs}, use_cache=False)
    finally:
        handle.remove()
    return captured[-1].reshape(-1)[inputs["flat_positions"]].float()


def preview_step_training(store: Store, config: TrainingConfig) -> str:
    """What a process-reward-model job would train on: traces and steps, what max_length drops, lengths."""
    from core.training.trainer import preview_tokenizer_for_texts

    snapshot = take_step_snapshot(store, config)
    tokenizer = preview_tokenizer_for_texts(config, snapshot.content_hash, [
        t if isinstance(t, str) else json.dumps(t) for trace in snapshot.train + snapshot.eval
        for t in (trace.prompt, trace.completion)])
    train, dropped_train = tokenize_traces(tokenizer, snapshot.train, config.max_length)
    held, dropped_eval = tokenize_traces(tokenizer, snapshot.eval, config.max_length)
    lengths = sorted(len(e["input_ids"]) for e in train + held) or [0]
    labels = [label for trace in snapshot.train + snapshot.eval for label in trace.labels]
    left = ", ".join(f"{n} {why}" for why, n in sorted(snapshot.left_out.items())) or "none"
    return (f"Process reward model: {len(snapshot.train)} traces train and {len(snapshot.eval)} evaluate, "
            f"{len(labels)} labeled steps ({sum(labels)} correct, {len(labels) - sum(labels)} wrong); max_length "
            f"{config.max_length} drops {dropped_train} train and {dropped_eval} eval step(s). Tokens per trace: "
            f"median {lengths[len(lengths) // 2]}, longest {lengths[-1]}. Left out of the data: {left}.")


def step_trainer_class() -> type:
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class StepRewardTrainer(Trainer):
        """``Trainer`` with the per-step logistic loss; logs loss, step accuracy and mean P(correct)."""

        def __init__(self, *args, score_head: Any, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            self.score_head = score_head
            self._sums: dict[str, dict[str, float]] = {"train": {}, "eval": {}}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
            import torch

            logits = step_logits(model, self.score_head, inputs)
            labels = inputs["step_labels"].to(logits.device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            sums = self._sums["train" if model.training else "eval"]
            with torch.no_grad():
                for name, value in (("steps", float(len(labels))),
                                    ("correct", float(((logits > 0).float() == labels).sum())),
                                    ("p_correct", float(torch.sigmoid(logits).sum()))):
                    sums[name] = sums.get(name, 0.0) + value
            return (loss, {"logits": logits}) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
            sums = self._sums[mode]
            if sums.get("steps"):
                prefix = "eval_" if mode == "eval" else ""
                logs[f"{prefix}step_accuracy"] = sums["correct"] / sums["steps"]
                logs[f"{prefix}mean_p_correct"] = sums["p_correct"] / sums["steps"]
            self._sums[mode] = {}
            super().log(logs, start_time)

        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length":
                return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            dataset=dataset, lengths=[len(ids) for ids in dataset["input_ids"]])
            return super()._get_train_sampler(train_dataset)

    return StepRewardTrainer


def held_out_step_accuracy(trainer: Any, examples: list[dict[str, list]]) -> float | None:
    """Share of held-out steps whose logit has the sign of their label, over every step (not batch means)."""
    import torch

    if not examples:
        return None
    model = trainer.model
    model.eval()
    correct = total = 0
    collator = trainer.data_collator
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(examples), trainer.args.per_device_eval_batch_size):
            batch = collator(examples[start: start + trainer.args.per_device_eval_batch_size])
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            logits = step_logits(model, trainer.score_head, batch)
            correct += int(((logits > 0).float() == batch["step_labels"]).sum())
            total += len(logits)
    return correct / total


def _score_head(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if head is None or not hasattr(base, base.base_model_prefix):
        raise TrainingError(f"{type(base).__name__} has no score head on every position (a decoder reward model): a "
                            "process reward model reads a score at each step's end, which an encoder cannot give")
    return head


def run_step_training(store: Store, config: TrainingConfig, work_dir: Path, *, job_id: int | None = None,
                      resume: bool = False, cancel_flag: list[bool] | None = None, log=print) -> TrainOutcome:  # noqa: ANN001
    """Train, evaluate, save and register a process reward model. Raises ``TrainingError`` with the fix."""
    import datasets
    from transformers import set_seed

    cancel_flag = cancel_flag if cancel_flag is not None else [False]
    work_dir.mkdir(parents=True, exist_ok=True)
    snapshot = take_step_snapshot(store, config)
    texts = lambda: [t if isinstance(t, str) else json.dumps(t) for trace in snapshot.train + snapshot.eval  # noqa: E731
                     for t in (trace.prompt, trace.completion)]
    tokenizer = load_tokenizer_for_texts(config, texts, work_dir)
    train_examples, dropped_train = tokenize_traces(tokenizer, snapshot.train, config.max_length)
    eval_examples, dropped_eval = tokenize_traces(tokenizer, snapshot.eval, config.max_length)
    lengths = [len(e["input_ids"]) for e in train_examples + eval_examples] or [0]
    report = LengthReport(sum(len(t.labels) for t in snapshot.train), sum(len(t.labels) for t in snapshot.eval),
                          dropped_train, dropped_eval, config.max_length, lengths)
    log(f"data snapshot {snapshot.content_hash[:12]}: {len(snapshot.train)} traces train, {len(snapshot.eval)} "
        f"evaluate ({report.train_pairs} and {report.eval_pairs} steps); max_length {config.max_length} drops "
        f"{dropped_train} train and {dropped_eval} eval step(s); tokens per trace: longest {max(lengths)}")
    if not train_examples:
        raise TrainingError(f"every training step is past max_length {config.max_length}: raise max_length")
    set_seed(config.seed)
    model, notes = load_model_for_training(config, tokenizer, work_dir)
    for note in notes:
        log(f"note: {note}")
    if config.lora:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if config.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, lora_config(config))
    head = _score_head(model)
    n_parameters = sum(p.numel() for p in model.parameters())
    checkpoints = work_dir / "checkpoints"
    args = reward_config(config, checkpoints, n_parameters=n_parameters, n_eval_pairs=len(eval_examples),
                         responses_per_example=1.0)
    args.remove_unused_columns = False  # the step columns are the loss's, not the model's
    args.prediction_loss_only = True
    args.label_names = ["step_labels"]  # so evaluation computes the loss (Trainer looks for its label columns)
    if not eval_examples:
        args.eval_strategy = "no"
    padding_free = False
    if config.padding_free:
        why_not = packing.supports(model.get_base_model() if hasattr(model, "get_base_model") else model)
        if why_not is None:
            packing.enable(model.get_base_model() if hasattr(model, "get_base_model") else model)
            padding_free = True
            log("padding-free batches: each batch's traces end to end in one row, no pad tokens")
        else:
            notes.append(f"padding_free is on but {config.base_model} cannot take it ({why_not}): padded batches")
            log(f"note: {notes[-1]}")
    log(f"process reward model: {n_parameters / 1e6:.2f}M parameters; learning rate {args.learning_rate}, batch "
        f"{args.per_device_train_batch_size} traces, {'bf16' if args.bf16 else 'fp32'} on "
        f"{'cpu' if args.use_cpu else 'gpu'}")
    datasets.disable_progress_bars()
    trainer = step_trainer_class()(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(train_examples),
        eval_dataset=datasets.Dataset.from_list(eval_examples) if eval_examples else None,
        data_collator=StepCollator(tokenizer.pad_token_id, padding_free), processing_class=tokenizer,
        callbacks=[store_callback(store, job_id, cancel_flag)], score_head=head,
    )
    resume_from = latest_complete_checkpoint(checkpoints) if resume else None
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if cancel_flag[0]:
        log("cancelled: stopped at the next step as asked")
        return TrainOutcome("cancelled", None, None, None, None, report, notes, resume_from and resume_from.name)
    if eval_examples:
        trainer.evaluate()
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        return TrainOutcome("succeeded", None, None, None, None, report, notes, resume_from and resume_from.name)
    accuracy = held_out_step_accuracy(trainer, eval_examples)
    name, model_dir = save_and_register(store, trainer, tokenizer, config, job_id=job_id,
                                        data_hash=snapshot.content_hash, n_examples=snapshot.n_steps,
                                        accuracy=accuracy, margin=None,
                                        notes=notes + ["process reward model: sigmoid(reward on the prefix ending at "
                                                       "step k) = P(step k is correct)"])
    log(f"registered process reward model {name} at {model_dir} (held-out step accuracy {accuracy})")
    trainer.accelerator.wait_for_everyone()
    return TrainOutcome("succeeded", name, model_dir, accuracy, None, report, notes,
                        resume_from.name if resume_from else None)

