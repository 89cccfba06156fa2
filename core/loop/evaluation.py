"""Seeing the loop: model versions against labels, and how the current model does on the labels
it had not seen (test, then train), per arm, with its calibration and the human ceiling."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.limits import MAX_ACQUISITION_ROWS_SHOWN, MAX_EVALUATED_PAIRS
from core.accounts import Actor, Permission
from core.loop.rescore import scorer_for
from core.loop.settings import LoopStatus, loop_status_of
from storage.datasets import require_dataset
from storage.engine import Store
from storage.queries import comparison_contents
from storage.registry import find_model


CALIBRATION_BINS = 10


@dataclass(frozen=True)
class VersionPoint:
    name: str
    labels: int  # pairs its training snapshot held
    heldout_accuracy: float | None
    promoted: bool  # the loop's model now
    created_at: str


@dataclass(frozen=True)
class ArmResult:
    arm: str  # "uncertainty", "random", or "before the loop"
    labels: int  # human labels on items of this arm
    fresh_pairs: int  # pairs labeled after the evaluated model was trained
    accuracy: float | None  # of the evaluated model on those pairs


@dataclass
class LoopReport:
    status: LoopStatus
    versions: list[VersionPoint]
    arms: list[ArmResult]
    evaluated_model: str | None = None
    calibration: list[dict[str, float]] = field(default_factory=list)  # {"predicted", "observed", "pairs"}
    human_ceiling: float | None = None  # agreement of two humans on pairs with 2+ votes
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier evaluations
    # Why the last rescore served each chosen pair (acquisition set): the newest MAX_ACQUISITION_ROWS_SHOWN prompts.
    chosen_pairs: list[ChosenPair] = field(default_factory=list)
    chosen_total: int = 0  # chosen pairs in that rescore, shown or not
    chosen_by_job: int | None = None  # the rescore job that chose them


@dataclass(frozen=True)
class ChosenPair:
    item_id: int
    prompt_id: int
    pair: tuple[int, int]  # completion ids
    rule: str
    why: str  # the rule's numbers (core.loop.acquisition.explain_choice)
    held_back: int  # the prompt's other open pairs, served after every chosen pair
    still_open: bool  # not labeled (or archived) since


def loop_report(store: Store, actor: Actor, dataset: str | None, *, evaluate: bool = False) -> LoopReport | None:
    """The loop of ``dataset``: its settings, the model versions trained on it (held-out accuracy
    against labels), labels per arm and, with ``evaluate``, how its current model does on the pairs
    labeled after it was trained (never seen in training), per arm, with its calibration
    (reliability bins of sigma(r_a - r_b) against the humans' share of votes for a) and the
    human-human agreement ceiling; an evaluation is stored, so the page shows its history. None
    without a dataset (after the permission checks)."""
    from storage.loop import arm_label_counts, dataset_versions, loop_evaluations

    actor.require(Permission.VIEW_TEAM)
    if evaluate:
        actor.require(Permission.INSPECT)
    if not dataset:
        return None  # the page asks for a dataset first
    with store.read() as session:
        target = require_dataset(session, dataset)
        status = loop_status_of(session, target)
        records = dataset_versions(session, dataset)
        counts = arm_label_counts(session, target.id)
        history = loop_evaluations(session, target.id)
    current = status.promoted_model
    versions = [VersionPoint(r.name, r.n_pairs or 0, r.eval_accuracy, r.name == current, r.created_at.isoformat())
                for r in records]
    report = LoopReport(status, versions, [ArmResult(arm, n, 0, None) for arm, n in counts.items()], history=history)
    _read_chosen_pairs(store, dataset, report)
    if evaluate and current:
        _evaluate(store, target.id, dataset, current, report)
    return report


def _read_chosen_pairs(store: Store, dataset: str, report: LoopReport) -> None:
    """The last rescore job's choices (its acquisition.json), newest prompts first, with whether each is still open."""
    import json

    from storage.jobs import job_dir
    from core.loop.acquisition import explain_choice
    from storage.loop import last_succeeded_loop_job, open_item_flags

    with store.read() as session:
        job = last_succeeded_loop_job(session, dataset, "rescore")
    record_file = None if job is None else job_dir(store, job.id) / "acquisition.json"
    if record_file is None or not record_file.is_file():
        return  # no rescore yet, or one that served every pair
    chosen = json.loads(record_file.read_text())["chosen"]
    newest = sorted(chosen.items(), key=lambda kv: -kv[1]["prompt_id"])[:MAX_ACQUISITION_ROWS_SHOWN]
    with store.read() as session:
        still_open = open_item_flags(session, [int(item) for item, _ in newest])
    report.chosen_by_job, report.chosen_total = job.id, len(chosen)
    report.chosen_pairs = [ChosenPair(int(item), entry["prompt_id"], tuple(entry["pair"]), entry["rule"],
                                      explain_choice(entry), len(entry.get("held_back", [])),
                                      still_open.get(int(item), False))
                           for item, entry in newest]


def evaluate_before_retrain(store: Store, dataset: str) -> str | None:
    """Test, then train: when a retrain of ``dataset`` finishes, the model it may replace is scored on
    the pairs labeled since that model was trained, which it never saw, per arm (stored, so the loop
    page draws each arm's accuracy against labels, one point per version). Returns a summary for the
    job's log, or None when the dataset has no promoted model yet."""
    from storage.loop import arm_label_counts

    with store.read() as session:
        target = require_dataset(session, dataset)
        status = loop_status_of(session, target)
        counts = arm_label_counts(session, target.id)
    if not status.promoted_model:
        return None
    report = LoopReport(status, [], [ArmResult(arm, n, 0, None) for arm, n in counts.items()])
    _evaluate(store, target.id, dataset, status.promoted_model, report)
    arms = ", ".join(f"{a.arm} arm {a.accuracy:.3f} on {a.fresh_pairs}" if a.accuracy is not None
                     else f"{a.arm} arm n/a" for a in report.arms)
    return f"{status.promoted_model} on the labels it had not seen: {arms or 'none yet'}"


def _evaluate(store: Store, dataset_id: int, dataset: str, model: str, report: LoopReport) -> None:
    import math

    from storage.loop import fresh_votes, record_evaluation

    with store.read() as session:
        record = find_model(session, model)
        votes, arms = fresh_votes(session, dataset_id, since=record.created_at, limit=MAX_EVALUATED_PAIRS)
        contents = comparison_contents(session, list(votes))
    pairs = [cid for cid in votes if cid in contents and any(v in ("a", "b") for v in votes[cid])]
    report.evaluated_model = model
    agreements = [_pair_agreement(votes[cid]) for cid in pairs if sum(v in ("a", "b") for v in votes[cid]) >= 2]
    report.human_ceiling = sum(agreements) / len(agreements) if agreements else None
    if pairs:
        scorer = scorer_for(store, model)
        examples = []
        for cid in pairs:
            content = contents[cid]
            prompt = content.prompt_messages if content.prompt_messages is not None else (content.prompt_text or "")
            examples += [(prompt, content.a_text), (prompt, content.b_text)]
        results = scorer.score_responses(examples)
    else:
        results = []
    by_arm: dict[str, list[bool]] = {}
    bins: list[list[tuple[float, float]]] = [[] for _ in range(CALIBRATION_BINS)]
    for index, cid in enumerate(pairs):
        if results[2 * index].exceeds_max_length or results[2 * index + 1].exceeds_max_length:
            continue  # a pair the model cannot take (over its trained max_length) counts in no figure
        r_a, r_b = results[2 * index].reward, results[2 * index + 1].reward
        cast = [v for v in votes[cid] if v in ("a", "b")]
        share_a = cast.count("a") / len(cast)
        p_a = 1 / (1 + math.exp(-(r_a - r_b)))
        bins[min(CALIBRATION_BINS - 1, int(p_a * CALIBRATION_BINS))].append((p_a, share_a))
        if share_a != 0.5:
            by_arm.setdefault(arms[cid], []).append((r_a > r_b) == (share_a > 0.5))
    report.calibration = [{"predicted": sum(p for p, _ in b) / len(b), "observed": sum(o for _, o in b) / len(b),
                           "pairs": len(b)} for b in bins if b]
    report.arms = [ArmResult(a.arm, a.labels, len(by_arm.get(a.arm, [])),
                             sum(by_arm[a.arm]) / len(by_arm[a.arm]) if by_arm.get(a.arm) else None)
                   for a in report.arms]
    with store.write() as session:
        record_evaluation(session, dataset_id, model, report)


def _pair_agreement(votes: list[str]) -> float:
    """The chance that two different annotators of a pair gave the same a/b vote."""
    cast = [v for v in votes if v in ("a", "b")]
    n, same = len(cast), cast.count("a") * (cast.count("a") - 1) + cast.count("b") * (cast.count("b") - 1)
    return same / (n * (n - 1))
