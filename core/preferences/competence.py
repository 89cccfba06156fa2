"""Annotator models: how far each annotator can be trusted, and what each pair's labels mean once that is known.

Majority vote counts every label alike: a careless or adversarial annotator weighs as much as the best
one, and two people who disagree leave a pair undecided. An annotator model weighs each label by its
author's estimated competence, fitted jointly with the pairs' true preferences by EM (crowd-kit's
implementations: a tested EM beats one retyped here):

* ``dawid-skene`` (Dawid & Skene 1979): each annotator has a confusion matrix over the classes a, b,
  tie and both-bad (the probability of answering j when the truth is i), so a flipper, who always
  answers the other side, is as informative as an expert once recognised, and a spammer counts for
  nothing;
* ``mace`` (Hovy et al. 2013, MACE): each annotator either knows the answer or guesses from a personal
  distribution; competence is the probability of knowing. It has no notion of a flipper.

Tasks are the pairwise comparisons and, for ranking items, each pair of completions a ranking votes
on (``core.preferences.rankings.pair_votes``: better place wins, shared place ties, "all unacceptable"
is both-bad). Skips are not judgements. A fit covers one dataset: competence is per dataset.

**The mirror.** Such a model's likelihood is the same for a team and its mirror image (every a/b answer
and every pair's truth swapped): with one good annotator and one flipper, nothing in the labels says
which of the two is right. Of the two orientations the one where more labels agree with the posterior
is kept: the team, counted by labels, is assumed right more often than wrong (majority vote assumes the
same per pair). With a good annotator and a flipper of equal volume and no one else, no method can tell,
and none is claimed.

Competence of an annotator is reported with its sample size n (non-skip labels, a ranking counting
once per pair it votes on) and read from the posterior, whichever model was fitted:
``accuracy`` is the expected share of their labels equal to the true class; ``side_accuracy``, of their
a/b answers, the posterior probability that the side they picked is the better one (0.5 = a coin,
0 = always the worse side).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from core.limits import MIN_COMPETENCE_LABELS
from core.preferences.votes import Verdict, winning_margin
from storage.engine import Store
from storage.queries import Vote

AGGREGATES = ("majority", "dawid-skene", "mace")
CLASSES = ("a", "b", "tie", "both_bad")
# A task: (comparison id, None, None) for a pair, (ranking item id, low completion id, high completion id) for one
# pair of a ranking's completions (votes "a" when the low id is placed better).
TaskKey = tuple[int, Any, Any]

# Flags, each judged only on at least MIN_COMPETENCE_LABELS labels of the kind it reads (withheld below).
NEAR_RANDOM_BAND = 0.15  # side accuracy within 0.5 +/- this: the side picked says little about which is better
INVERTED_BELOW = 0.5 - NEAR_RANDOM_BAND  # side accuracy below this: the worse side is picked more often than not
ALWAYS_TIE_SHARE = 0.8  # share of the annotator's labels that are ties
POSITION_BIAS_P = 0.01  # two-sided binomial p-value of the left-side pick rate against 0.5
FLAGS = ("near-random", "inverted", "position-biased", "always-tie")


@dataclass(frozen=True)
class AnnotatorCompetence:
    name: str
    n: int  # non-skip labels in the fit
    accuracy: float  # expected share of the labels equal to the true class
    side_n: int  # a/b answers
    side_accuracy: float | None  # posterior probability that the picked side is the better one
    tie_share: float
    sided_n: int  # a/b answers with the side shown on the left recorded (pairwise labels)
    left_pick_rate: float | None
    left_pick_p: float | None  # two-sided binomial p-value of the left pick rate against 0.5
    flags: tuple[str, ...] = ()  # judged flags (FLAGS)
    withheld: tuple[str, ...] = ()  # flags not judged: too few labels, with their n


@dataclass
class CompetenceFit:
    """One fitted annotator model over one dataset's labels (several datasets: one fit each, merged)."""

    method: str
    posteriors: dict[TaskKey, dict[str, float]] = field(default_factory=dict)  # class -> probability
    annotators: list[AnnotatorCompetence] = field(default_factory=list)
    labels: int = 0
    seconds: float = 0.0
    mirrored: bool = False  # the EM's orientation was swapped (see the module's note on the mirror)

    def description(self) -> str:
        """The fit in words, for a summary: the model, its size and time, and a mirrored orientation."""
        return (f"{self.method} fitted on {self.labels} label(s) of {len(self.posteriors)} pair(s) in {self.seconds:.1f} s"
                + (" (orientation mirrored: the labels, counted, agree more that way)" if self.mirrored else ""))

    def verdict(self, key: TaskKey, votes: list[Vote]) -> Verdict:
        """The pair's outcome under the posterior: its most probable class (``no_majority`` when two
        classes share the top), with the winning votes' mean margin and the net preference
        P(outcome) - P(other side); ``skipped`` when every vote was a skip."""
        posterior = self.posteriors.get(key)
        if posterior is None:
            return Verdict("skipped")
        ranked = sorted(CLASSES, key=lambda c: -posterior[c])
        if abs(posterior[ranked[0]] - posterior[ranked[1]]) < 1e-9:
            return Verdict("no_majority")
        winner = ranked[0]
        other = {"a": "b", "b": "a"}.get(winner)
        preference = posterior[winner] - posterior[other] if other else None
        counted = [vote for vote in votes if vote.choice != "skip"]
        return Verdict(winner, winning_margin(counted, winner), preference)


