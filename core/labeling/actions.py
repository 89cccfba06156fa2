"""What an annotator sees and does: the next comparison, sides randomized, thinking apart from the
answer; labels from screen sides (left/right) or stored sides (a/b); undo, history, guidelines.

Every function takes the acting user and checks their permission first, so the UI and the API
share one set of rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from core.accounts import Actor, Permission
from core.preferences.rankings import LETTERS
from core.labeling.ranking import RankingView, check_comment, is_ranking_item, ranking_label_input, ranking_view_in
from core.labeling.steps import StepsView, steps_label_input, steps_view_in
from core.segments import split_thinking
from storage.engine import Store
from storage.labels import LabelError, LabelInput
from storage.queries import load_comparison
from storage.queue import (
    HistoryItem,
    Progress,
    QueueError,
    SubmitResult,
    claim_next_comparison,
    label_history,
    label_of,
    progress_of,
    reserve_for,
    submit_label,
    undo_last_label,
)
from storage.datasets import (
    DEFAULT_DATASET,
    DatasetError,
    DatasetSettings,
    change_dataset,
    dataset_by_name,
    dataset_name_of,
    labelable_dataset_ids,
    may_label_comparison,
    require_dataset,
)
from storage.settings import SettingError
from storage.steps import is_steps_item

# Errors whose message is meant for the person labeling (re-exported so that app/ need not import storage/).
LABELING_ERRORS = (QueueError, LabelError, SettingError, DatasetError)

SCREEN_CHOICES = ("left", "right", "tie", "both_bad", "skip")


class StaleScreen(QueueError):
    """A label given on a screen that did not show the actor's stored label (it was labeled in
    another tab meanwhile); nothing was saved. ``stored_choice`` is the stored label in screen terms."""

    def __init__(self, comparison_id: int, stored_choice: str, new_choice: str) -> None:
        self.comparison_id, self.stored_choice = comparison_id, stored_choice
        super().__init__(
            f"you already labeled comparison {comparison_id} as {stored_choice!r} (in another tab or window), which "
            f"this screen did not show, so {new_choice!r} was not saved. Choose \"Change it\" to replace your label, "
            "or \"Keep my label, next\""
        )
STRENGTHS = {"slightly": 1, "clearly": 2}


@dataclass(frozen=True)
class ResponseView:
    side: str  # "a" or "b": which stored completion this is
    model: str | None
    text: str  # the whole completion as stored
    thinking: str | None
    answer: str


@dataclass(frozen=True)
class ComparisonView:
    comparison_id: int
    prompt_text: str | None
    prompt_messages: list[dict[str, Any]] | None
    left: ResponseView
    right: ResponseView
    existing_choice: str | None = None  # the actor's label, in screen terms, when changing one
    dataset: str = ""  # the dataset the comparison belongs to

    @property
    def shown_left(self) -> str:
        return self.left.side


def left_side_for(annotator_id: int, comparison_id: int) -> str:
    """Which stored completion ("a" or "b") this annotator sees on the left of this comparison.

    Random per (annotator, comparison) so that position bias averages out, and stable so that a
    refresh or a later change shows the same layout.
    """
    digest = hashlib.sha256(f"{annotator_id}:{comparison_id}".encode()).digest()
    return "a" if digest[0] % 2 == 0 else "b"


ItemView = ComparisonView | RankingView | StepsView  # what the Label tab shows: a pair, completions to rank, or steps


def _view_in(session: Session, actor: Actor, comparison_id: int) -> ItemView | None:
    """The comparison (or ranking item) as this actor sees it, read inside the caller's transaction."""
    if is_ranking_item(session, comparison_id):
        return ranking_view_in(session, actor, comparison_id, dataset_name_of(session, comparison_id) or "")
    if is_steps_item(session, comparison_id):
        return steps_view_in(session, actor, comparison_id, dataset_name_of(session, comparison_id) or "")
    record = load_comparison(session, comparison_id)
    existing = label_of(session, annotator_id=actor.user_id, comparison_id=comparison_id)
    if record is None:
        return None
    left = existing.shown_left if existing is not None and existing.shown_left else left_side_for(actor.user_id, comparison_id)
    responses = {
        "a": ResponseView("a", record.a_model, record.a_text, *split_thinking(record.a_text)),
        "b": ResponseView("b", record.b_model, record.b_text, *split_thinking(record.b_text)),
    }
    right = "b" if left == "a" else "a"
    return ComparisonView(
        comparison_id,
        record.prompt_text,
        record.prompt_messages,
        responses[left],
        responses[right],
        existing_choice=_to_screen(existing.choice, left) if existing is not None else None,
        dataset=dataset_name_of(session, comparison_id) or "",
    )


