"""Comparing responses under one or more reward models: whole, thinking and answer rewards, where
the preference flips once the thinking is removed, and the per-token trajectories."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from core.accounts import Actor, Permission
from core.scoring.engine import Prompt, RewardScorer, ScoreResult
from storage.engine import Store
from storage.queries import ComparisonContent, load_comparison
from storage.models import RegisteredModel
from storage.registry import list_models, model_by_name

_cache: dict[str, RewardScorer] = {}
_cache_lock = threading.Lock()
MAX_CACHED_MODELS = 4


class UnknownModel(ValueError):
    pass


class UnknownComparison(ValueError):
    pass


def load_scorer(path: str) -> RewardScorer:
    """Load a reward model once per process and reuse it (the oldest is dropped past four)."""
    with _cache_lock:
        if path not in _cache:
            if len(_cache) >= MAX_CACHED_MODELS:
                _cache.pop(next(iter(_cache)))
            _cache[path] = RewardScorer(path)
        return _cache[path]


def comparison_for_inspection(store: Store, actor: Actor, comparison_id: int) -> ComparisonContent:
    """A stored comparison's prompt and completions, to score in the Inspect tab. Raises
    ``PermissionDenied`` for a role that may not inspect, ``UnknownComparison`` for a missing id."""
    actor.require(Permission.INSPECT)
    with store.read() as session:
        record = load_comparison(session, comparison_id)
    if record is None:
        raise UnknownComparison(f"there is no comparison {comparison_id}")
    return record


def registered_models(store: Store, actor: Actor) -> list[RegisteredModel]:
    """The registry, newest first: name, folder, base model, held-out accuracy."""
    actor.require(Permission.INSPECT)
    with store.read() as session:
        return list_models(session)


def registered_model_names(store: Store) -> list[str]:
    with store.read() as session:
        return [model.name for model in list_models(session)]


def resolve_model(store: Store, name_or_path: str) -> RewardScorer:
    """A registered model by name, else a local folder or hub id."""
    with store.read() as session:
        record = model_by_name(session, name_or_path)
    if record is not None:
        return load_scorer(record.path)
    if not name_or_path.strip():
        raise UnknownModel("choose a registered model or give a model folder")
    return load_scorer(str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().exists() else name_or_path)


@dataclass(frozen=True)
class ResponseScore:
    model: str
    response_index: int
    result: ScoreResult
    formatted_text: str
    max_length: int | None


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


def inspect_responses(models: dict[str, RewardScorer], prompt: Prompt, responses: list[str]) -> Inspection:
    if len(responses) < 2:
        raise ValueError("give at least two responses to compare")
    scores, flips = [], []
    for name, model in models.items():
        results = model.score_responses([(prompt, r) for r in responses], trajectory=model.is_decoder)
        for index, (response, result) in enumerate(zip(responses, results, strict=True)):
            scores.append(ResponseScore(name, index, result, model.format(prompt, response).text, model.max_length))
        for i, j in combinations(range(len(responses)), 2):
            whole = i if results[i].reward > results[j].reward else j
            answer = i if results[i].answer_reward > results[j].answer_reward else j
            if whole != answer:
                flips.append(Flip(name, i, j, whole, answer))
    return Inspection(scores, flips)