def fit_competence(votes_by_task: dict[TaskKey, list[Vote]], method: str = "dawid-skene") -> CompetenceFit:
    """Fit ``method`` (``dawid-skene`` or ``mace``) to the votes of one dataset's tasks. Raises ``ValueError`` for
    another method. Tasks with only skips get no posterior."""
    import pandas as pd

    if method not in AGGREGATES[1:]:
        raise ValueError(f"an annotator model is one of {', '.join(AGGREGATES[1:])}, got {method!r}")
    started = time.perf_counter()
    keys = sorted(key for key, votes in votes_by_task.items() if any(v.choice != "skip" for v in votes))
    index = {key: i for i, key in enumerate(keys)}
    rows = [(index[key], vote.annotator, vote.choice) for key in keys for vote in votes_by_task[key]
            if vote.choice != "skip"]
    fit = CompetenceFit(method, labels=len(rows))
    if not rows:
        return fit
    frame = pd.DataFrame(rows, columns=["task", "worker", "label"])
    probas = _fit_probas(frame, method)
    table = {key: {c: float(probas.at[i, c]) if c in probas.columns else 0.0 for c in CLASSES}
             for key, i in index.items()}
    mirrored = {key: {**p, "a": p["b"], "b": p["a"]} for key, p in table.items()}
    if _agreement(votes_by_task, mirrored) > _agreement(votes_by_task, table) + 1e-9:
        table, fit.mirrored = mirrored, True
    fit.posteriors = table
    fit.annotators = _competences(votes_by_task, table)
    fit.seconds = time.perf_counter() - started
    return fit


def _fit_probas(frame: Any, method: str) -> Any:
    """tasks x classes posterior from crowd-kit (the task index as rows, the classes seen as columns)."""
    import warnings

    from crowdkit.aggregation import MACE, DawidSkene

    if method == "dawid-skene":
        model = DawidSkene(n_iter=100, tol=1e-6)
    else:  # each restart and iteration is a few pandas joins (~20 ms): two restarts keep a fit to seconds
        model = MACE(n_restarts=2, n_iter=50, random_state=0)
    with warnings.catch_warnings():
        # crowd-kit 1.4.2 passes pandas 3 keywords it deprecates (copy=, inplace=): noise, not a problem of ours.
        warnings.filterwarnings("ignore", module="crowdkit")
        return model.fit(frame).probas_


def _agreement(votes_by_task: dict[TaskKey, list[Vote]], posteriors: dict[TaskKey, dict[str, float]]) -> float:
    """Expected number of labels equal to the true class."""
    return sum(posteriors[key][vote.choice] for key in posteriors for vote in votes_by_task[key]
               if vote.choice != "skip")


def _competences(votes_by_task: dict[TaskKey, list[Vote]],
                 posteriors: dict[TaskKey, dict[str, float]]) -> list[AnnotatorCompetence]:
    from scipy.stats import binomtest

    right: Counter = Counter()
    counted: Counter = Counter()
    side_right: defaultdict[str, float] = defaultdict(float)
    side_mass: defaultdict[str, float] = defaultdict(float)
    sides, ties, sided, left = Counter(), Counter(), Counter(), Counter()
    for key, posterior in posteriors.items():
        for vote in votes_by_task[key]:
            if vote.choice == "skip":
                continue
            name = vote.annotator
            counted[name] += 1
            right[name] += posterior[vote.choice]
            ties[name] += vote.choice == "tie"
            if vote.choice in ("a", "b"):
                other = "b" if vote.choice == "a" else "a"
                sides[name] += 1
                side_right[name] += posterior[vote.choice]
                side_mass[name] += posterior[vote.choice] + posterior[other]
                if vote.shown_left in ("a", "b"):
                    sided[name] += 1
                    left[name] += vote.choice == vote.shown_left
    result = []
    for name in sorted(counted):
        side_accuracy = side_right[name] / side_mass[name] if side_mass[name] > 0 else None
        left_rate = left[name] / sided[name] if sided[name] else None
        left_p = binomtest(left[name], sided[name]).pvalue if sided[name] else None
        flags, withheld = [], []

        def judge(flag: str, n: int, holds: bool) -> None:
            if n < MIN_COMPETENCE_LABELS:
                withheld.append(f"{flag} (n={n} < {MIN_COMPETENCE_LABELS})")
            elif holds:
                flags.append(flag)

        judge("near-random", sides[name], side_accuracy is not None
              and abs(side_accuracy - 0.5) <= NEAR_RANDOM_BAND)
        judge("inverted", sides[name], side_accuracy is not None and side_accuracy < INVERTED_BELOW)
        judge("position-biased", sided[name], left_p is not None and left_p < POSITION_BIAS_P)
        judge("always-tie", counted[name], ties[name] / counted[name] >= ALWAYS_TIE_SHARE)
        result.append(AnnotatorCompetence(
            name=name, n=counted[name], accuracy=right[name] / counted[name], side_n=sides[name],
            side_accuracy=side_accuracy, tie_share=ties[name] / counted[name], sided_n=sided[name],
            left_pick_rate=left_rate, left_pick_p=left_p, flags=tuple(flags), withheld=tuple(withheld)))
    return result