def _to_screen(choice: str, shown_left: str) -> str:
    if choice in ("a", "b"):
        return "left" if choice == shown_left else "right"
    return choice


def _to_stored(screen_choice: str, shown_left: str) -> str:
    if screen_choice == "left":
        return shown_left
    if screen_choice == "right":
        return "b" if shown_left == "a" else "a"
    return screen_choice


def _dataset_id(session: Session, actor: Actor, dataset: str | None) -> int | None:
    """The id of the dataset an annotator chose; None (any dataset they may label) for no choice.
    The refusal is the same whether the dataset is missing or closed to them, and names no other
    dataset: an annotator learns nothing about datasets they may not label."""
    if not dataset:
        return None
    found = dataset_by_name(session, dataset) if isinstance(dataset, str) and len(dataset) <= 64 else None
    if found is None or session.execute(labelable_dataset_ids(actor.user_id, found.id)).first() is None:
        raise DatasetError(f"no dataset named {str(dataset)[:64]!r} is open to you")
    return found.id


def _check_may_label(session: Session, actor: Actor, comparison_id: int) -> None:
    # One message whether the comparison is missing or closed to the actor: an annotator learns
    # nothing about comparisons in datasets they may not label.
    if dataset_name_of(session, comparison_id) is None or not may_label_comparison(
            session, annotator_id=actor.user_id, comparison_id=comparison_id):
        raise QueueError(
            f"comparison {comparison_id} does not exist, is archived, or its dataset is archived or not open to you; "
            "take the next one, or ask an admin to add you to the dataset"
        )


def _check_choice_fits(session: Session, label: LabelInput) -> None:
    """A pairwise choice (a, b, tie, both bad) on a ranking item would be a label no export can read."""
    if label.choice not in ("skip", "ranked") and is_ranking_item(session, label.comparison_id):
        raise QueueError(f"item {label.comparison_id} is a ranking item: rank its completions (the rank endpoint, or "
                         "the places on the Label tab) or skip it")
    if label.choice not in ("skip", "steps") and is_steps_item(session, label.comparison_id):
        raise QueueError(f"item {label.comparison_id} is a reasoning trace of a steps dataset: mark its steps (the "
                         "label_steps endpoint, or the marks on the Label tab) or skip it")


def next_comparison(store: Store, actor: Actor, dataset: str | None = None) -> ItemView | None:
    """Reserve and show the actor's next comparison (from ``dataset``, or from any dataset they may
    label); None when nothing is left for them."""
    actor.require(Permission.LABEL)
    with store.write() as session:
        comparison_id = claim_next_comparison(session, annotator_id=actor.user_id,
                                              dataset_id=_dataset_id(session, actor, dataset))
        return None if comparison_id is None else _view_in(session, actor, comparison_id)


def open_for_change(store: Store, actor: Actor, comparison_id: int) -> ItemView:
    """Show a comparison the actor labeled before, laid out as they saw it, to change the label."""
    return change_label_screen(store, actor, comparison_id).view


def label_on_screen(
    store: Store,
    actor: Actor,
    view: ComparisonView,
    screen_choice: str,
    *,
    strength: str | None = None,
    comment: str | None = None,
    seconds_spent: float | None = None,
    replace_existing: bool = False,
) -> SubmitResult:
    """Store a label given in screen terms (left/right/tie/both_bad/skip); scripts and tests use
    this, the Label tab uses ``label_and_next``. Raises ``StaleScreen`` when the actor's stored
    label is not the one ``view`` showed, unless ``replace_existing``."""
    actor.require(Permission.LABEL)
    label = _screen_label_input(actor, view, screen_choice, strength=strength, comment=comment,
                                seconds_spent=seconds_spent)
    with store.write() as session:
        return _submit_from_screen(session, actor, view, label, screen_choice, replace_existing=replace_existing)


