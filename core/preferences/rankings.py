"""Preference pairs from rankings, and rankings for other tools.

Each annotator's ranking of an item votes on every pair of its completions: the better-placed one
wins, a shared place is a tie, and a ranking flagged "all unacceptable" votes both-bad. Several
annotators are folded per pair by majority, exactly as pairwise votes are
(``core.preferences.votes.fold_votes``): ties, both-bad, skips and split votes leave the pair out.

Which pairs are exported is the export's choice (``RANKING_PAIRS``), made on the item's consensus
order (completions by mean fractional rank over its rankings), never on one annotator's ranking, so
a pair one annotator placed side by side is still decided by everyone's votes:

* ``all``: every pair of completions (C(K,2) for K completions), as InstructGPT trains;
* ``adjacent``: completions in neighbouring consensus places (the least redundant pairs);
* ``best_vs_rest``: the consensus best place against each other completion.

Each exported pair carries ``weight`` = 1 / (pairs exported from its item), so every ranked prompt
weighs the same in training however many completions it had (InstructGPT, Ouyang et al. 2022,
sec. 3.5), and, when asked, ``margin`` = the mean rank gap of its winning votes divided by (K - 1)
(fractional ranks, so ties count as their mean rank): 1 for the one best against the one worst.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Callable

from sqlmodel import Session

from core.preferences.votes import Verdict, fold_votes
from storage.queries import ComparisonContent, Vote
from storage.ranking import StoredRanking, completion_texts, slots_of

RANKING_PAIRS = ("all", "adjacent", "best_vs_rest")
LETTERS = "ABCDEFGHI"  # a ranking's completions by shown position (MAX_RANKED of them), on the Label tab and in Inspect


def places(groups: list[list[int]]) -> dict[int, int]:
    """Place of each completion (0 = best group)."""
    return {completion_id: place for place, group in enumerate(groups) for completion_id in group}


def fractional_ranks(groups: list[list[int]]) -> dict[int, float]:
    """Rank of each completion from 1 (best), tied completions sharing the mean of their ranks."""
    ranks, start = {}, 1
    for group in groups:
        shared = start + (len(group) - 1) / 2
        ranks.update({completion_id: shared for completion_id in group})
        start += len(group)
    return ranks


def selected_pairs(groups: list[list[int]], mode: str) -> list[tuple[int, int]]:
    """The unordered pairs (low id, high id) of an order that ``mode`` exports."""
    where = places(groups)
    ids = sorted(where)
    if mode == "all":
        return list(combinations(ids, 2))
    if mode == "adjacent":
        return [(a, b) for a, b in combinations(ids, 2) if abs(where[a] - where[b]) <= 1]
    return [(a, b) for a, b in combinations(ids, 2) if min(where[a], where[b]) == 0]


def pair_votes(ranking: StoredRanking, n_completions: int) -> dict[tuple[int, int], Vote]:
    """The votes one ranking casts on every pair (low id, high id): choice ``a`` when the lower id is
    placed better, ``b`` when the higher is, ``tie`` for a shared place, ``both_bad`` when flagged;
    the margin is the fractional rank gap / (K - 1)."""
    rank = fractional_ranks(ranking.groups)
    votes = {}
    for low, high in combinations(sorted(rank), 2):
        gap = rank[high] - rank[low]
        if ranking.all_bad:
            choice = "both_bad"
        else:
            choice = "tie" if gap == 0 else ("a" if gap > 0 else "b")
        votes[(low, high)] = Vote(ranking.annotator, choice, None, abs(gap) / max(1, n_completions - 1),
                                  ranking.comment, ranking.seconds_spent, ranking.updated_at)
    return votes


@dataclass
class RankedPairs:
    rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (item id, row)
    left_out: Counter = field(default_factory=Counter)


def votes_by_pair(given: list[StoredRanking], n_completions: int) -> dict[tuple[int, int], list[Vote]]:
    """Every annotator's vote on each pair (low id, high id) of one item's completions."""
    by_pair: dict[tuple[int, int], list[Vote]] = {}
    for ranking in given:
        for pair, vote in pair_votes(ranking, n_completions).items():
            by_pair.setdefault(pair, []).append(vote)
    return by_pair


def ranking_pair_tasks(session: Session, rankings: dict[int, list[StoredRanking]],
                       item_ids: list[int]) -> dict[tuple[int, int, int], list[Vote]]:
    """The votes on every pair of every ranked item, keyed (item id, low id, high id): the tasks an
    annotator model (``core.preferences.competence``) is fitted on."""
    slots = slots_of(session, item_ids)
    return {(item_id, low, high): votes for item_id in item_ids if rankings.get(item_id)
            for (low, high), votes in votes_by_pair(rankings[item_id], len(slots[item_id])).items()}


def _fold_by_majority(key: tuple[int, int, int], votes: list[Vote]) -> Verdict:
    return fold_votes(votes)


def ranking_rows(session: Session, contents: dict[int, ComparisonContent], rankings: dict[int, list[StoredRanking]],
                 item_ids: list[int], *, mode: str, with_margin: bool, with_metadata: bool,
                 fold: Callable[[tuple[int, int, int], list[Vote]], Verdict] = _fold_by_majority,
                 soft_labels: bool = False) -> RankedPairs:
    """The preference rows of ranking items ``item_ids`` (those with at least one label). ``fold`` decides
    each pair from its key (item id, low id, high id) and votes (majority vote unless an annotator model's
    verdicts are given); ``soft_labels`` multiplies each pair's weight by the verdict's net preference."""

    result = RankedPairs()
    slots = slots_of(session, item_ids)
    texts = completion_texts(session, [c for ids in slots.values() for c in ids])
    for item_id in item_ids:
        given = rankings.get(item_id, [])
        if not given:
            result.left_out["skipped"] += 1
            continue
        by_pair = votes_by_pair(given, len(slots[item_id]))
        wanted = set(selected_pairs(consensus_groups(given, slots[item_id]), mode))
        decided = []
        for (low, high), votes in sorted(by_pair.items()):
            if (low, high) not in wanted:
                continue
            verdict = fold((item_id, low, high), votes)
            if verdict.outcome in ("a", "b"):
                chosen, rejected = (low, high) if verdict.outcome == "a" else (high, low)
                decided.append((chosen, rejected, verdict.margin, votes, verdict.outcome, verdict.preference))
            else:
                result.left_out[f"ranked pairs: {verdict.outcome}"] += 1
        if not decided:
            result.left_out["ranked items without a decided pair"] += 1
            continue
        content = contents[item_id]
        for chosen, rejected, margin, votes, outcome, preference in decided:
            chosen_text, rejected_text = texts[chosen][0], texts[rejected][0]
            if content.prompt_messages is not None:
                row: dict[str, Any] = {"prompt": content.prompt_messages,
                                       "chosen": [{"role": "assistant", "content": chosen_text}],
                                       "rejected": [{"role": "assistant", "content": rejected_text}]}
            else:
                row = {"prompt": content.prompt_text, "chosen": chosen_text, "rejected": rejected_text}
            row["weight"] = 1.0 / len(decided) * (preference if soft_labels and preference is not None else 1.0)
            if with_margin:
                row["margin"] = margin if margin is not None else 0.0
            if with_metadata:
                row.update(_metadata(item_id, content, chosen, rejected, texts, given))
            result.rows.append((item_id, row))
    return result


def _metadata(item_id: int, content: ComparisonContent, chosen: int, rejected: int,
              texts: dict[int, tuple[str, str | None]], rankings: list[StoredRanking]) -> dict[str, Any]:
    labels = []
    for ranking in rankings:
        where = places(ranking.groups)
        vote = ("both_bad" if ranking.all_bad else "tie" if where[chosen] == where[rejected]
                else "chosen" if where[chosen] < where[rejected] else "rejected")
        labels.append({"annotator": ranking.annotator, "vote": vote, "strength": None,
                       "places": [where[chosen] + 1, where[rejected] + 1], "comment": ranking.comment,
                       "seconds": ranking.seconds_spent, "time": ranking.updated_at.isoformat()})
    return {"comparison_id": item_id, "dataset": content.dataset, "source": content.source,
            "chosen_model": texts[chosen][1], "rejected_model": texts[rejected][1], "labels": labels}


def consensus_groups(rankings: list[StoredRanking], completion_ids: list[int]) -> list[list[int]]:
    """One order from several rankings: completions by mean fractional rank (ties where equal)."""
    totals = {completion_id: 0.0 for completion_id in completion_ids}
    for ranking in rankings:
        for completion_id, rank in fractional_ranks(ranking.groups).items():
            totals[completion_id] += rank
    by_mean: dict[float, list[int]] = {}
    for completion_id, total in totals.items():
        by_mean.setdefault(round(total / len(rankings), 9), []).append(completion_id)
    return [sorted(by_mean[mean]) for mean in sorted(by_mean)]


def ranked_format_rows(session: Session, contents: dict[int, ComparisonContent],
                       rankings: dict[int, list[StoredRanking]], item_ids: list[int]) -> list[dict[str, Any]]:
    """``--format ranked``: one row per ranked item, for tools that take rankings: the prompt, the
    completions (imported order), the consensus ``groups`` (indices into completions, best first)
    and every annotator's ranking in the same terms, with its all-unacceptable flag."""
    slots = slots_of(session, item_ids)
    texts = completion_texts(session, [c for ids in slots.values() for c in ids])
    rows = []
    for item_id in item_ids:
        given = rankings.get(item_id, [])
        if not given:
            continue
        ids = slots[item_id]
        index = {completion_id: i for i, completion_id in enumerate(ids)}
        content = contents[item_id]

        def as_indices(groups: list[list[int]]) -> list[list[int]]:
            return [sorted(index[c] for c in group) for group in groups]

        rows.append({
            "prompt": content.prompt_messages if content.prompt_messages is not None else content.prompt_text,
            "completions": [texts[c][0] for c in ids],
            "groups": as_indices(consensus_groups(given, ids)),
            "rankings": [{"annotator": r.annotator, "groups": as_indices(r.groups), "all_bad": r.all_bad}
                         for r in given],
            "item_id": item_id,
            "dataset": content.dataset,
        })
    return rows
