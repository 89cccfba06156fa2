"""The scripting API through gradio_client, as a labeling script would use it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import add_users, setup_cli, start_app, stop_app
from sqlalchemy import func, select

from storage.engine import Store
from storage.models import Label, User

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
PASSWORD = "correct horse battery"
COMPARISONS = 200
# The queue two clients race through: 60 items give each ~30 rounds of asking for the next item at the same time
# as the other (200 took ~70 s of a CI run each pass, the same check).
CONCURRENT_QUEUE = 60
RANKED_ITEMS = 12
RANKERS = ("rank-ann", "rank-bob")


def _queue_file(folder: Path, comparisons: int = COMPARISONS) -> Path:
    rows = [{"prompt": f"Prompt {i}", "completions": [f"first {i}", f"second {i}"]} for i in range(comparisons)]
    source = folder / "queue.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return source


@pytest.fixture
def queue_app(db_url, tmp_path):
    """An app whose whole queue the test labels: its own, since another test's lease would hold a comparison."""
    assert setup_cli("import", str(_queue_file(tmp_path, CONCURRENT_QUEUE)), db_url=db_url).returncode == 0
    add_users(db_url, {"ann": "annotator", "bob": "annotator"}, PASSWORD)
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    yield app
    stop_app(app)


@pytest.fixture(scope="module")
def api_app(module_db_url, tmp_path_factory):  # noqa: ANN001
    """One app for the tests that take a few items each (an app start costs ~10 CPU-s): the pairs queue
    (comparisons 1 to 200, imported first) and a ranking dataset "rk" of four completions per item, overlap 2,
    for the rankers, who are accounts of their own."""
    folder = tmp_path_factory.mktemp("api")
    assert setup_cli("import", str(_queue_file(folder)), db_url=module_db_url).returncode == 0
    rows = [{"prompt": f"Rank {i}", "completions": [f"w{i}", f"x{i}", f"y{i}", f"z{i}"]} for i in range(RANKED_ITEMS)]
    (folder / "rank.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert setup_cli("import", str(folder / "rank.jsonl"), "--dataset", "rk", "--question", "ranking",
                   db_url=module_db_url).returncode == 0
    assert setup_cli("datasets", "rk", "--overlap", "2", db_url=module_db_url).returncode == 0
    add_users(module_db_url, {"ann": "annotator", "bob": "annotator", **dict.fromkeys(RANKERS, "annotator")},
              PASSWORD)
    app = start_app(module_db_url, folder / "app.log", "--no-demo", env={"REWARDLAB_DATA_DIR": str(folder / "data")})
    app.db_url = module_db_url
    yield app
    stop_app(app)


def client_for(app, name: str):  # noqa: ANN001, ANN201
    from gradio_client import Client

    return Client(app.url, auth=(name, PASSWORD), verbose=False)


def test_two_clients_label_a_queue_concurrently_and_each_comparison_gets_one_label(queue_app, db_url):
    labeled: dict[str, list[int]] = {"ann": [], "bob": []}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            client = client_for(queue_app, name)
            while True:
                item = client.predict(api_name="/next")
                if item is None:
                    return
                result = client.predict(item["comparison_id"], "a", "clearly", "", api_name="/label")
                assert result["changed"] is True
                labeled[name].append(item["comparison_id"])
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in labeled]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == []
    assert labeled["ann"] and labeled["bob"], "both clients should have labeled some"
    assert sorted(labeled["ann"] + labeled["bob"]) == list(range(1, CONCURRENT_QUEUE + 1))

    store = Store(db_url)
    with store.read() as session:
        per_comparison = session.execute(select(Label.comparison_id, func.count()).group_by(Label.comparison_id)).all()
        by_user = dict(session.execute(
            select(User.name, func.count()).join(Label, Label.annotator_id == User.id).group_by(User.name)
        ).all())
    store.dispose()
    assert len(per_comparison) == CONCURRENT_QUEUE and {count for _, count in per_comparison} == {1}
    assert by_user == {"ann": len(labeled["ann"]), "bob": len(labeled["bob"])}


def test_the_api_returns_stored_order_is_idempotent_and_explains_errors(api_app):
    client = client_for(api_app, "ann")
    item = client.predict(api_name="/next")
    assert item["prompt"] == f"Prompt {item['comparison_id'] - 1}"
    assert (item["a"], item["b"]) == (f"first {item['comparison_id'] - 1}", f"second {item['comparison_id'] - 1}")
    assert client.predict(item["comparison_id"], "b", "", "", api_name="/label")["changed"] is True
    assert client.predict(item["comparison_id"], "b", "", "", api_name="/label")["changed"] is False
    with pytest.raises(Exception, match="choice must be one of a, b, tie, both_bad, skip"):
        client.predict(item["comparison_id"], "left", "", "", api_name="/label")
    other = client_for(api_app, "bob").predict(api_name="/next")
    with pytest.raises(Exception, match="reserved by other annotators"):
        client.predict(other["comparison_id"], "a", "", "", api_name="/label")


def test_the_api_needs_a_login(api_app):
    from gradio_client import Client

    with pytest.raises(Exception, match="credentials were not provided"):
        Client(api_app.url, verbose=False).predict(api_name="/next")
    with pytest.raises(ValueError, match="Could not login"):
        Client(api_app.url, auth=("ann", "wrong password"), verbose=False)


def test_two_clients_rank_the_same_items_concurrently_and_each_item_gets_both_rankings_once(api_app):
    ranked: dict[str, dict[int, list[list[int]]]] = {name: {} for name in RANKERS}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            client = client_for(api_app, name)
            while True:
                item = client.predict(api_name="/next_in_dataset", dataset="rk")
                if item is None:
                    return
                assert set(item) == {"item_id", "dataset", "prompt", "completions"} and len(item["completions"]) == 4
                by_text = {c["text"][0]: c["id"] for c in item["completions"]}
                # the first ranker puts w first and ties y and z; the second orders z, y, x, w
                groups = ([[by_text["w"]], [by_text["x"]], [by_text["y"], by_text["z"]]] if name == RANKERS[0]
                          else [[by_text[t]] for t in "zyxw"])
                assert client.predict(item["item_id"], groups, "", False, api_name="/rank")["changed"] is True
                assert client.predict(item["item_id"], groups, "", False, api_name="/rank")["changed"] is False
                ranked[name][item["item_id"]] = groups
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in ranked]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == []
    # Overlap 2: each annotator ranked every item once, and the store holds exactly those rankings.
    # The items come after the 200 pairs of the queue.
    items = list(range(COMPARISONS + 1, COMPARISONS + RANKED_ITEMS + 1))
    assert sorted(ranked[RANKERS[0]]) == sorted(ranked[RANKERS[1]]) == items
    store = Store(api_app.db_url)
    with store.read() as session:
        rows = session.execute(select(User.name, Label.comparison_id, Label.choice, Label.ranking)
                               .join(User, User.id == Label.annotator_id).where(User.name.in_(RANKERS))).all()
    store.dispose()
    assert len(rows) == 2 * RANKED_ITEMS
    for name, item_id, choice, ranking in rows:
        assert choice == "ranked" and ranking["groups"] == ranked[name][item_id]
    with pytest.raises(Exception, match=r"groups\[1\]\[0\]: 99999 is not a completion"):
        client_for(api_app, RANKERS[0]).predict(items[0], [ranked[RANKERS[0]][items[0]][0], [99999]], "", False,
                                                api_name="/rank")
