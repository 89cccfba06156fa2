"""How the team labels: volume, speed, position bias, agreement on overlapping comparisons.

Agreement uses ``statsmodels``' implementations of Cohen's kappa (each pair of annotators on the
comparisons both labeled, averaged weighted by shared items) and Fleiss' kappa (the comparisons
with the most common number of raters, at least two). Skips are not judgements and are left out;
imported source labels are not people and are left out.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from core.accounts import Actor, Permission
from core.labeling.ranking_agreement import RankingAgreement, agreement_of
from core.labeling.step_agreement import StepAgreement, step_agreement
from storage.datasets import open_dataset_ids, require_dataset
from storage.engine import Store
from storage.queries import human_labels
from storage.ranking import ranking_dataset_ids, rankings_by_item
from storage.steps import step_item_ids, step_traces

CATEGORIES = ("a", "b", "tie", "both_bad")


@dataclass(frozen=True)
class AnnotatorStats:
    name: str
    labels: int
    median_seconds: float | None
    left_pick_rate: float | None  # of the a/b choices made with sides recorded


@dataclass(frozen=True)
class Disagreement:
    comparison_id: int
    prompt_excerpt: str
    votes: str


@dataclass(frozen=True)
class LabelComment:
    comparison_id: int
    annotator: str
    comment: str
    prompt_excerpt: str


@dataclass(frozen=True)
class TeamReport:
    annotators: list[AnnotatorStats]
    overlapping_comparisons: int
    percent_agreement: float | None
    cohens_kappa: float | None
    fleiss_kappa: float | None
    fleiss_raters: int | None
    disagreements: list[Disagreement]
    comments: list[LabelComment] = ()  # newest first
    ranking: RankingAgreement | None = None  # for ranking datasets among those reported
    steps: StepAgreement | None = None  # for steps datasets among those reported


def _finite(value: float) -> float | None:
    return None if value != value else float(value)  # NaN when every judgement is one category


def _cohens_kappa(by_comparison: dict[int, dict[str, str]]) -> float | None:
    import numpy as np
    from statsmodels.stats.inter_rater import cohens_kappa

    index = {c: i for i, c in enumerate(CATEGORIES)}
    tables: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros((4, 4)))
    for votes in by_comparison.values():
        for first, second in combinations(sorted(votes), 2):
            tables[(first, second)][index[votes[first]], index[votes[second]]] += 1
    weighted, total = 0.0, 0
    for table in tables.values():
        # statsmodels also computes a standard error, whose variance estimate can be negative on a
        # small table (a RuntimeWarning from sqrt); only kappa itself is used here.
        with np.errstate(invalid="ignore"):
            kappa = _finite(cohens_kappa(table).kappa)
        if kappa is not None:
            weighted += kappa * table.sum()
            total += table.sum()
    return weighted / total if total else None


def _fleiss_kappa(by_comparison: dict[int, dict[str, str]]) -> tuple[float | None, int | None]:
    import numpy as np
    from statsmodels.stats.inter_rater import fleiss_kappa

    sizes = [len(votes) for votes in by_comparison.values()]
    if not sizes:
        return None, None
    raters = statistics.mode(sizes)
    rows = [
        [list(votes.values()).count(category) for category in CATEGORIES]
        for votes in by_comparison.values()
        if len(votes) == raters
    ]
    if len(rows) < 2:
        return None, raters
    return _finite(fleiss_kappa(np.array(rows))), raters


def team_report(store: Store, actor: Actor, *, dataset: str | None = None, max_disagreements: int = 100,
                max_comments: int = 200) -> TeamReport:
    """The team's labeling statistics, of one dataset or of all; raises ``DatasetError`` for an
    unknown dataset."""
    actor.require(Permission.VIEW_TEAM)
    with store.read() as session:
        dataset_id = None if not dataset else require_dataset(session, dataset).id
        labels = human_labels(session, dataset_id)
        ranked_ids = ranking_dataset_ids(session, [dataset_id] if dataset_id else open_dataset_ids(session))
        rankings = rankings_by_item(session, ranked_ids) if ranked_ids else None
        reported = [dataset_id] if dataset_id else open_dataset_ids(session)
        traces = step_traces(session, reported, people_only=True) if step_item_ids(session, reported) else None
    per_person: dict[str, list] = defaultdict(list)
    by_comparison: dict[int, dict[str, str]] = defaultdict(dict)
    excerpts: dict[int, str] = {}
    for label in labels:
        per_person[label.annotator].append(label)
        # Rankings and step marks have their own agreement statistics (ranking_agreement, step_agreement).
        if label.choice not in ("skip", "ranked", "steps"):
            by_comparison[label.comparison_id][label.annotator] = label.choice
            excerpts[label.comparison_id] = label.prompt_excerpt

    annotators = []
    for name in sorted(per_person):
        own = per_person[name]
        seconds = [label.seconds_spent for label in own if label.seconds_spent is not None]
        sided = [label for label in own if label.choice in ("a", "b") and label.shown_left]
        annotators.append(
            AnnotatorStats(
                name,
                len(own),
                statistics.median(seconds) if seconds else None,
                sum(label.choice == label.shown_left for label in sided) / len(sided) if sided else None,
            )
        )

    overlapping = {cid: votes for cid, votes in by_comparison.items() if len(votes) >= 2}
    pairs = [(v1, v2) for votes in overlapping.values() for v1, v2 in combinations(votes.values(), 2)]
    fleiss, raters = _fleiss_kappa(overlapping)
    disagreements = [
        Disagreement(cid, excerpts[cid], ", ".join(f"{name}: {choice}" for name, choice in sorted(votes.items())))
        for cid, votes in sorted(overlapping.items())
        if len(set(votes.values())) > 1
    ][:max_disagreements]
    return TeamReport(
        annotators=annotators,
        overlapping_comparisons=len(overlapping),
        percent_agreement=sum(v1 == v2 for v1, v2 in pairs) / len(pairs) if pairs else None,
        cohens_kappa=_cohens_kappa(overlapping) if overlapping else None,
        fleiss_kappa=fleiss,
        fleiss_raters=raters,
        disagreements=disagreements,
        comments=[
            LabelComment(label.comparison_id, label.annotator, label.comment, label.prompt_excerpt)
            for label in sorted((label for label in labels if label.comment),
                                key=lambda label: (label.updated_at, label.comparison_id), reverse=True)
        ][:max_comments],
        ranking=agreement_of(rankings) if rankings is not None else None,
        steps=step_agreement(traces) if traces is not None else None,
    )
