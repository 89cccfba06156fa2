"""What the reward server computes for a request, whatever API it came through.

Formatting is the model's: every completion goes through ``RewardScorer.format`` (and
``format_segments`` for thinking/answer rewards), the engine's RewardTrainer formatting with the
chat template from the model's folder; there is no second formatter here. A completion whose
formatted example is longer than a model's ``max_length`` (the length it was trained with) is not
scored: its reward is None and ``over_max_length`` is set, never a reward of a truncated text.

Request handlers call ``prepare_*`` (formatting, in a worker thread), then ``score`` (the batcher
scores the sequences of many requests together), which returns one ``CompletionScore`` per
completion: each model's rewards normalized (``--normalize``) and reduced (mean or min) as
``core.serving.reward_fn.combine_rewards`` does in process.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from core.serving.batching import DynamicBatcher, ScoredWork, ScoringWork
from core.scoring.engine import FormattedExample, Prompt, SegmentedExample, segment_rewards, segment_sequences
from core.serving.reward_fn import combine_rewards
from core.serving.served_models import ServedModel
from core.serving.request_bodies import BadRequest, ClassifyRequest
from core.scoring.steps import format_trace
from core.steps import StepError, StepRule, prefix_ends, split_steps


class ModelFailure(RuntimeError):
    """The model produced something that is not a reward (NaN, infinity): a server error, not the client's."""


@dataclass(frozen=True)
class CompletionScore:
    reward: float | None
    thinking_reward: float | None  # None without a thinking block (or when not asked)
    answer_reward: float | None
    over_max_length: bool
    n_tokens: int | None  # of the formatted example, under the first model (None: over max_length by its prefix)
    trajectory: list[tuple[str, float]] | None = None
    # The reward's spread over an ensemble (``RewardService.spread_kind``); None without one or without a reward.
    spread: float | None = None
    steps: list[str] | None = None  # the completion's steps, when per-step rewards were asked for
    step_rewards: list[float] | None = None  # the reward on the prefix ending at each step (None: over max_length)


@dataclass
class PreparedRequest:
    examples: list[list[SegmentedExample]]  # per model, per completion
    over_max_length: list[bool]
    kept: list[int]  # the completions that are scored
    segments: bool
    trajectory: bool
    work: ScoringWork
    steps: list[list[str]] | None = None  # per completion, its step texts (when asked)