def _screen_label_input(actor: Actor, view: ComparisonView, screen_choice: str, *, strength: str | None,
                        comment: str | None, seconds_spent: float | None) -> LabelInput:
    if screen_choice not in SCREEN_CHOICES:
        raise QueueError(f"choice must be one of {', '.join(SCREEN_CHOICES)}, got {screen_choice!r}")
    return _label_input(actor, view.comparison_id, _to_stored(screen_choice, view.shown_left), strength=strength,
                        comment=comment, shown_left=view.shown_left, seconds_spent=seconds_spent)


def _submit_from_screen(session: Session, actor: Actor, view: ComparisonView, label: LabelInput, screen_choice: str,
                        *, replace_existing: bool) -> SubmitResult:
    """Store a label given on ``view``, inside the caller's write transaction: the actor must still
    be allowed to label it, and (unless ``replace_existing``) the screen must have shown the stored label."""
    _check_may_label(session, actor, label.comparison_id)
    _check_choice_fits(session, label)
    if not replace_existing:
        _refuse_stale(session, actor, view, label, screen_choice)
    return submit_label(session, label)


def _refuse_stale(session: Session, actor: Actor, view: ComparisonView, label: LabelInput, screen_choice: str) -> None:
    """Refuse a label from a screen that showed another state of the actor's own label than the
    stored one: a second tab must not silently overwrite what the first one saved. Repeating the
    stored label exactly (a double click) is not a change and passes."""
    stored = label_of(session, annotator_id=actor.user_id, comparison_id=view.comparison_id)
    if stored is None:
        return
    stored_screen = _to_screen(stored.choice, stored.shown_left or view.shown_left)
    if stored_screen == view.existing_choice:
        return
    if (stored.choice, stored.strength, stored.comment) == (label.choice, label.strength, label.comment):
        return
    raise StaleScreen(view.comparison_id, stored_screen, screen_choice)


