"""The labeling workflow below the UI: queue order, leases, overlap, idempotence, undo, history,
roles and accounts."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from conftest import sql
from test_import import write_jsonl

from core.accounts import AccountError, PermissionDenied, actor_for, add_user, authenticate
from core.data.importer import ImportConfig, import_file
from core.labeling.actions import (
    history,
    label_on_screen,
    label_stored,
    left_side_for,
    next_comparison,
    open_for_change,
    undo_last,
    update_guidelines,
)
from core.segments import split_thinking
from storage.datasets import DatasetSettings, change_dataset
from storage.models import Dataset, Label, User, utc_now
from storage.queue import QueueError, claim_next_comparison
from storage.settings import set_setting


@pytest.fixture
def queue_store(store, tmp_path):
    """20 prompts with two completions each (comparisons 1..20), the last five at priority 5."""
    rows = [{"prompt": f"Q{i}?", "completions": [f"a{i}", f"b{i}"]} for i in range(15)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "c.jsonl", rows)))
    urgent = [{"prompt": f"Urgent {i}?", "completions": [f"x{i}", f"y{i}"]} for i in range(5)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "u.jsonl", urgent), priority=5))
    return store


def make_actor(store, name: str, role: str = "annotator"):
    add_user(store, name, role, "correct horse battery")
    return actor_for(store, name)


def labels_per_comparison(store) -> dict[int, int]:
    with store.read() as session:
        return dict(session.execute(select(Label.comparison_id, func.count()).group_by(Label.comparison_id)).all())


def test_highest_priority_first_then_oldest(queue_store):
    ann = make_actor(queue_store, "ann")
    seen = []
    for _ in range(7):
        view = next_comparison(queue_store, ann)
        seen.append(view.comparison_id)
        label_on_screen(queue_store, ann, view, "left")
    assert seen == [16, 17, 18, 19, 20, 1, 2]


def test_a_refresh_shows_the_same_comparison(queue_store):
    ann = make_actor(queue_store, "ann")
    assert next_comparison(queue_store, ann).comparison_id == next_comparison(queue_store, ann).comparison_id


def test_two_annotators_never_get_the_same_comparison_with_overlap_1(queue_store):
    ann, bob = make_actor(queue_store, "ann"), make_actor(queue_store, "bob")
    handed = []
    while True:
        views = [next_comparison(queue_store, who) for who in (ann, bob)]
        if all(v is None for v in views):
            break
        ids = [v.comparison_id for v in views if v is not None]
        assert len(set(ids)) == len(ids)
        handed += ids
        for who, view in zip((ann, bob), views, strict=True):
            if view is not None:
                label_on_screen(queue_store, who, view, "right")
    assert sorted(handed) == list(range(1, 21))
    assert set(labels_per_comparison(queue_store).values()) == {1}


def test_overlap_2_gives_each_comparison_to_two_people(queue_store):
    with queue_store.write() as session:
        change_dataset(session, "default", DatasetSettings(overlap=2))
    people = [make_actor(queue_store, name) for name in ("ann", "bob", "cyd")]
    for _ in range(40):
        for who in people:
            view = next_comparison(queue_store, who)
            if view is not None:
                label_on_screen(queue_store, who, view, "left")
    assert set(labels_per_comparison(queue_store).values()) == {2}
    assert sum(labels_per_comparison(queue_store).values()) == 40


def test_an_expired_lease_frees_the_comparison_and_a_late_label_is_refused(queue_store):
    ann, bob = make_actor(queue_store, "ann"), make_actor(queue_store, "bob")
    first = next_comparison(queue_store, ann)
    later = utc_now() + timedelta(hours=1)
    with queue_store.write() as session:
        assert claim_next_comparison(session, annotator_id=bob.user_id, now=later) == first.comparison_id
    view_for_bob = next_comparison(queue_store, bob)
    label_on_screen(queue_store, bob, view_for_bob, "left")
    with pytest.raises(QueueError, match="already has the 1 label"):
        label_on_screen(queue_store, ann, first, "right")
    assert labels_per_comparison(queue_store)[first.comparison_id] == 1


def test_a_label_on_a_comparison_reserved_by_someone_else_is_refused(queue_store):
    ann, bob = make_actor(queue_store, "ann"), make_actor(queue_store, "bob")
    view = next_comparison(queue_store, ann)
    with pytest.raises(QueueError, match="reserved by other annotators"):
        label_stored(queue_store, bob, view.comparison_id, "a")


def test_a_double_submit_changes_nothing(queue_store):
    ann = make_actor(queue_store, "ann")
    view = next_comparison(queue_store, ann)
    first = label_on_screen(queue_store, ann, view, "left", strength="clearly", comment="sure")
    again = label_on_screen(queue_store, ann, view, "left", strength="clearly", comment="sure")
    assert first.changed and not again.changed and again.label_id == first.label_id
    assert labels_per_comparison(queue_store) == {view.comparison_id: 1}


def test_left_and_right_map_to_the_stored_sides(queue_store):
    ann = make_actor(queue_store, "ann")
    view = next_comparison(queue_store, ann)
    label_on_screen(queue_store, ann, view, "right")
    with queue_store.read() as session:
        stored = session.execute(select(Label)).scalar_one()
    assert stored.shown_left == view.left.side
    assert stored.choice == view.right.side


def test_sides_are_random_across_comparisons_and_stable_for_one(queue_store):
    sides = [left_side_for(7, comparison_id) for comparison_id in range(200)]
    assert 60 < sides.count("a") < 140
    assert sides == [left_side_for(7, comparison_id) for comparison_id in range(200)]


def test_a_skip_passes_the_comparison_to_someone_else(queue_store):
    ann, bob = make_actor(queue_store, "ann"), make_actor(queue_store, "bob")
    view = next_comparison(queue_store, ann)
    label_on_screen(queue_store, ann, view, "skip")
    assert next_comparison(queue_store, ann).comparison_id != view.comparison_id
    assert next_comparison(queue_store, bob).comparison_id == view.comparison_id


def test_undo_removes_the_last_label_and_shows_it_again(queue_store):
    ann = make_actor(queue_store, "ann")
    first = next_comparison(queue_store, ann)
    label_on_screen(queue_store, ann, first, "left")
    second = next_comparison(queue_store, ann)
    label_on_screen(queue_store, ann, second, "tie")
    again = undo_last(queue_store, ann)
    assert again.comparison_id == second.comparison_id
    assert labels_per_comparison(queue_store) == {first.comparison_id: 1}
    assert next_comparison(queue_store, ann).comparison_id == second.comparison_id


def test_changing_a_label_from_history(queue_store):
    ann = make_actor(queue_store, "ann")
    view = next_comparison(queue_store, ann)
    label_on_screen(queue_store, ann, view, "left", strength="slightly")
    [item] = history(queue_store, ann)
    assert (item.comparison_id, item.choice, item.strength) == (view.comparison_id, view.left.side, 1)
    reopened = open_for_change(queue_store, ann, view.comparison_id)
    assert reopened.left == view.left and reopened.existing_choice == "left"
    label_on_screen(queue_store, ann, reopened, "both_bad")
    [changed] = history(queue_store, ann)
    assert changed.choice == "both_bad" and changed.strength is None
    assert labels_per_comparison(queue_store) == {view.comparison_id: 1}


def test_imported_preference_pairs_are_not_in_the_queue(store, tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": "yes", "rejected": "no"} for i in range(3)]
    import_file(store, ImportConfig(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert next_comparison(store, make_actor(store, "ann")) is None


def test_roles_are_enforced_below_the_ui(queue_store):
    ann = make_actor(queue_store, "ann")
    with pytest.raises(PermissionDenied, match="ann is an annotator and may not edit the labeling guidelines"):
        update_guidelines(queue_store, ann, "# mine now")
    update_guidelines(queue_store, make_actor(queue_store, "boss", "admin"), "# Be fair")
    with queue_store.read() as session:  # the oracle: the stored row, not the module's getter
        assert session.execute(select(Dataset.guidelines).where(Dataset.name == "default")).scalar_one() == "# Be fair"


def test_accounts_hash_passwords_and_check_them(store):
    add_user(store, "ann", "annotator", "correct horse battery")
    with store.read() as session:
        stored = session.execute(select(User.password_hash).where(User.name == "ann")).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert authenticate(store, "ann", "correct horse battery")
    assert not authenticate(store, "ann", "wrong password")
    assert not authenticate(store, "nobody", "correct horse battery")


@pytest.mark.parametrize(
    "name,role,password,message",
    [
        ("ann", "annotator", "short", "at least 8 characters"),
        ("", "annotator", "long enough", "user name is 1 to 64"),
        ("import:x", "annotator", "long enough", "user name is 1 to 64"),
        ("ann", "wizard", "long enough", "role must be one of"),
    ],
)
def test_bad_accounts_are_refused_with_the_fix(store, name, role, password, message):
    with pytest.raises(AccountError, match=message):
        add_user(store, name, role, password)


def test_a_taken_name_is_refused(store):
    add_user(store, "ann", "annotator", "long enough")
    with pytest.raises(AccountError, match="already exists"):
        add_user(store, "ann", "admin", "long enough")


def test_without_accounts_the_local_user_acts_and_with_accounts_a_login_is_needed(store):
    assert actor_for(store, None).name == "local"
    add_user(store, "ann", "annotator", "long enough")
    with pytest.raises(PermissionDenied, match="log in"):
        actor_for(store, None)


@pytest.mark.parametrize(
    "response,thinking,answer",
    [
        ("<think>plan</think>\n\nDone.", "<think>plan</think>", "Done."),
        ("plan without opening</think> Done.", "plan without opening</think>", "Done."),
        ("<think>a</think> mid </think>\nlast", "<think>a</think> mid </think>", "last"),
        ("No thinking at all.", None, "No thinking at all."),
    ],
)
def test_thinking_is_split_at_the_last_closing_tag(response, thinking, answer):
    assert split_thinking(response) == (thinking, answer)


def test_team_report_counts_agreement_bias_and_disagreements(queue_store):
    from core.labeling.actions import change_overlap
    from core.labeling.team_stats import team_report
    from storage.labels import LabelInput
    from storage.queue import submit_label

    boss = make_actor(queue_store, "boss", "admin")
    change_overlap(queue_store, boss, 3)
    people = {name: make_actor(queue_store, name) for name in ("ann", "bob", "cyd")}
    # ann and bob agree everywhere; cyd differs on comparison 3. Choices vary so kappa is defined.
    votes = {1: "a", 2: "b", 3: "a", 4: "b", 5: "tie", 6: "a"}
    for comparison_id, choice in votes.items():
        for name, actor in people.items():
            given = "b" if (name == "cyd" and comparison_id == 3) else choice
            with queue_store.write() as session:
                submit_label(session, LabelInput(comparison_id, actor.user_id, given, shown_left="a", seconds_spent=2.0))
    report = team_report(queue_store, boss)
    assert report.overlapping_comparisons == 6
    assert report.percent_agreement == pytest.approx(16 / 18)
    assert 0.5 < report.cohens_kappa < 1.0
    assert 0.5 < report.fleiss_kappa < 1.0 and report.fleiss_raters == 3
    assert [d.comparison_id for d in report.disagreements] == [3]
    assert report.disagreements[0].votes == "ann: a, bob: a, cyd: b"
    stats = {a.name: a for a in report.annotators}
    assert stats["ann"].labels == 6 and stats["ann"].median_seconds == 2.0
    # shown_left is "a": picking a is picking the left side.
    assert stats["ann"].left_pick_rate == pytest.approx(3 / 5)
    with pytest.raises(PermissionDenied):
        team_report(queue_store, people["ann"])


def test_perfect_agreement_gives_kappa_one(queue_store):
    from core.labeling.actions import change_overlap
    from core.labeling.team_stats import team_report

    boss = make_actor(queue_store, "boss", "admin")
    change_overlap(queue_store, boss, 2)
    ann, bob = make_actor(queue_store, "ann"), make_actor(queue_store, "bob")
    for comparison_id, choice in zip(range(1, 7), "abab" + "ab", strict=True):
        for actor in (ann, bob):
            label_stored(queue_store, actor, comparison_id, choice)
    report = team_report(queue_store, boss)
    assert report.percent_agreement == 1.0 and report.cohens_kappa == pytest.approx(1.0)
    assert report.disagreements == []


def test_after_undo_and_change_the_progress_counts_the_chosen_dataset_only(store, tmp_path):
    """"Still open to you" after Undo counted every dataset (70 instead of 11); it counts the chosen one, as
    every other screen does. The oracle counts the dataset's open comparisons with SQL."""
    from core.accounts import actor_for, add_user
    from core.labeling.actions import change_label_screen, label_stored, next_comparison, undo_last_screen

    for name, count in (("small", 5), ("big", 7)):
        source = tmp_path / f"{name}.jsonl"
        source.write_text("".join(json.dumps({"prompt": f"{name} {i}?", "completions": ["a", "b"]}) + "\n"
                                  for i in range(count)))
        import_file(store, ImportConfig(source, dataset=name))
    add_user(store, "ann", "annotator", "correct horse battery")
    ann = actor_for(store, "ann")
    first = next_comparison(store, ann, "small")
    label_stored(store, ann, first.comparison_id, "a")
    screen = undo_last_screen(store, ann, "small")
    open_in_small = sql(store, "SELECT count(*) FROM comparison JOIN dataset ON dataset.id = comparison.dataset_id "
                               "WHERE dataset.name = 'small' AND NOT comparison.done")[0][0]
    assert screen.progress.open_comparisons == open_in_small == 5
    label_stored(store, ann, first.comparison_id, "b")
    changed = change_label_screen(store, ann, first.comparison_id, "small")
    assert changed.progress.open_comparisons == 4 and changed.progress.labeled_by_me == 1
