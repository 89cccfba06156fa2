"""Queue counts: how many labels a comparison has and needs, kept in ``Comparison.label_count`` and
``Comparison.done`` so the queue never scans finished items.

Its own module because both the queue (a label stored) and dataset settings (an overlap changed)
recompute them, and the queue reads dataset settings: here neither imports the other.
"""

from __future__ import annotations

from sqlalchemy import case, exists, func, select, update
from sqlmodel import Session

from storage.bulk import chunked
from storage.models import Comparison, Dataset, Label, Role, User


def _labeled_by_a_source():  # noqa: ANN202
    """An imported comparison that came with its label (an import source's vote)."""
    return (
        exists()
        .where(Label.comparison_id == Comparison.id, Label.annotator_id == User.id, User.role == Role.SOURCE.value)
        .correlate(Comparison)
    )


def _overlap_of_dataset():  # noqa: ANN202
    return select(Dataset.overlap).where(Dataset.id == Comparison.dataset_id).correlate(Comparison).scalar_subquery()


def labels_needed():  # noqa: ANN201
    """How many non-skip labels a comparison needs, as a SQL expression: its dataset's overlap for
    one that people label; for one imported with its label, that label alone, so raising the overlap never
    sends imported pairs to annotators. Either way plus ``extra_labels``: an engineer sending a
    comparison back asks for that many more human labels."""
    return case((_labeled_by_a_source(), 1), else_=_overlap_of_dataset()) + Comparison.extra_labels


def refresh_comparison_counts(
    session: Session, comparison_ids: list[int] | None = None, *, labeled_by: int | None = None,
    dataset_id: int | None = None,
) -> None:
    """Recompute ``label_count`` and ``done`` from the labels: of the given comparisons, of those
    labeled by user ``labeled_by`` (after an import), of one dataset (when its overlap changes), or
    of all."""
    counted = (
        select(func.count())
        .where(Label.comparison_id == Comparison.id, Label.choice != "skip")
        .correlate(Comparison)
        .scalar_subquery()
    )
    statement = update(Comparison).values(label_count=counted, done=counted >= labels_needed())
    if dataset_id is not None:
        session.execute(statement.where(Comparison.dataset_id == dataset_id))
        return
    if labeled_by is not None:
        session.execute(
            statement.where(Comparison.id.in_(select(Label.comparison_id).where(Label.annotator_id == labeled_by)))
        )
        return
    if comparison_ids is None:
        session.execute(statement)
        return
    for chunk in chunked(list(comparison_ids), 1):
        session.execute(statement.where(Comparison.id.in_(chunk)))