def _label_input(actor: Actor, comparison_id: int, choice: str, *, strength: str | None, comment: str | None,
                 shown_left: str | None, seconds_spent: float | None) -> LabelInput:
    if strength not in (None, "", *STRENGTHS):
        raise QueueError(f"strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
    check_comment(comment)
    return LabelInput(
        comparison_id=int(comparison_id),
        annotator_id=actor.user_id,
        choice=choice,
        strength=STRENGTHS.get(strength) if choice in ("a", "b") else None,
        shown_left=shown_left,
        comment=(comment or "").strip() or None,
        seconds_spent=seconds_spent,
    )


def label_stored(
    store: Store,
    actor: Actor,
    comparison_id: int,
    choice: str,
    *,
    strength: str | None = None,
    comment: str | None = None,
    shown_left: str | None = None,
    seconds_spent: float | None = None,
) -> SubmitResult:
    """Store a label in stored terms (a/b/tie/both_bad/skip), as scripts give it.

    ``strength`` is "slightly" or "clearly" and applies to a or b only. Raises ``QueueError``
    (and ``LabelError``) with the reason.
    """
    actor.require(Permission.LABEL)
    label = _label_input(actor, comparison_id, choice, strength=strength, comment=comment, shown_left=shown_left,
                         seconds_spent=seconds_spent)
    with store.write() as session:
        _check_may_label(session, actor, label.comparison_id)
        _check_choice_fits(session, label)
        return submit_label(session, label)


def rank_item(store: Store, actor: Actor, item_id: int, groups: Any, *, comment: str | None = None,
              all_bad: bool = False, seconds_spent: float | None = None) -> SubmitResult:
    """Store the actor's ranking of ranking item ``item_id`` as scripts give it: ``groups`` of
    completion ids, best first, ties in one group. The rules of ``label_stored`` apply (leases,
    overlap, idempotent repeats, datasets open to the actor); the shown order recorded is the one
    ``next_comparison`` gave the actor."""
    actor.require(Permission.LABEL)
    if isinstance(item_id, bool) or not isinstance(item_id, int) or not 0 < item_id < 2 ** 62:
        raise QueueError(f"item_id must be a positive whole number, got {str(item_id)[:30]!r}")
    with store.write() as session:
        _check_may_label(session, actor, item_id)
        label = ranking_label_input(session, actor, item_id, groups, all_bad=all_bad, comment=comment,
                                    seconds_spent=seconds_spent, shown=None)
        return submit_label(session, label)


def rank_and_next(
    store: Store,
    actor: Actor,
    view: RankingView,
    groups: list[list[int]] | None,
    *,
    all_bad: bool = False,
    comment: str | None = None,
    seconds_spent: float | None = None,
    dataset: str | None = None,
    replace_existing: bool = False,
) -> "LabelingScreen":
    """One click on a ranking item: store the ranking shown on ``view`` (``groups`` best first; None
    skips the item), reserve the next item and read progress and history, in one write transaction.
    Raises ``StaleScreen`` (nothing saved) when the actor's stored label is not what ``view``
    showed, unless ``replace_existing``."""
    actor.require(Permission.LABEL)
    with store.write() as session:
        dataset_id = _dataset_id(session, actor, dataset)
        _check_may_label(session, actor, view.item_id)
        if groups is None:
            label = _label_input(actor, view.item_id, "skip", strength=None, comment=comment, shown_left=None,
                                 seconds_spent=seconds_spent)
        else:
            label = ranking_label_input(session, actor, view.item_id, groups, all_bad=all_bad, comment=comment,
                                        seconds_spent=seconds_spent, shown=view.shown)
        stored = label_of(session, annotator_id=actor.user_id, comparison_id=view.item_id)
        if not replace_existing and stored is not None and not _ranking_screen_showed(view, stored) and (
                (stored.choice, stored.ranking, stored.comment) != (label.choice, label.ranking, label.comment)):
            raise StaleScreen(view.item_id, stored.choice, label.choice)
        result = submit_label(session, label)
        next_id = claim_next_comparison(session, annotator_id=actor.user_id, dataset_id=dataset_id)
        return _screen(session, actor, next_id, result, dataset_id=dataset_id)


def label_steps(store: Store, actor: Actor, item_id: int, labels: Any, *, final: Any = None, comment: Any = None,
                seconds_spent: float | None = None) -> SubmitResult:
    """Store the actor's marks on the steps of steps item ``item_id`` as scripts give them: ``labels`` holds one
    mark per step, "+" (correct), "0" (neutral), "-" (wrong) or None (not reviewed), ``final`` says whether the
    final answer is "correct" or "wrong" (None: not judged). The rules of ``label_stored`` apply (leases,
    overlap, idempotent repeats, datasets open to the actor)."""
    actor.require(Permission.LABEL)
    if isinstance(item_id, bool) or not isinstance(item_id, int) or not 0 < item_id < 2 ** 62:
        raise QueueError(f"item_id must be a positive whole number, got {str(item_id)[:30]!r}")
    with store.write() as session:
        _check_may_label(session, actor, item_id)
        label = steps_label_input(session, actor, item_id, labels, final=final, comment=comment,
                                  seconds_spent=seconds_spent)
        return submit_label(session, label)


def mark_steps_and_next(
    store: Store,
    actor: Actor,
    view: StepsView,
    marks: list[str | None] | None,
    *,
    final: str | None = None,
    comment: str | None = None,
    seconds_spent: float | None = None,
    dataset: str | None = None,
    replace_existing: bool = False,
) -> "LabelingScreen":
    """One click on a steps item: store the marks given on ``view`` (None skips the item), reserve the next item
    and read progress and history, in one write transaction. Raises ``StaleScreen`` (nothing saved) when the
    actor's stored label is not what ``view`` showed, unless ``replace_existing``."""
    actor.require(Permission.LABEL)
    with store.write() as session:
        dataset_id = _dataset_id(session, actor, dataset)
        _check_may_label(session, actor, view.item_id)
        if marks is None:
            label = _label_input(actor, view.item_id, "skip", strength=None, comment=comment, shown_left=None,
                                 seconds_spent=seconds_spent)
        else:
            label = steps_label_input(session, actor, view.item_id, marks, final=final, comment=comment,
                                      seconds_spent=seconds_spent)
        stored = label_of(session, annotator_id=actor.user_id, comparison_id=view.item_id)
        showed = stored is not None and stored.choice == view.existing_choice and (
            (stored.steps is None and view.existing is None) or (view.existing is not None and stored.steps is not None
                                                                 and stored.steps["marks"] == view.existing.marks
                                                                 and stored.steps.get("final") == view.existing.final))
        if not replace_existing and stored is not None and not showed and (
                (stored.choice, stored.steps, stored.comment) != (label.choice, label.steps, label.comment)):
            raise StaleScreen(view.item_id, stored.choice, label.choice)
        result = submit_label(session, label)
        next_id = claim_next_comparison(session, annotator_id=actor.user_id, dataset_id=dataset_id)
        return _screen(session, actor, next_id, result, dataset_id=dataset_id)


def _ranking_screen_showed(view: RankingView, stored) -> bool:  # noqa: ANN001  (storage.models.Label)
    """Whether ``view`` showed the stored label as it is now (so a new ranking replaces it knowingly)."""
    if stored.choice != view.existing_choice:
        return False
    if stored.ranking is None:
        return view.existing is None
    return view.existing is not None and (stored.ranking["groups"], bool(stored.ranking.get("all_bad"))) == (
        view.existing.groups, view.existing.all_bad)


@dataclass(frozen=True)
class LabelingScreen:
    """Everything the Label tab shows after one action, read in the action's own transaction."""

    view: ItemView | None  # the comparison or ranking item to show next; None when nothing is left for the actor
    progress: Progress
    history: list[HistoryItem]
    result: SubmitResult | None = None  # the label just stored, when the action stored one


def _screen(session: Session, actor: Actor, comparison_id: int | None, result: SubmitResult | None = None,
            history_limit: int = 50, dataset_id: int | None = None) -> LabelingScreen:
    return LabelingScreen(
        None if comparison_id is None else _view_in(session, actor, comparison_id),
        progress_of(session, annotator_id=actor.user_id, dataset_id=dataset_id),
        label_history(session, annotator_id=actor.user_id, limit=history_limit),
        result,
    )


def open_labeling_screen(store: Store, actor: Actor, dataset: str | None = None) -> LabelingScreen:
    """Reserve the actor's next comparison (from ``dataset``, or any dataset they may label) and read
    what the tab shows with it, in one transaction."""
    actor.require(Permission.LABEL)
    with store.write() as session:
        dataset_id = _dataset_id(session, actor, dataset)
        return _screen(session, actor, claim_next_comparison(session, annotator_id=actor.user_id, dataset_id=dataset_id),
                       dataset_id=dataset_id)


def label_and_next(
    store: Store,
    actor: Actor,
    view: ComparisonView,
    screen_choice: str,
    *,
    strength: str | None = None,
    comment: str | None = None,
    seconds_spent: float | None = None,
    dataset: str | None = None,
    replace_existing: bool = False,
) -> LabelingScreen:
    """One click: store a label given in screen terms, reserve the next comparison (from ``dataset``,
    or any dataset the actor may label), and read the progress and history to show, all in one
    write transaction (all of it happens, or none). Raises ``StaleScreen`` (nothing saved) when
    the actor's stored label is not the one ``view`` showed, unless ``replace_existing``."""
    actor.require(Permission.LABEL)
    label = _screen_label_input(actor, view, screen_choice, strength=strength, comment=comment,
                                seconds_spent=seconds_spent)
    with store.write() as session:
        dataset_id = _dataset_id(session, actor, dataset)
        result = _submit_from_screen(session, actor, view, label, screen_choice, replace_existing=replace_existing)
        next_id = claim_next_comparison(session, annotator_id=actor.user_id, dataset_id=dataset_id)
        return _screen(session, actor, next_id, result, dataset_id=dataset_id)


def undo_last_screen(store: Store, actor: Actor, dataset: str | None = None) -> LabelingScreen | None:
    """Remove the actor's last label and show that comparison again; None when there is nothing to undo. The
    progress shown is of ``dataset`` (the one chosen on the page), as on every other screen."""
    actor.require(Permission.LABEL)
    with store.write() as session:
        dataset_id = _dataset_id(session, actor, dataset)
        comparison_id = undo_last_label(session, annotator_id=actor.user_id)
        return None if comparison_id is None else _screen(session, actor, comparison_id, dataset_id=dataset_id)


def change_label_screen(store: Store, actor: Actor, comparison_id: int, dataset: str | None = None) -> LabelingScreen:
    """Show a comparison the actor labeled before, laid out as they saw it, to change the label (progress of
    ``dataset``)."""
    actor.require(Permission.LABEL)
    with store.write() as session:
        dataset_id = _dataset_id(session, actor, dataset)
        _reserve_own_label(session, actor, comparison_id)
        return _screen(session, actor, comparison_id, dataset_id=dataset_id)


def _reserve_own_label(session: Session, actor: Actor, comparison_id: int) -> None:
    if label_of(session, annotator_id=actor.user_id, comparison_id=comparison_id) is None:
        raise QueueError(f"you have not labeled comparison {comparison_id}")
    _check_may_label(session, actor, comparison_id)
    reserve_for(session, annotator_id=actor.user_id, comparison_id=comparison_id)


def undo_last(store: Store, actor: Actor) -> ItemView | None:
    """Remove the actor's last label and show that comparison again."""
    screen = undo_last_screen(store, actor)
    return None if screen is None else screen.view


def history(store: Store, actor: Actor, limit: int = 50) -> list[HistoryItem]:
    actor.require(Permission.LABEL)
    with store.read() as session:
        return label_history(session, annotator_id=actor.user_id, limit=limit)


def screen_choice_of(item: HistoryItem) -> str:
    """The label as its annotator gave it on screen: a side as they saw it, or a ranking's order in the letters
    they saw (``B > A = D > C``; "all bad" flagged)."""
    if item.choice == "ranked" and isinstance(item.ranking, dict) and item.ranking.get("groups"):
        shown = list(item.ranking.get("shown") or [])
        letter = {completion: LETTERS[index] for index, completion in enumerate(shown[:len(LETTERS)])}
        order = " > ".join("=".join(sorted(letter.get(c, "?") for c in group)) for group in item.ranking["groups"])
        return order + (" (all bad)" if item.ranking.get("all_bad") else "")
    if item.choice == "steps" and isinstance(item.steps, dict):
        # one character a step, as the page marks them ("." unreviewed), and the final verdict
        marks = "".join("." if mark is None else mark for mark in item.steps.get("marks") or [])
        return f"steps {marks}" + (f" (answer {item.steps['final']})" if item.steps.get("final") else "")
    return _to_screen(item.choice, item.shown_left) if item.shown_left else item.choice


def progress(store: Store, actor: Actor, dataset: str | None = None) -> Progress:
    with store.read() as session:
        return progress_of(session, annotator_id=actor.user_id, dataset_id=_dataset_id(session, actor, dataset))


def guidelines(store: Store, dataset: str = DEFAULT_DATASET) -> str:
    """The labeling guidelines (Markdown) of ``dataset``."""
    with store.read() as session:
        return require_dataset(session, dataset).guidelines


def update_guidelines(store: Store, actor: Actor, markdown: str, dataset: str = DEFAULT_DATASET) -> None:
    actor.require(Permission.EDIT_GUIDELINES)
    with store.write() as session:
        change_dataset(session, dataset, DatasetSettings(guidelines=markdown))


def labels_per_comparison(store: Store, dataset: str = DEFAULT_DATASET) -> int:
    """The overlap of ``dataset``: how many annotators label each comparison that people label."""
    with store.read() as session:
        return require_dataset(session, dataset).overlap


def change_overlap(store: Store, actor: Actor, labels_needed: int, dataset: str = DEFAULT_DATASET) -> None:
    """Set how many annotators label each comparison of ``dataset``, and reopen or close its
    comparisons to match (imported labeled pairs never reopen)."""
    actor.require(Permission.CHANGE_SETTINGS)
    with store.write() as session:
        change_dataset(session, dataset, DatasetSettings(overlap=int(labels_needed)))
