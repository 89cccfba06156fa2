"""Grouped training (``group_by_prompt``): every response of a prompt scored once per step.

A ranking of K completions of one prompt gives C(K,2) pairs; InstructGPT trains on all of them, each
weighted 1/C(K,2) so that a prompt counts once whatever its K (the exported ``weight`` column). TRL's
``RewardTrainer`` scores both sides of every pair: 2·C(K,2) = K(K-1) forward passes per prompt. Here a
batch holds whole prompts, each unique response is tokenized once and scored once, and the loss is
computed over the prompt's pairs from those K rewards:

    loss = sum_pairs w * (-log sigmoid(r_c - r_r - m) + c * (r_c + r_r)^2) / sum_pairs w

with m the pair's margin (0 without one), w its weight (1 without one) and c TRL's
``center_rewards_coefficient`` (0 when unset). With equal weights this is TRL's own loss over the same
pairs (``RewardTrainer.compute_loss``: the mean of -log sigmoid(r_c - r_r - m) plus c times the mean
of (r_c + r_r)^2). TRL has no pair weights, so ``WeightedPairLoss`` applies the same loss to plain
pair batches that carry a ``weight`` column.

A response is formatted exactly as RewardTrainer formats a pair's side (``format_example``: prompt +
response + EOS, or the chat template) and padded on the right as TRL's collator pads, so its reward
is the same number either way.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from core.preferences.pairs import response_text
from core.limits import MAX_GROUP_RESPONSES
from core.scoring.engine import Prompt, format_example

GROUP_COLUMNS = ["response_ids", "chosen_index", "rejected_index", "margin", "weight"]


@dataclass
class PromptGroup:
    """One prompt's unique responses and its pairs, as indices into ``responses``."""

    prompt: Prompt
    responses: list[str] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def response_index(self, text: str) -> int:
        if text not in self.responses:
            self.responses.append(text)
        return self.responses.index(text)


def prompt_key(prompt: Prompt) -> str:
    """Identical prompt content, text or chat messages, gives the same key."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def pair_number(row: dict[str, Any], key: str, default: float, position: int) -> float:
    """A row's ``margin`` or ``weight`` (absent or None: ``default``). Raises ``ValueError`` naming the
    row for a value that is not a finite number, or a weight that is not above 0."""
    value = row.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"training row {position + 1}: {key} must be a finite number, got {value!r}")
    if key == "weight" and value <= 0:
        raise ValueError(f"training row {position + 1}: weight must be above 0, got {value!r} "
                         "(leave the pair out instead of weighting it 0)")
    return float(value)


def complete_pair_columns(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with ``margin`` (0) and ``weight`` (1) filled in where missing or None, on every row
    when any row has one: ``datasets.Dataset.from_list`` takes its columns from the first row, and
    TRL's collator turns every row's margin into a tensor. Raises ``ValueError`` naming a bad row."""
    defaults = {key: default for key, default in (("margin", 0.0), ("weight", 1.0))
                if any(row.get(key) is not None for row in rows)}
    return [{**row, **{key: pair_number(row, key, default, position) for key, default in defaults.items()}}
            for position, row in enumerate(rows)]


def group_rows(rows: list[dict[str, Any]], max_responses: int = MAX_GROUP_RESPONSES) -> list[PromptGroup]:
    """Preference rows grouped by prompt, prompts in order of first appearance. A prompt with more than
    ``max_responses`` unique responses is cut into several groups, none with more (a pair goes
    whole into one group, so a response may be scored in more than one). Unknown columns are ignored.
    Raises ``ValueError`` for a bad margin or weight."""
    groups: dict[str, list[PromptGroup]] = {}
    for position, row in enumerate(rows):
        chosen, rejected = response_text(row["chosen"]), response_text(row["rejected"])
        margin, weight = pair_number(row, "margin", 0.0, position), pair_number(row, "weight", 1.0, position)
        of_prompt = groups.setdefault(prompt_key(row["prompt"]), [PromptGroup(row["prompt"])])
        group = of_prompt[-1]
        if len(set(group.responses) | {chosen, rejected}) > max_responses:
            group = PromptGroup(row["prompt"])
            of_prompt.append(group)
        group.chosen.append(group.response_index(chosen))
        group.rejected.append(group.response_index(rejected))
        group.margins.append(margin)
        group.weights.append(weight)
    return [group for of_prompt in groups.values() for group in of_prompt]