class RewardService:
    def __init__(self, models: Sequence[ServedModel], reduction: str, batcher: DynamicBatcher) -> None:
        self.models, self.reduction, self.batcher = list(models), reduction, batcher
        self.normalizers = [model.normalizer for model in self.models]
        self.name = "+".join(model.reference for model in self.models)
        # What a reward's spread is taken over: the one model's ensemble heads, or the models of an ensemble.
        self.spread_kind = ("heads" if self.models[0].heads is not None else
                            "models" if len(self.models) > 1 else None)

    # ----- formatting (run in a worker thread: tokenizing is CPU work) -----------------------------
    def prepare_completions(self, prompts: Sequence[Prompt], completions: Sequence[str], *, segments: bool = False,
                            trajectory: bool = False, steps: StepRule | None = None) -> PreparedRequest:
        """``prompts[i] + completions[i]`` formatted as each model was trained; with ``steps``, each completion split
        by the rule, and its step reads (``core.scoring.steps``)."""
        if trajectory or steps is not None:
            self._require_trajectories("steps" if steps is not None else "trajectory")
        spans = []
        if steps is not None:
            for i, completion in enumerate(completions):
                try:
                    spans.append(split_steps(completion, steps))
                except StepError as error:
                    raise BadRequest(f"completions[{i}]: {error}") from None
        pairs = list(zip(prompts, completions, strict=True))
        surely_over = self._surely_over([[*_prompt_texts(p), c] for p, c in pairs])
        if segments:
            examples = [[_NOT_FORMATTED if surely_over[i] else model.scorer.format_segments(p, c)
                         for i, (p, c) in enumerate(pairs)] for model in self.models]
        else:
            examples = [[_NOT_FORMATTED if surely_over[i] else _whole(model.scorer.format(p, c))
                         for i, (p, c) in enumerate(pairs)] for model in self.models]
        prepared = self._prepare(examples, segments=segments, trajectory=trajectory, surely_over=surely_over)
        if steps is not None:
            tokenizer = self.models[0].scorer.tokenizer
            for i in prepared.kept:
                trace = format_trace(tokenizer, prompts[i], completions[i],
                                     prefix_ends(len(completions[i]), spans[i]))
                prepared.work.step_reads.append((trace.ids, trace.step_positions))
            prepared.steps = [[c[s.start:s.end] for s in spans_i] for c, spans_i in zip(completions, spans, strict=True)]
        return prepared

    def prepare_queries(self, queries: Sequence[str]) -> PreparedRequest:
        """Full texts (prompt and response joined, OpenRLHF's ``query``) formatted as standard examples:
        RewardTrainer's rule, EOS appended when missing."""
        surely_over = self._surely_over([[query] for query in queries])
        return self._prepare([[_NOT_FORMATTED if surely_over[i] else _whole(model.scorer.format("", query))
                               for i, query in enumerate(queries)] for model in self.models], surely_over=surely_over)

    def _surely_over(self, texts_per_example: list[list[str]]) -> list[bool]:
        """Examples over some model's max_length, found from prefixes (``RewardScorer.surely_over_max_length``)
        before anything is tokenized in full: such an example gets no reward anyway, and a body of 256
        texts of 200,000 characters would otherwise be tokenized whole (gigabytes across a few requests)."""
        return [any(model.scorer.surely_over_max_length(texts) for model in self.models) for texts in texts_per_example]

    def prepare_classify(self, request: ClassifyRequest) -> PreparedRequest:
        """vLLM's ``/classify`` inputs: texts tokenized as given (the caller formatted them, as verl
        does with the reward model's chat template), token ids as given, or one chat formatted by
        the model's chat template."""
        if request.messages is not None:
            *prompt, reply = request.messages
            return self._prepare([[_whole(model.scorer.format(prompt, reply["content"]))] for model in self.models])
        if request.texts is not None:
            surely_over = self._surely_over([[text] for text in request.texts])
            return self._prepare([[_NOT_FORMATTED if surely_over[i] else
                                   _whole(_tokenized(model, text, request.add_special_tokens))
                                   for i, text in enumerate(request.texts)] for model in self.models],
                                 surely_over=surely_over)
        if len(self.models) > 1:
            raise BadRequest("input: token ids belong to one model's tokenizer, and this server reduces "
                             f"{len(self.models)} models; send texts or messages")
        vocabulary = self.models[0].scorer.hf_model.get_input_embeddings().num_embeddings
        for i, ids in enumerate(request.token_ids):
            if (bad := next((k for k, token in enumerate(ids) if token >= vocabulary), None)) is not None:
                raise BadRequest(f"input[{i}][{bad}]: token id {ids[bad]} is outside the model's vocabulary "
                                 f"(size {vocabulary})")
        return self._prepare([[_whole(FormattedExample(ids, "", None, [])) for ids in request.token_ids]])

    def prepare_token_scores(self, request: ClassifyRequest) -> PreparedRequest:
        """vLLM's ``/pooling`` with ``task: token_classify``: the inputs of ``prepare_classify``, and for each one the
        score head's output at every token (one causal forward each), as PRM clients read step scores."""
        self._require_trajectories("pooling")
        prepared = self.prepare_classify(request)
        for i in prepared.kept:
            ids = prepared.examples[0][i].whole.ids
            prepared.work.step_reads.append((ids, list(range(len(ids)))))
        return prepared

    def _require_trajectories(self, field: str = "trajectory") -> None:
        if len(self.models) > 1:
            raise BadRequest(f"{field}: trajectories are per model's tokens (step rewards too), and this server reduces "
                             f"{len(self.models)} models; ask a server of one model")
        if not self.models[0].scorer.is_decoder:
            raise BadRequest(f"{field}: the model is an encoder (bidirectional): a prefix's reward cannot be read off "
                             "the whole text")

    def _prepare(self, examples: list[list[SegmentedExample]], *, segments: bool = False,
                 trajectory: bool = False, surely_over: list[bool] | None = None) -> PreparedRequest:
        count = len(examples[0])
        over = [(surely_over is not None and surely_over[i])
                or any(_too_long(model, per_model[i].whole) for model, per_model in zip(self.models, examples, strict=True))
                for i in range(count)]
        kept = [i for i in range(count) if not over[i]]
        sequences = []
        for per_model in examples:
            chosen = [per_model[i] for i in kept]
            sequences.append(segment_sequences(chosen) if segments else [example.whole.ids for example in chosen])
        steps = [examples[0][i].whole for i in kept] if trajectory else []
        return PreparedRequest(examples, over, kept, segments, trajectory, ScoringWork(sequences, steps))

    # ----- scoring -------------------------------------------------------------------------------
    async def score(self, prepared: PreparedRequest) -> list[CompletionScore]:
        """The request's scores, once the batcher has scored it with others. Raises ``ServerBusy``
        (queue full), ``ModelFailure`` (non-finite rewards) or what the model raised."""
        scored = await asyncio.wrap_future(self.batcher.submit(prepared.work))
        return self.assemble(prepared, scored)

    def assemble(self, prepared: PreparedRequest, scored: ScoredWork) -> list[CompletionScore]:
        count = len(prepared.over_max_length)
        triples: list[list[tuple[float, float | None, float | None] | None]] = []
        for model, per_model, rewards in zip(self.models, prepared.examples, scored.rewards, strict=True):
            if not all(math.isfinite(reward) for reward in rewards):
                raise ModelFailure(f"{model.reference} returned a non-finite reward: the model is broken (NaN weights, "
                                   "or a dtype that overflows)")
            kept_examples = [per_model[i] for i in prepared.kept]
            values = segment_rewards(kept_examples, rewards) if prepared.segments else [(r, None, r) for r in rewards]
            full: list[tuple[float, float | None, float | None] | None] = [None] * count
            for i, value in zip(prepared.kept, values, strict=True):
                full[i] = value
            triples.append(full)

        def combined(part: int) -> list[float | None]:
            return combine_rewards([[t[part] if t else None for t in full] for full in triples], self.reduction,
                                   self.normalizers)

        rewards, thinking, answers = combined(0), combined(1), combined(2)
        spreads = self._spreads(prepared, scored, triples)
        trajectories: list[list[tuple[str, float]] | None] = [None] * count
        normalizer = self.normalizers[0]
        for i, (steps, _) in zip(prepared.kept, scored.trajectories, strict=False):
            trajectories[i] = [(token, normalizer(value) if normalizer else value) for token, value in steps]
        step_rewards: list[list[float] | None] = [None] * count
        for i, values in zip(prepared.kept, scored.step_rewards, strict=False):
            step_rewards[i] = list(values)
        return [
            CompletionScore(rewards[i], thinking[i] if prepared.segments else None,
                            answers[i] if prepared.segments else None, prepared.over_max_length[i],
                            _token_count(prepared.examples[0][i]), trajectories[i], spreads[i],
                            prepared.steps[i] if prepared.steps is not None else None, step_rewards[i])
            for i in range(count)
        ]

    def _spreads(self, prepared: PreparedRequest, scored: ScoredWork, triples: list) -> list[float | None]:
        """Each reward's spread: the population standard deviation over the ensemble's members of the reward they
        give. Heads (``core.loop.ensemble``): member k's reward is r(x) + delta_k . f(x), so the spread is that of
        delta_k . f(x) over k (f: the reward-token features of the same forward pass), divided by the normalizer's
        std when rewards are normalized. Several models: over their (normalized) rewards."""
        count = len(prepared.over_max_length)
        spreads: list[float | None] = [None] * count
        if self.spread_kind == "heads":
            import torch

            model, features = self.models[0], scored.features[0]
            scale = model.normalizer.std if model.normalizer is not None else 1.0
            # The whole examples' sequences come first, in the order of ``kept`` (``segment_sequences``).
            for j, i in enumerate(prepared.kept):
                offsets = model.heads @ features[j]
                spreads[i] = float(offsets.std(unbiased=False)) / scale
        elif self.spread_kind == "models":
            for i in prepared.kept:
                values = [full[i][0] for full in triples]
                values = [n(v) if n is not None else v for n, v in zip(self.normalizers, values, strict=True)]
                spreads[i] = statistics.pstdev(values)
        return spreads


# The place of an example found over max_length from a prefix: never tokenized in full, so no token count.
_NOT_FORMATTED = SegmentedExample(FormattedExample([], "", None, []), None, None)


def _token_count(example: SegmentedExample) -> int | None:
    return None if example is _NOT_FORMATTED else len(example.whole.ids)


def _prompt_texts(prompt: Prompt) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    return [str(message.get("content", "")) for message in prompt]


def _whole(example: FormattedExample) -> SegmentedExample:
    return SegmentedExample(example, None, None)


def _tokenized(model: ServedModel, text: str, add_special_tokens: bool) -> FormattedExample:
    return FormattedExample(list(model.scorer.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]),
                            text, None, [])


def _too_long(model: ServedModel, example: FormattedExample) -> bool:
    limit = model.scorer.max_length
    return bool(limit) and len(example.ids) > limit
