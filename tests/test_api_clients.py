"""The scripting API through gradio_client, as a labeling script would use it."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import add_users, run_cli, start_app
from sqlalchemy import func, select

from storage.engine import Store
from storage.models import Label, User

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
PASSWORD = "correct horse battery"
COMPARISONS = 200


@pytest.fixture
def api_app(db_url, tmp_path):
    rows = [{"prompt": f"Prompt {i}", "completions": [f"first {i}", f"second {i}"]} for i in range(COMPARISONS)]
    source = tmp_path / "queue.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert run_cli("import", str(source), db_url=db_url).returncode == 0
    add_users(db_url, {"ann": "annotator", "bob": "annotator"}, PASSWORD)
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    yield app
    app.process.terminate()
    app.process.wait(timeout=10)


def client_for(app, name: str):  # noqa: ANN001, ANN201
    from gradio_client import Client

    return Client(app.url, auth=(name, PASSWORD), verbose=False)


def test_two_clients_label_a_queue_concurrently_and_each_comparison_gets_one_label(api_app, db_url):
    labeled: dict[str, list[int]] = {"ann": [], "bob": []}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            client = client_for(api_app, name)
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
    assert sorted(labeled["ann"] + labeled["bob"]) == list(range(1, COMPARISONS + 1))

    store = Store(db_url)
    with store.read() as session:
        per_comparison = session.execute(select(Label.comparison_id, func.count()).group_by(Label.comparison_id)).all()
        by_user = dict(session.execute(
            select(User.name, func.count()).join(Label, Label.annotator_id == User.id).group_by(User.name)
        ).all())
    store.dispose()
    assert len(per_comparison) == COMPARISONS and {count for _, count in per_comparison} == {1}
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


RANKED_ITEMS = 12


@pytest.fixture
def ranking_app(db_url, tmp_path):
    rows = [{"prompt": f"Rank {i}", "completions": [f"w{i}", f"x{i}", f"y{i}", f"z{i}"]} for i in range(RANKED_ITEMS)]
    source = tmp_path / "rank.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert run_cli("import", str(source), "--dataset", "rk", "--question", "ranking", db_url=db_url).returncode == 0
    assert run_cli("datasets", "rk", "--overlap", "2", db_url=db_url).returncode == 0
    add_users(db_url, {"ann": "annotator", "bob": "annotator"}, PASSWORD)
    app = start_app(db_url, tmp_path / "app.log", "--no-demo")
    yield app
    app.process.terminate()
    app.process.wait(timeout=10)


def test_two_clients_rank_the_same_items_concurrently_and_each_item_gets_both_rankings_once(ranking_app, db_url):
    ranked: dict[str, dict[int, list[list[int]]]] = {"ann": {}, "bob": {}}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            client = client_for(ranking_app, name)
            while True:
                item = client.predict(api_name="/next_in_dataset", dataset="rk")
                if item is None:
                    return
                assert set(item) == {"item_id", "dataset", "prompt", "completions"} and len(item["completions"]) == 4
                by_text = {c["text"][0]: c["id"] for c in item["completions"]}
                # ann puts w first and ties y and z; bob orders z, y, x, w
                groups = ([[by_text["w"]], [by_text["x"]], [by_text["y"], by_text["z"]]] if name == "ann"
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
    assert sorted(ranked["ann"]) == sorted(ranked["bob"]) == list(range(1, RANKED_ITEMS + 1))
    store = Store(db_url)
    with store.read() as session:
        rows = session.execute(select(User.name, Label.comparison_id, Label.choice, Label.ranking)
                               .join(User, User.id == Label.annotator_id)).all()
    store.dispose()
    assert len(rows) == 2 * RANKED_ITEMS
    for name, item_id, choice, ranking in rows:
        assert choice == "ranked" and ranking["groups"] == ranked[name][item_id]
    with pytest.raises(Exception, match=r"groups\[1\]\[0\]: 99999 is not a completion"):
        client_for(ranking_app, "ann").predict(1, [ranked["ann"][1][0], [99999]], "", False, api_name="/rank")
