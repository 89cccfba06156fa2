"""Comparing responses under one or more reward models: whole, thinking and answer rewards, where
the preference flips once the thinking is removed, and the per-token trajectories."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from core.accounts import Actor, Permission, PermissionDenied
from core.preferences.votes import fold_votes
from core.limits import MAX_CACHED_MODELS, MAX_INSPECT_CHARS, MAX_INSPECT_RESPONSES, MAX_INSPECT_TOKENS
from core.model_folders import folder_under_models_root
from core.scoring.engine import ModelLoadError, Progress, Prompt, RewardScorer, ScoreResult
from core.scoring.steps import StepScores, score_steps
from core.segments import split_thinking
from core.steps import StepError, StepRule, first_error, prefix_ends, split_steps
from core.scoring.model_names import (  # noqa: F401 (UnknownModel: re-exported)
    UnknownModel,
    model_folder_for,
    registered_references,
    trained_max_length,
)
from storage.engine import Store
from storage.models import RegisteredModel, Role
from core.preferences.rankings import LETTERS, consensus_groups
from storage.datasets import dataset_id_of
from storage.queries import ComparisonContent, load_comparison, votes_by_comparison
from storage.ranking import completion_texts, rankings_by_item, slots_of
from storage.registry import list_models
from storage.settings import get_setting, set_setting
from storage.steps import is_steps_item, step_rule_of, step_traces

log = logging.getLogger(__name__)

_cache: dict[tuple[str, int | None], RewardScorer] = {}
_cache_lock = threading.Lock()


class UnknownComparison(ValueError):
    pass


def load_scorer(path: str, max_length: int | None = None) -> RewardScorer:
    """Load a reward model once per process and reuse it (the oldest is dropped past four).
    ``max_length``: the length the model was trained to, which flags longer inputs (default: the
    tokenizer's limit)."""
    key = (path, max_length)
    with _cache_lock:
        if key not in _cache:
            if len(_cache) >= MAX_CACHED_MODELS:
                _cache.pop(next(iter(_cache)))
            _cache[key] = RewardScorer(path, max_length=max_length)
        return _cache[key]


@dataclass(frozen=True)
class StoredComparison:
    """A stored comparison as Inspect loads it: the whole prompt (every chat turn) and what people said."""

    content: ComparisonContent
    human_verdict: str  # "a", "b", "tie", "both_bad", "skipped", "no_majority", or "" without labels
    votes: str  # "ann: a · bob: a"; for a ranking item "ann: C > A=D > B · bob: ..."
    # For a ranking item, every completion in imported order (A, B, C... in Inspect), and the
    # humans' consensus order in those letters ("" without rankings); empty for a pair.
    ranked_responses: tuple[str, ...] = ()
    consensus: str = ""
    # For a trace of a steps dataset: the dataset's split rule and each annotator's first wrong step (from 0;
    # None = no step marked wrong), so Inspect can set the model's first doubted step against the humans'.
    step_rule: str | None = None
    human_first_errors: dict[str, int | None] | None = None


def comparison_for_inspection(store: Store, actor: Actor, comparison_id: int) -> StoredComparison:
    """A stored comparison's prompt and completions, with the humans' verdict, to score in the
    Inspect tab. Raises ``PermissionDenied`` for a role that may not inspect, ``UnknownComparison``
    for a missing id."""
    require_inspect(store, actor, stored_data=True)
    with store.read() as session:
        record = load_comparison(session, comparison_id)
        votes = votes_by_comparison(session, comparison_ids=[comparison_id]).get(comparison_id, [])
        slots = slots_of(session, [comparison_id]).get(comparison_id)
        trace = step_traces(session, [dataset_id_of(session, comparison_id)], people_only=True) \
            if record is not None and is_steps_item(session, comparison_id) else None
        rule = step_rule_of(session, comparison_id) if trace is not None else None
        if record is not None and slots:
            texts = completion_texts(session, slots)
            rankings = rankings_by_item(session, [dataset_id_of(session, comparison_id)]).get(comparison_id, [])
    if record is None:
        raise UnknownComparison(f"there is no comparison {comparison_id}")
    if trace is not None:
        votes_of = next((t.votes for t in trace if t.item_id == comparison_id), {})
        firsts = {name: first_error(vote["marks"]) for name, vote in sorted(votes_of.items())}
        said = " · ".join(f"{name}: {'step ' + str(k + 1) if k is not None else 'no wrong step'}"
                          for name, k in firsts.items())
        return StoredComparison(record, "steps" if firsts else "", said, step_rule=rule or "paragraphs",
                                human_first_errors=firsts)
    if slots:
        letter = {completion_id: LETTERS[i] for i, completion_id in enumerate(slots)}

        def in_letters(groups: list[list[int]]) -> str:
            return " > ".join("=".join(sorted(letter[c] for c in group)) for group in groups)

        said = " · ".join(f"{r.annotator}: {in_letters(r.groups)}{' (all unacceptable)' if r.all_bad else ''}"
                          for r in rankings)
        return StoredComparison(record, "ranked" if rankings else "", said,
                                tuple(texts[c][0] for c in slots),
                                in_letters(consensus_groups(rankings, slots)) if rankings else "")
    verdict = fold_votes(votes).outcome if votes else ""
    return StoredComparison(record, verdict, " · ".join(f"{vote.annotator}: {vote.choice}" for vote in votes))


def chat_prompt(text: str) -> list[dict[str, str]]:
    """The chat prompt typed in Inspect: a JSON list of ``{"role", "content"}`` messages (as Load
    from store fills it, every turn kept), or plain text taken as one user message. Raises
    ``InspectionRefused`` for a JSON list that is not messages."""
    stripped = (text or "").strip()
    if not stripped.startswith("["):
        return [{"role": "user", "content": text or ""}]
    try:
        messages = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise InspectionRefused(f"the chat prompt looks like JSON but is not valid: {error}") from None
    roles = ("system", "developer", "user", "assistant", "tool")
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and m.get("role") in roles and isinstance(m.get("content"), str) for m in messages
    ):
        raise InspectionRefused(
            f'a chat prompt in JSON is a list of {{"role": ..., "content": "..."}} messages, roles among {", ".join(roles)}'
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def registered_models(store: Store, actor: Actor) -> list[RegisteredModel]:
    """The registry, newest first: name, folder, base model, held-out accuracy."""
    require_inspect(store, actor, stored_data=False)
    with store.read() as session:
        return list_models(session)


def model_choices(store: Store, actor: Actor) -> list[str]:
    """The registered models as names that each load that one model (``name@v1`` for a first version
    with later ones, whose plain name means the newest), newest first."""
    require_inspect(store, actor, stored_data=False)
    return registered_references(store)


def require_inspect(store: Store, actor: Actor, *, stored_data: bool) -> None:
    """Engineers and admins may inspect anything; annotators only when an admin allowed it (setting
    ``annotators_may_inspect``), and never stored data (a comparison, diagnostics): that would show
    them the model's opinion of their own queue. Raises ``PermissionDenied``."""
    if actor.can(Permission.INSPECT):
        return
    if not stored_data and actor.role == Role.ANNOTATOR.value:
        with store.read() as session:
            if get_setting(session, "annotators_may_inspect"):
                return
    actor.require(Permission.INSPECT)


def may_inspect(store: Store, actor: Actor) -> bool:
    """Whether the Inspect tab is for this actor (pasted text; stored data needs more)."""
    try:
        require_inspect(store, actor, stored_data=False)
    except PermissionDenied:
        return False
    return True


def annotators_may_inspect(store: Store) -> bool:
    with store.read() as session:
        return bool(get_setting(session, "annotators_may_inspect"))


def allow_annotators_to_inspect(store: Store, actor: Actor, allowed: bool) -> None:
    """Let annotators use the Inspect tab on text they paste (never stored data), or not."""
    actor.require(Permission.CHANGE_SETTINGS)
    with store.write() as session:
        set_setting(session, "annotators_may_inspect", int(bool(allowed)))


def resolve_model(store: Store, actor: Actor, name: str) -> RewardScorer:
    """A registered model (``name@vN``, or a plain name's newest version), else a model folder under
    the models folder (by path, absolute or relative to it); never the hub. Raises
    ``PermissionDenied``, ``UnknownModel`` (listing the registered names, and the same whether or not
    a path outside the models folder exists) or ``ModelLoadError``."""
    require_inspect(store, actor, stored_data=False)
    folder = model_folder_for(store, name, local_folder=lambda path: folder_under_models_root(store, path))
    try:
        return load_scorer(str(folder), trained_max_length(store, name))
    except ModelLoadError:
        raise
    except Exception:  # noqa: BLE001 (a corrupt folder raises anything: pickle, safetensors, json errors)
        log.exception("loading model %s failed", name)
        raise ModelLoadError(f"cannot load {name!r}: its folder does not hold a model this app can read "
                             "(the server log has the details)") from None


class InspectionRefused(ValueError):
    """A request over one of the inspection caps; the message names the cap."""


def inspect_with_models(store: Store, actor: Actor, model_names: list[str], prompt: Prompt,
                        responses: list[str], *, progress: Progress | None = None,
                        step_rule: str | None = None) -> Inspection:
    """Score ``responses`` to ``prompt`` under each named model, within the caps of ``core.limits``
    (checked before any model runs). Raises ``PermissionDenied``, ``InspectionRefused``,
    ``UnknownModel``, ``ModelLoadError`` or ``ScoringCancelled`` (from ``progress``)."""
    require_inspect(store, actor, stored_data=False)
    if not model_names:
        raise InspectionRefused("choose a registered model or give a model folder")
    if len(model_names) > MAX_CACHED_MODELS:
        raise InspectionRefused(f"choose at most {MAX_CACHED_MODELS} models at once")
    if len(responses) < (1 if step_rule is not None else 2):
        raise InspectionRefused("give at least two responses" if step_rule is None else "give a response")
    rule = None
    if step_rule is not None:
        try:
            rule = StepRule.parse(step_rule)
        except StepError as error:
            raise InspectionRefused(str(error)) from None
        for index, response in enumerate(responses):
            try:
                split_steps(response, rule)
            except StepError as error:
                raise InspectionRefused(f"response {LETTERS[index]}: {error}") from None
    if len(responses) > MAX_INSPECT_RESPONSES:
        raise InspectionRefused(f"give at most {MAX_INSPECT_RESPONSES} responses at once")
    texts = [("the prompt", _prompt_text(prompt))] + [(f"response {i + 1}", r) for i, r in enumerate(responses)]
    for what, text in texts:
        if len(text) > MAX_INSPECT_CHARS:
            raise InspectionRefused(f"{what} is {len(text):,} characters; Inspect takes at most {MAX_INSPECT_CHARS:,}")
    models = {name: resolve_model(store, actor, name) for name in model_names}
    for name, model in models.items():
        for index, response in enumerate(responses):
            n_tokens = len(model.format(prompt, response).ids)
            if n_tokens > MAX_INSPECT_TOKENS:
                raise InspectionRefused(
                    f"response {index + 1} is {n_tokens:,} tokens with its prompt under {name}; Inspect scores "
                    f"at most {MAX_INSPECT_TOKENS:,} tokens per response ($REWARDLAB_MAX_INSPECT_TOKENS)"
                )
    return inspect_responses(models, prompt, responses, progress=progress, step_rule=rule)


def _prompt_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "".join(str(m.get("content", "")) for m in prompt)


@dataclass(frozen=True)
class ResponseScore:
    model: str
    response_index: int
    result: ScoreResult  # rewards None when the response is over the model's max_length (never scored)
    formatted_text: str
    max_length: int | None
    # Over max_length only: the reward of prompt + answer alone when that fits, shown labelled as such and
    # used in no verdict (the whole response, what training would see, gets no reward).
    answer_alone_reward: float | None = None
    # With steps asked for (a decoder model, within max_length): each step's score and where it is read, in
    # response tokens (the trajectory's x axis).
    step_scores: StepScores | None = None
    step_tokens: list[int] | None = None


@dataclass(frozen=True)
class Flip:
    model: str
    first: int
    second: int
    whole_prefers: int  # index of the preferred response by reward
    answer_prefers: int  # ... by answer reward (thinking removed)


@dataclass(frozen=True)
class Inspection:
    scores: list[ResponseScore]
    flips: list[Flip]
    pairs_compared: int = 0  # (model, pair of responses) with whole and answer rewards on both sides
    left_out: list[str] = field(default_factory=list)  # why a response got no reward under a model


def inspect_responses(models: dict[str, RewardScorer], prompt: Prompt, responses: list[str], *,
                      progress: Progress | None = None, step_rule: StepRule | None = None) -> Inspection:
    """Score each response under each model. One rule for what a model can score, as ``score``, ``eval`` and
    the reward server apply it: a response whose example (prompt + response, formatted) is longer than the
    model's max_length gets no reward, no segment rewards and no trajectory, and is left out of every flip;
    ``left_out`` says which and why. Where its answer alone fits, that reward is given apart, labelled."""
    if len(responses) < (1 if step_rule is not None else 2):
        raise ValueError("give at least two responses to compare")
    scores, flips, left_out, compared = [], [], [], 0
    for number, (name, model) in enumerate(models.items()):
        # Each model's share of the progress bar, in turn.
        share = (lambda done, n=number: progress((n + done) / len(models))) if progress else None
        formatted = [model.format(prompt, r) for r in responses]
        fits = [not (model.max_length and len(f.ids) > model.max_length) for f in formatted]
        scored = iter(model.score_responses([(prompt, r) for r, ok in zip(responses, fits, strict=True) if ok],
                                            trajectory=model.is_decoder, progress=share))
        results: list[ScoreResult] = []
        for index, (response, example, ok) in enumerate(zip(responses, formatted, fits, strict=True)):
            if ok:
                results.append(next(scored))
                steps, at = _step_scores(model, prompt, response, example, step_rule)
                scores.append(ResponseScore(name, index, results[-1], example.text, model.max_length,
                                            step_scores=steps, step_tokens=at))
                continue
            results.append(ScoreResult(None, None, None, len(example.ids), True))
            left_out.append(f"response {LETTERS[index]} under {name}: {len(example.ids):,} tokens with its prompt, "
                            f"over the model's max_length {model.max_length:,}, so it gets no reward")
            scores.append(ResponseScore(name, index, results[-1], example.text, model.max_length,
                                        _answer_alone(model, prompt, response)))
        for i, j in combinations(range(len(responses)), 2):
            a, b = results[i], results[j]
            if None in (a.reward, b.reward, a.answer_reward, b.answer_reward):
                continue
            compared += 1
            whole = i if a.reward > b.reward else j
            answer = i if a.answer_reward > b.answer_reward else j
            if whole != answer:
                flips.append(Flip(name, i, j, whole, answer))
    return Inspection(scores, flips, compared, left_out)


def _step_scores(model: RewardScorer, prompt: Prompt, response: str, example: Any,
                 rule: StepRule | None) -> tuple[StepScores | None, list[int] | None]:
    """The response's step scores under ``model`` (one forward) and their places in response tokens; None without
    steps asked for, for an encoder, or for a response the model cannot take."""
    if rule is None or not model.is_decoder or example.response_tokens is None:
        return None, None
    spans = split_steps(response, rule)
    scored = score_steps(model, [(prompt, response, prefix_ends(len(response), spans))])[0]
    if scored.over_max_length:
        return None, None
    start = example.response_tokens[0]
    return scored, [position - start for position in scored.step_positions]


def _answer_alone(model: RewardScorer, prompt: Prompt, response: str) -> float | None:
    """The reward of prompt + the answer (the response after its last ``</think>``) when that fits the model's
    max_length and differs from the whole response; else None."""
    thinking, answer = split_thinking(response)
    if thinking is None:
        return None
    example = model.format(prompt, answer)
    if model.max_length and len(example.ids) > model.max_length:
        return None
    return model.score_responses([(prompt, answer)])[0].reward
