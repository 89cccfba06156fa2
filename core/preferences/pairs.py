"""Labels to preference pairs: the rows training, export, diagnostics and the loop all read.

``build_preference_rows`` folds each pair's votes (``core.preferences.votes``) and each ranking's
pairs (``core.preferences.rankings``) into TRL's preference rows; ``split_rows`` is the one
train/test split; ``resolve_datasets`` says which datasets a build covers.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core.preferences.competence import AGGREGATES, CompetenceFit, fit_by_dataset
from core.preferences.rankings import ranking_pair_tasks, ranking_rows
from core.preferences.votes import Verdict, fold_votes
from storage.datasets import DatasetError, dataset_ids_for, open_dataset_ids
from storage.engine import Store
from storage.queries import ComparisonContent, Vote, comparison_contents, count_comparisons, votes_by_comparison
from storage.ranking import items_of, rankings_by_item
from storage.steps import step_item_ids


class NothingToExport(ValueError):
    pass


def resolve_datasets(store: Store, names: list[str] | tuple[str, ...] | None) -> tuple[list[int] | None, str | None]:
    """Dataset ids and their prompt kind for export or training: the named datasets (archived ones
    too, when named), or with no names every dataset that is not archived. Raises ``DatasetError``
    for an unknown name or datasets of different prompt kinds."""
    with store.read() as session:
        if not names:
            return open_dataset_ids(session), None
        return dataset_ids_for(session, list(names))


@dataclass
class PreferenceRows:
    """The rows an export writes, and what was left out (by reason)."""

    rows: list[dict[str, Any]]
    left_out: Counter = field(default_factory=Counter)
    comparison_ids: list[int] = field(default_factory=list)
    fit: CompetenceFit | None = None  # the annotator model that decided the pairs (None: majority vote)

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        return digest.hexdigest()


def _vote_as_row_side(choice: str, chosen_side: str) -> str:
    if choice in ("a", "b"):
        return "chosen" if choice == chosen_side else "rejected"
    return choice


def _metadata(comparison_id: int, content: ComparisonContent, chosen_side: str, votes: list[Vote]) -> dict[str, Any]:
    """The evidence behind one exported row; votes name the row's sides (chosen/rejected)."""
    rejected_side = "b" if chosen_side == "a" else "a"
    models = {"a": content.a_model, "b": content.b_model}
    return {
        "comparison_id": comparison_id,
        "dataset": content.dataset,
        "source": content.source,
        "chosen_model": models[chosen_side],
        "rejected_model": models[rejected_side],
        "labels": [
            {
                "annotator": vote.annotator,
                "vote": _vote_as_row_side(vote.choice, chosen_side),
                "strength": {1: "slightly", 2: "clearly"}.get(vote.strength),
                "comment": vote.comment,
                "seconds": vote.seconds_spent,
                "time": vote.updated_at.isoformat() if vote.updated_at is not None else None,
            }
            for vote in votes
        ],
    }