def split_by_prompt(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/held-out split of whole prompts: no prompt has pairs on both sides. The
    prompts are shuffled with ``seed`` and ``fraction`` of them (at least one, never all) are held out
    with every pair they have; rows keep their order. With fewer than two prompts nothing is held out."""
    keys = list(dict.fromkeys(prompt_key(row["prompt"]) for row in rows))
    if fraction <= 0 or len(keys) < 2:
        return rows, []
    random.Random(seed).shuffle(keys)
    held_out = set(keys[:min(len(keys) - 1, max(1, round(len(keys) * fraction)))])
    train = [row for row in rows if prompt_key(row["prompt"]) not in held_out]
    return train, [row for row in rows if prompt_key(row["prompt"]) in held_out]


def tokenize_groups(groups: list[PromptGroup], tokenizer: Any, max_length: int | None) -> list[dict[str, list]]:
    """One record per group: the token ids of each response, formatted as RewardTrainer formats it,
    and its pairs as indices. A response longer than ``max_length`` is dropped with its pairs (TRL
    drops a pair with a side over ``max_length``), and a group left without pairs with it."""
    records = []
    for group in groups:
        ids = [format_example(tokenizer, group.prompt, response).ids for response in group.responses]
        kept = [i for i, sequence in enumerate(ids) if max_length is None or len(sequence) <= max_length]
        new_index = {old: new for new, old in enumerate(kept)}
        pairs = [k for k, (c, r) in enumerate(zip(group.chosen, group.rejected, strict=True))
                 if c in new_index and r in new_index]
        if pairs:
            records.append({
                "response_ids": [ids[i] for i in kept],
                "chosen_index": [new_index[group.chosen[k]] for k in pairs],
                "rejected_index": [new_index[group.rejected[k]] for k in pairs],
                "margin": [group.margins[k] for k in pairs],
                "weight": [group.weights[k] for k in pairs],
            })
    return records


def responses_per_group(rows: list[dict[str, Any]]) -> float:
    """The mean number of responses a prompt group of these rows holds."""
    groups = group_rows(rows)
    return sum(len(group.responses) for group in groups) / max(1, len(groups))


def group_summary(rows: list[dict[str, Any]]) -> str:
    """What grouping saves on these rows, in a sentence for the job's log and the data check."""
    groups = group_rows(rows)
    responses = sum(len(group.responses) for group in groups)
    return (f"grouped by prompt: {len(groups)} group(s) of {len(rows)} pairs; an epoch scores {responses} responses "
            f"instead of {2 * len(rows)} ({2 * len(rows) / max(1, responses):.1f}x fewer)")


def weighted_bradley_terry(chosen: Any, rejected: Any, margin: Any, weight: Any,
                           center_coefficient: float | None) -> Any:
    """The loss in this module's docstring, from per-pair rewards (1-D tensors of one length)."""
    import torch.nn.functional as F

    per_pair = -F.logsigmoid(chosen - rejected - margin)
    if center_coefficient:
        per_pair = per_pair + center_coefficient * (chosen + rejected) ** 2
    return (weight * per_pair).sum() / weight.sum()


class GroupCollator:
    """Batches of prompt groups: every response of every group in one right-padded tensor (as TRL's
    ``DataCollatorForPreference`` pads), and each pair as indices into it, with its margin and weight."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from trl.trainer.utils import pad

        sequences: list[Any] = []
        pairs: dict[str, list] = {name: [] for name in GROUP_COLUMNS[1:]}
        for example in examples:
            offset = len(sequences)
            sequences += [torch.tensor(ids) for ids in example["response_ids"]]
            pairs["chosen_index"] += [offset + i for i in example["chosen_index"]]
            pairs["rejected_index"] += [offset + i for i in example["rejected_index"]]
            pairs["margin"] += example["margin"]
            pairs["weight"] += example["weight"]
        return {
            "input_ids": pad(sequences, padding_value=self.pad_token_id, padding_side="right",
                             pad_to_multiple_of=self.pad_to_multiple_of),
            "attention_mask": pad([torch.ones_like(s) for s in sequences], padding_value=0, padding_side="right",
                                  pad_to_multiple_of=self.pad_to_multiple_of),
            "chosen_index": torch.tensor(pairs["chosen_index"], dtype=torch.long),
            "rejected_index": torch.tensor(pairs["rejected_index"], dtype=torch.long),
            "margin": torch.tensor(pairs["margin"], dtype=torch.float),
            "weight": torch.tensor(pairs["weight"], dtype=torch.float),
        }


class WeightedPairCollator:
    """TRL's pair collator, plus the pairs as indices and their weights when the rows have a ``weight``
    column (None counts as 1); without one its batches are TRL's, untouched."""

    def __init__(self, pair_collator: Any) -> None:
        self.pair_collator = pair_collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.pair_collator(examples)
        if "weight" not in examples[0]:
            return batch
        n = len(examples)
        batch["chosen_index"], batch["rejected_index"] = torch.arange(n), torch.arange(n, 2 * n)
        batch.setdefault("margin", torch.zeros(n))
        batch["weight"] = torch.tensor([1.0 if e["weight"] is None else e["weight"] for e in examples])
        return batch


class WeightedPairLoss:
    """A ``RewardTrainer`` mixin: batches that name their pairs and weights (``GroupCollator``,
    ``WeightedPairCollator``) get the weighted loss, each sequence scored once; others TRL's own
    ``compute_loss``. Logs TRL's metrics (min/mean/max reward, accuracy and margin per pair,
    num_tokens), combined over processes from per-process sums, as processes hold different numbers
    of responses."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        if "weight" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        if "sequence_ends" in inputs:  # a padding-free batch (core.training.packing)
            from core.training.packing import packed_rewards

            unwrapped = self.accelerator.unwrap_model(model)
            hf_model = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
            rewards, outputs = packed_rewards(model, hf_model.score, inputs)
            outputs.logits = rewards[:, None]  # one reward per sequence, as for a padded batch
            n_tokens = inputs["cu_seq_lens_q"][-1]
        else:
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            rewards = outputs.logits.squeeze(-1)
            n_tokens = inputs["attention_mask"].sum()
        chosen, rejected = rewards[inputs["chosen_index"]], rewards[inputs["rejected_index"]]
        loss = weighted_bradley_terry(chosen, rejected, inputs["margin"], inputs["weight"],
                                      self.args.center_rewards_coefficient)
        self._log_pair_metrics(mode, rewards, chosen, rejected, n_tokens)
        return (loss, outputs) if return_outputs else loss

    def _log_pair_metrics(self, mode: str, rewards: Any, chosen: Any, rejected: Any, n_tokens: Any) -> None:
        import torch

        with torch.no_grad():
            if mode == "train":
                tokens = self.accelerator.gather_for_metrics(n_tokens.to(rewards.device)).sum().item()
                self._total_train_tokens += tokens // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            rewards, differences = rewards.float(), (chosen - rejected).float()
            local = torch.stack([rewards.min(), rewards.max(), rewards.sum(), rewards.new_tensor(rewards.numel()),
                                 (differences > 0).float().sum(), differences.sum(),
                                 differences.new_tensor(differences.numel())])
            low, high, total, count, correct, margin, pairs = self.accelerator.gather(local[None]).view(-1, 7).T
            self._metrics[mode]["min_reward"].append(low.min().item())
            self._metrics[mode]["mean_reward"].append((total.sum() / count.sum()).item())
            self._metrics[mode]["max_reward"].append(high.max().item())
            self._metrics[mode]["accuracy"].append((correct.sum() / pairs.sum()).item())
            self._metrics[mode]["margin"].append((margin.sum() / pairs.sum()).item())


class PromptGroupBatches:
    """A ``RewardTrainer`` mixin (before ``WeightedPairLoss`` in the bases) that takes the same rows
    as RewardTrainer (``prompt``, ``chosen``, ``rejected``, optional ``margin`` and ``weight``) and
    trains on prompt groups: a dataset row is a group, so ``per_device_train_batch_size`` counts
    prompts, and a step scores every response of its prompts once. Evaluation computes the loss and
    metrics only (Trainer's default without ``compute_metrics``): processes hold different numbers of
    responses, so per-response predictions could not be gathered across them."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001, ANN201
        import datasets

        if "response_ids" in dataset.column_names:
            return dataset
        try:
            records = tokenize_groups(group_rows(dataset.to_list()), processing_class, args.max_length)
        except ValueError as error:
            raise ValueError(f"{dataset_name} dataset: {error}") from None
        if not records:
            raise ValueError(f"{dataset_name} dataset: no pair fits max_length {args.max_length}: raise max_length")
        return datasets.Dataset.from_list(records)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(GROUP_COLUMNS)