def fit_by_dataset(votes_by_task: dict[TaskKey, list[Vote]], dataset_of: dict[int, str],
                   method: str) -> CompetenceFit:
    """One fit per dataset (``dataset_of``: item id -> dataset name), merged: the posteriors of every task,
    the annotators of each dataset listed under ``dataset/name`` when there are several datasets."""
    by_dataset: dict[str, dict[TaskKey, list[Vote]]] = defaultdict(dict)
    for key, votes in votes_by_task.items():
        by_dataset[dataset_of[key[0]]][key] = votes
    merged = CompetenceFit(method)
    for name in sorted(by_dataset):
        fit = fit_competence(by_dataset[name], method)
        merged.posteriors.update(fit.posteriors)
        merged.labels += fit.labels
        merged.seconds += fit.seconds
        merged.mirrored = merged.mirrored or fit.mirrored
        merged.annotators += [a if len(by_dataset) == 1 else replace(a, name=f"{name}/{a.name}") for a in fit.annotators]
    return merged


def fit_store_competence(store: Store, *, datasets: list[str] | None = None,
                         method: str = "dawid-skene") -> CompetenceFit:
    """Fit ``method`` on the labels of ``datasets`` (every dataset not archived when None), one fit per dataset:
    pairwise comparisons and the pairs of ranking items. Raises ``DatasetError`` for an unknown dataset."""
    from core.preferences.rankings import ranking_pair_tasks
    from storage.datasets import dataset_ids_for, open_dataset_ids
    from storage.queries import dataset_names_of, votes_by_comparison
    from storage.ranking import items_of, rankings_by_item

    with store.read() as session:
        dataset_ids = dataset_ids_for(session, list(datasets))[0] if datasets else open_dataset_ids(session)
        votes = votes_by_comparison(session, dataset_ids=dataset_ids)
        ranking_items = {item_id for item_id, _, _ in items_of(session, dataset_ids)} & set(votes)
        rankings = rankings_by_item(session, dataset_ids) if ranking_items else {}
        tasks = {**{(cid, None, None): votes[cid] for cid in set(votes) - ranking_items},
                 **ranking_pair_tasks(session, rankings, sorted(ranking_items))}
        names = dataset_names_of(session, list(votes))
    return fit_by_dataset(tasks, names, method)


# ----- the last fit of each dataset, kept as a JSON file beside the store (the background refit writes it, the Team
# tab shows it): a file rather than a table, since a fit is a cache that any refit replaces whole.
def fit_file(store: Store, dataset: str) -> Any:
    # Dataset names are letters, digits, '.', '_' and '-' (storage.datasets), so safe as a file name.
    return store.data_dir / "competence" / f"{dataset}.json"


def save_fit(store: Store, dataset: str, fit: CompetenceFit, *, human_labels: int) -> None:
    """Keep ``fit`` (without its per-pair posteriors) as the dataset's last fit, written whole or not at all;
    ``human_labels``: the dataset's human labels when it was fitted (the background refit counts from it)."""
    import json
    import os
    from dataclasses import asdict
    from datetime import datetime, timezone

    path = fit_file(store, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"dataset": dataset, "method": fit.method, "labels": fit.labels, "pairs": len(fit.posteriors),
              "description": fit.description(),
              "seconds": fit.seconds, "mirrored": fit.mirrored, "human_labels": human_labels,
              "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "annotators": [asdict(a) for a in fit.annotators]}
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(record, default=float))
    os.replace(staging, path)


def load_fit(store: Store, dataset: str) -> dict[str, Any] | None:
    """The dataset's last kept fit (``save_fit``'s record, annotators as ``AnnotatorCompetence``), or None."""
    import json

    path = fit_file(store, dataset)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    record["annotators"] = [AnnotatorCompetence(**{**a, "flags": tuple(a["flags"]), "withheld": tuple(a["withheld"])})
                            for a in record["annotators"]]
    return record
