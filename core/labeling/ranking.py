"""Ranking K completions of a prompt: what the annotator sees and the ranking they give.

A ranking is a list of groups of completion ids, best first; completions in one group share a place
(a tie). Every completion of the item is in exactly one group. The completions are shown in an
order drawn per (annotator, item) and stored with the label, so position bias can be measured
(``core.labeling.ranking_agreement``) and a later change shows the same layout.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from core.accounts import Actor, Permission
from core.limits import MAX_COMMENT_CHARS
from core.preferences.rankings import LETTERS
from core.segments import split_thinking
from storage.labels import LabelInput
from storage.queries import load_comparison
from storage.queue import QueueError, label_of
from storage.ranking import MAX_RANKED, ranked_completions, ranking_json, slots_of



@dataclass(frozen=True)
class RankedResponse:
    completion_id: int
    letter: str  # A, B, C... by shown position
    model: str | None
    text: str
    thinking: str | None
    answer: str


@dataclass(frozen=True)
class GivenRanking:
    """A ranking as stored: groups of completion ids best first, the all-unacceptable flag, the comment."""

    groups: list[list[int]]
    all_bad: bool = False
    comment: str | None = None


@dataclass(frozen=True)
class RankingView:
    item_id: int
    prompt_text: str | None
    prompt_messages: list[dict[str, Any]] | None
    completions: list[RankedResponse]  # in the order shown to this annotator
    existing: GivenRanking | None = None  # the actor's stored ranking (None when unranked or skipped)
    existing_choice: str | None = None  # "ranked" or "skip" when the actor labeled it before
    dataset: str = ""

    @property
    def comparison_id(self) -> int:  # the queue's name for an item
        return self.item_id

    @property
    def shown(self) -> list[int]:
        return [response.completion_id for response in self.completions]

    def letter_of(self, completion_id: int) -> str:
        return next(r.letter for r in self.completions if r.completion_id == completion_id)


def shown_order_for(annotator_id: int, item_id: int, completion_ids: list[int]) -> list[int]:
    """The order in which this annotator sees this item's completions: random per (annotator, item)
    so that position bias averages out, and the same on every refresh."""
    seed = int.from_bytes(hashlib.sha256(f"rank:{annotator_id}:{item_id}".encode()).digest()[:8], "big")
    order = sorted(completion_ids)
    random.Random(seed).shuffle(order)
    return order


def is_ranking_item(session: Session, item_id: int) -> bool:
    return bool(slots_of(session, [item_id]))


def ranking_view_in(session: Session, actor: Actor, item_id: int, dataset: str) -> RankingView | None:
    """The ranking item as this actor sees it, inside the caller's transaction."""
    record = load_comparison(session, item_id)
    completions = {c.completion_id: c for c in ranked_completions(session, item_id)}
    if record is None or not completions:
        return None
    stored = label_of(session, annotator_id=actor.user_id, comparison_id=item_id)
    shown = shown_order_for(actor.user_id, item_id, list(completions))
    if stored is not None and stored.ranking and sorted(stored.ranking.get("shown") or []) == sorted(completions):
        shown = list(stored.ranking["shown"])
    responses = [
        RankedResponse(completion_id, LETTERS[position], completions[completion_id].model,
                       completions[completion_id].text, *split_thinking(completions[completion_id].text))
        for position, completion_id in enumerate(shown)
    ]
    existing = (GivenRanking([list(g) for g in stored.ranking["groups"]], bool(stored.ranking.get("all_bad")),
                             stored.comment) if stored is not None and stored.ranking else None)
    return RankingView(item_id, record.prompt_text, record.prompt_messages, responses, existing,
                       stored.choice if stored is not None else None, dataset)


def check_groups(groups: Any, completion_ids: list[int], item_id: int) -> list[list[int]]:
    """``groups`` as a clean list of lists of ints, or a ``QueueError`` that says what is wrong and where."""
    if not isinstance(groups, (list, tuple)) or not groups:
        raise QueueError("groups must be a non-empty list of lists of completion ids, best first (ties share a list)")
    if len(groups) > MAX_RANKED:
        raise QueueError(f"groups has {len(groups)} lists; an item has at most {MAX_RANKED} completions")
    known = set(completion_ids)
    seen: dict[int, str] = {}
    clean: list[list[int]] = []
    for g, group in enumerate(groups):
        if not isinstance(group, (list, tuple)) or not group:
            raise QueueError(f"groups[{g}] must be a non-empty list of completion ids")
        clean.append([])
        for i, value in enumerate(group):
            where = f"groups[{g}][{i}]"
            if isinstance(value, bool) or not isinstance(value, int):
                raise QueueError(f"{where}: {str(value)[:40]!r} is not a completion id (an integer)")
            if value not in known:
                raise QueueError(f"{where}: {value} is not a completion of item {item_id} "
                                 f"(its completions: {', '.join(map(str, sorted(known)))})")
            if value in seen:
                raise QueueError(f"{where}: completion {value} is already in {seen[value]}; each completion has one place")
            seen[value] = where
            clean[-1].append(value)
        clean[-1].sort()  # a tie is a set: [[2, 1]] and [[1, 2]] are the same ranking
    missing = sorted(known - set(seen))
    if missing:
        raise QueueError(f"completion(s) {', '.join(map(str, missing))} of item {item_id} are not ranked: give every "
                         "completion a place (equal ones share a group)")
    return clean