def build_preference_rows(
    store: Store, *, prompt_format: str = "auto", since: datetime | None = None, annotators: list[str] | None = None,
    datasets: list[str] | None = None, with_metadata: bool = False, ranking_pairs: str = "all",
    ranking_margin: bool = False, aggregate: str = "majority", soft_labels: bool = False,
) -> PreferenceRows:
    """Fold the labels of ``datasets`` (every dataset not archived when None) into TRL preference rows, ordered by
    comparison id; ``with_metadata`` adds the evidence columns. Ranking items give the pairs
    ``ranking_pairs`` selects, with a ``weight`` column (``core.preferences.rankings``); pairwise rows
    then weigh 1.

    ``aggregate`` decides each pair by majority vote, or by the posterior of an annotator model fitted per dataset
    (``dawid-skene``, ``mace``: ``core.preferences.competence``); ``soft_labels`` (with a model) gives every row
    a ``weight``: its net posterior preference P(chosen) - P(rejected), times a ranking pair's 1/(pairs of its item).

    Raises ``NothingToExport`` for an unknown dataset, datasets of different prompt kinds, or labels
    that mix text and chat prompts under ``prompt_format='auto'``; ``ValueError`` for an unknown aggregate.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    try:
        dataset_ids, _ = resolve_datasets(store, datasets)
    except DatasetError as error:
        raise NothingToExport(str(error)) from None
    with store.read() as session:
        votes = votes_by_comparison(session, since=since, annotators=annotators, dataset_ids=dataset_ids)
        ranking_items = {item_id for item_id, _, _ in items_of(session, dataset_ids)} & set(votes)
        # Traces of steps datasets are exported as stepwise rows (--format stepwise), never as pairs.
        steps_items = set(step_item_ids(session, dataset_ids))
        for item_id in steps_items & set(votes):
            del votes[item_id]
        rankings = rankings_by_item(session, dataset_ids, since=since, annotators=annotators) if ranking_items else {}
        contents = comparison_contents(session, list(votes))
        fit = None if aggregate == "majority" else fit_by_dataset(
            {**{(cid, None, None): votes[cid] for cid in set(votes) - ranking_items},
             **ranking_pair_tasks(session, rankings, sorted(ranking_items))},
            {cid: content.dataset for cid, content in contents.items()}, aggregate)
        ranked = ranking_rows(session, contents, rankings, sorted(ranking_items), mode=ranking_pairs,
                              with_margin=ranking_margin, with_metadata=with_metadata,
                              soft_labels=soft_labels and fit is not None,
                              **({"fold": fit.verdict} if fit is not None else {}))
        total = count_comparisons(session, dataset_ids) - len(steps_items)
        archived = count_comparisons(session, dataset_ids, archived=True)
        # With no dataset named, archived datasets are left out: say how much that was.
        in_archived_datasets = 0 if datasets else count_comparisons(session) + count_comparisons(
            session, archived=True) - total - archived
    result = PreferenceRows(rows=[], fit=fit)
    if steps_items:
        result.left_out["traces of steps datasets (--format stepwise)"] = len(steps_items)
    if archived:
        result.left_out["archived"] = archived
    if in_archived_datasets:
        result.left_out["in archived datasets"] = in_archived_datasets
    if total > len(votes):
        result.left_out["without labels"] = total - len(votes)
    result.left_out.update(ranked.left_out)
    decided: list[tuple[int, Verdict]] = []
    for comparison_id in sorted(set(votes) - ranking_items):
        verdict = fold_votes(votes[comparison_id]) if fit is None else fit.verdict(
            (comparison_id, None, None), votes[comparison_id])
        if verdict.outcome in ("a", "b"):
            decided.append((comparison_id, verdict))
        else:
            result.left_out[verdict.outcome] += 1
    decided_ids = [cid for cid, _ in decided] + [cid for cid, _ in ranked.rows]
    styles = Counter("chat" if contents[cid].prompt_messages is not None else "text" for cid in set(decided_ids))
    if prompt_format == "auto" and len(styles) > 1:
        by_kind: dict[str, set[str]] = {}
        for comparison_id in decided_ids:
            content = contents[comparison_id]
            by_kind.setdefault("chat" if content.prompt_messages is not None else "text", set()).add(content.dataset)
        listed = "; ".join(f"{kind}: {', '.join(sorted(names))}" for kind, names in sorted(by_kind.items()))
        raise NothingToExport(
            f"the labels cover {styles['text']} plain-text and {styles['chat']} chat prompts ({listed}), and a "
            "preference dataset holds one kind; choose datasets of one kind (--dataset NAME, or the Dataset choice)"
        )
    with_margin = any(verdict.margin is not None for _, verdict in decided) or (ranking_margin and bool(ranked.rows))
    soft = soft_labels and fit is not None
    with_weight = bool(ranked.rows) or soft
    built: list[tuple[int, dict[str, Any]]] = []
    for comparison_id, verdict in decided:
        content = contents[comparison_id]
        chat = content.prompt_messages is not None
        if prompt_format != "auto" and prompt_format != ("chat" if chat else "text"):
            result.left_out[f"not {prompt_format}"] += 1
            continue
        chosen, rejected = (content.a_text, content.b_text) if verdict.outcome == "a" else (content.b_text, content.a_text)
        if chat:
            row: dict[str, Any] = {
                "prompt": content.prompt_messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        else:
            row = {"prompt": content.prompt_text, "chosen": chosen, "rejected": rejected}
        if with_weight:
            row["weight"] = verdict.preference if soft and verdict.preference is not None else 1.0
        if with_margin:
            # TRL applies a margin column to every row; a row without one gets 0 (plain Bradley-Terry).
            row["margin"] = verdict.margin if verdict.margin is not None else 0.0
        if with_metadata:
            row.update(_metadata(comparison_id, content, verdict.outcome, votes[comparison_id]))
            if fit is not None:  # the annotator model's posterior over the pair's classes, in the row's terms
                posterior = fit.posteriors[(comparison_id, None, None)]
                row["posterior"] = {_vote_as_row_side(c, verdict.outcome): p for c, p in posterior.items()}
        built.append((comparison_id, row))
    for comparison_id, row in ranked.rows:
        content = contents[comparison_id]
        if prompt_format != "auto" and prompt_format != ("chat" if content.prompt_messages is not None else "text"):
            result.left_out[f"not {prompt_format}"] += 1
            continue
        if with_margin:
            row.setdefault("margin", 0.0)
        built.append((comparison_id, row))
    # One order for both kinds of rows: by comparison (item) id, pairs of an item in their built order.
    built.sort(key=lambda pair: pair[0])
    result.rows = [row for _, row in built]
    result.comparison_ids = [comparison_id for comparison_id, _ in built]
    return result


def response_text(side: Any) -> str:
    """The response of an exported row's ``chosen`` or ``rejected``: the text itself, or the content
    of the single assistant message of a conversational row."""
    return side[0]["content"] if isinstance(side, list) else side


def split_rows(rows: list[dict[str, Any]], test_size: float, seed: int) -> tuple[list, list]:
    """Deterministic train/test split: shuffle indices with ``seed``, hold out ``test_size`` of them."""
    if test_size <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = min(len(rows) - 1, max(1, round(len(rows) * test_size)))
    test_ids = set(order[:n_test])
    train = [row for i, row in enumerate(rows) if i not in test_ids]
    test = [row for i, row in enumerate(rows) if i in test_ids]
    return train, test