def check_comment(comment: Any) -> None:
    """A comment is text within the cap, without NUL characters (PostgreSQL refuses them in text)."""
    if comment is None:
        return
    if not isinstance(comment, str):
        raise QueueError(f"the comment must be text, got {type(comment).__name__}")
    if len(comment) > MAX_COMMENT_CHARS:
        raise QueueError(f"the comment is {len(comment):,} characters; the limit is {MAX_COMMENT_CHARS:,}. Shorten it")
    if "\x00" in comment:
        raise QueueError("the comment contains a NUL character; remove it")


def ranking_label_input(session: Session, actor: Actor, item_id: int, groups: Any, *, all_bad: bool,
                        comment: str | None, seconds_spent: float | None, shown: list[int] | None) -> LabelInput:
    """The label a ranking makes, checked against the item inside the caller's transaction."""
    slots = slots_of(session, [item_id]).get(item_id)
    if slots is None:
        raise QueueError(f"item {item_id} is not a ranking item: label pairwise comparisons with a choice (a, b, ...)")
    check_comment(comment)
    if not isinstance(all_bad, bool):
        raise QueueError(f"all_bad must be true or false, got {str(all_bad)[:20]!r}")
    clean = check_groups(groups, slots, item_id)
    if shown is None or sorted(shown) != sorted(slots):
        stored = label_of(session, annotator_id=actor.user_id, comparison_id=item_id)
        stored_shown = (stored.ranking or {}).get("shown") if stored is not None else None
        shown = stored_shown if stored_shown and sorted(stored_shown) == sorted(slots) else \
            shown_order_for(actor.user_id, item_id, slots)
    return LabelInput(comparison_id=item_id, annotator_id=actor.user_id, choice="ranked",
                      ranking=ranking_json(clean, shown, bool(all_bad)), comment=(comment or "").strip() or None,
                      seconds_spent=seconds_spent)


def groups_from_places(places: dict[int, int | None]) -> list[list[int]]:
    """Groups (best first) from a place per completion (1 = best; equal places tie). Raises
    ``QueueError`` naming the completions without a place."""
    missing = [completion_id for completion_id, place in places.items() if place is None]
    if missing:
        raise QueueError(f"{len(missing)} response(s) have no place yet: give every response a place (1 = best; "
                         "equal responses share a place)")
    by_place: dict[int, list[int]] = {}
    for completion_id, place in places.items():
        by_place.setdefault(int(place), []).append(completion_id)
    return [sorted(by_place[place]) for place in sorted(by_place)]


def parse_order(text: str, view: RankingView) -> list[list[int]]:
    """Groups from a typed order of letters, best first: ``C A=D B`` or ``CA=DB`` (``=`` or ``,`` ties
    the letters it joins; ``>`` and spaces separate places). Raises ``QueueError`` saying which
    letter is unknown, repeated or missing."""
    letters = {r.letter: r.completion_id for r in view.completions}
    groups: list[list[int]] = []
    tie_next = False
    seen: set[str] = set()
    for character in (text or "").upper():
        if character in "=,":
            if not groups:
                raise QueueError("the order starts with a tie mark: start with a letter, e.g. C A=D B")
            tie_next = True
            continue
        if character in " >":
            continue
        if character not in letters:
            raise QueueError(f"{character!r} is not a response letter here (letters: {' '.join(letters)})")
        if character in seen:
            raise QueueError(f"{character} appears twice in the order; each response has one place")
        seen.add(character)
        if tie_next:
            groups[-1].append(letters[character])
        else:
            groups.append([letters[character]])
        tie_next = False
    if tie_next:
        raise QueueError("the order ends with a tie mark: put the letter it ties after it, e.g. C A=D B")
    missing = [letter for letter in letters if letter not in seen]
    if missing:
        raise QueueError(f"the order leaves out {' '.join(missing)}: give every response a place")
    return [sorted(group) for group in groups]


def order_text(groups: list[list[int]], view: RankingView) -> str:
    """The typed form of ``groups``: letters best first, ties joined with '='."""
    return " > ".join("=".join(sorted(view.letter_of(c) for c in group)) for group in groups)
