"""The query API on a real broker: a trainer, then two workers, answering for users and items.

Recommendations in the updates and from the API come from the same snapshot and state, so they must be
equal; any worker answers for any user (the request is forwarded to the user's owner); the answers match
``schemas/openapi.json``; bad requests get clear 4xx JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from faults import stop_worker
from kafka import KafkaProducer
from test_integration import (
    Collector,
    send_events,
    send_items,
    start_worker,
    wait_all_applied,
    wait_for,
    worker_env,
)
from test_model_sync import model_snapshots, start_trainer

from models.ranker import NextItemRanker
from models.sources import movielens_events, movielens_items
from streams.model_sync import unbundle
from streams.settings import Settings
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent
SPEC = json.loads((REPO / "schemas" / "openapi.json").read_text())


def _same_list(api: list[dict], update: list[dict], noise: float = 1e-5) -> None:
    """The same items in the same order with the same scores, up to float noise: the update's sequence
    vectors come from a batch of users, the API's from one, and a mixed score carries the difference.
    Two items may trade places only where their scores are that close."""
    scores = [r["score"] for r in api]
    np.testing.assert_allclose(scores, [r["score"] for r in update], atol=noise)
    for k, (mine, theirs) in enumerate(zip(api, update, strict=True)):
        if mine["item_id"] != theirs["item_id"]:
            near = [abs(scores[k] - scores[j]) for j in (k - 1, k + 1) if 0 <= j < len(scores)]
            assert min(near) <= 2 * noise, (api, update)


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def check(body: dict, schema: str) -> None:
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{schema}", "components": SPEC["components"]})


def ready(port: int) -> bool:
    try:
        status, body = get(port, "/ready")
    except OSError:
        return False
    return status == 200 and bool(body["owned_partitions"])


@pytest.mark.integration
def test_any_worker_answers_for_any_user_as_the_updates_say(kafka_bootstrap, tmp_path):
    run = uuid.uuid4().hex[:8]
    extra = {"INTEREST_PARTITIONS": "3", "INTEREST_MAX_BATCH": "200", "INTEREST_MAX_WAIT_S": "0.3",
             "INTEREST_MODEL_TOPIC": f"a-{run}-model", "INTEREST_MODEL_SYNC_S": "2"}  # fmt: skip
    env = worker_env(kafka_bootstrap, f"a-{run}", tmp_path, **extra)
    env2 = worker_env(kafka_bootstrap, f"a-{run}", tmp_path / "second", **extra)
    settings = Settings.load(env)
    ensure_topics(settings)
    items = movielens_items()
    records = sorted(movielens_events(max_users=10), key=lambda r: (r[1]["ts"], r[1]["event_id"]))
    early, late = records[:-40], records[-40:]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    send_items(producer, settings, items, {e["item_id"] for _, e in records})

    def send(batch) -> None:
        send_events(producer, settings, batch)

    def learned() -> int:
        snaps = model_snapshots(kafka_bootstrap, settings.model_topic)
        return snaps[-1][0]["learned_events"] if snaps else -1

    logs = [tmp_path / "trainer.log", tmp_path / "worker.log", tmp_path / "worker2.log"]
    collector = Collector(settings)
    collector.start()
    send(early)
    trainer = start_trainer(env, logs[0])
    workers = []
    try:
        wait_for(lambda: learned() == len(early), 180, "the trainer's snapshot", logs[0])
        stop_worker(trainer)  # the model stays as it is: updates and the API must agree on it
        manifest, raw = model_snapshots(kafka_bootstrap, settings.model_topic)[-1]
        loaded = lambda log: f"model snapshot {manifest['id']} loaded" in log.read_text(errors="replace")  # noqa: E731
        workers.append(start_worker(env, logs[1]))
        port = int(env["INTEREST_WEB_PORT"])
        wait_for(lambda: loaded(logs[1]) and ready(port), 120, "the worker to load the snapshot", logs[1])
        send(late)
        counts = wait_all_applied(collector, records, 240, logs[1])

        ranker = NextItemRanker.from_bytes(unbundle(raw)[1], settings.model)
        answers: dict[str, tuple[dict, dict]] = {}
        for user in counts:
            final = collector.updates[user][-1]
            status, recs = get(port, f"/users/{user}/recommendations?k=10")
            assert status == 200, recs
            check(recs, "Recommendations")
            # the update's recommendations and the API's: one snapshot, one state, one ranking
            _same_list(recs["items"], final["recommendations"])
            assert recs["version"] == final["version"] and recs["model"] == manifest["id"]
            mine = sorted((e["ts"], e["item_id"], e["event_id"]) for _, e in records if e["user_id"] == user)
            assert not {r["item_id"] for r in recs["items"]} & {i for _, i, _ in mine[-50:]}
            for r in recs["items"]:
                assert r["title"] == items[r["item_id"]].title
                assert set(r["because"]) <= {i for _, i, _ in mine[-settings.model.history_len :]}
                assert r["because_titles"] == [items[i].title for i in r["because"]]
                assert r["new"] == ranker.is_new(r["item_id"])  # no learned event in the snapshot

            status, interest = get(port, f"/users/{user}/interest")
            assert status == 200, interest
            check(interest, "Interest")
            assert interest["version"] == final["version"] and interest["events_applied"] == counts[user]
            np.testing.assert_allclose(interest["embedding"], final["embedding"], atol=1e-6)
            shares = [e["share"] for e in interest["explanation"]]
            assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
            by_event = {ev: (ts, i) for ts, i, ev in mine[-50:]}
            for e in interest["explanation"]:
                assert by_event[e["event_id"]] == (e["ts"], e["item_id"])
                assert e["title"] == items[e["item_id"]].title
            answers[user] = (recs, interest)

        # the items behind a recommendation: the user's recent items that the ranker says it follows
        assert sum(bool(r["because"]) for recs, _ in answers.values() for r in recs["items"]) >= 10
        # and the 10th place, kept for an item nobody has acted on yet (fresh_slots), is filled by text
        assert any(recs["items"][9]["new"] for recs, _ in answers.values() if len(recs["items"]) == 10)
        some_user, some_item = next(iter(counts)), late[-1][1]["item_id"]
        assert get(port, "/users/nobody-at-all/interest") == (
            404,
            {"error": "unknown user", "user_id": "nobody-at-all"},
        )
        assert get(port, "/users/nobody-at-all/recommendations")[0] == 404
        for bad in ("0", "101", "ten"):
            status, body = get(port, f"/users/{some_user}/recommendations?k={bad}")
            assert status == 400 and "1..100" in body["error"]
            assert get(port, f"/items/{some_item}/similar?k={bad}")[0] == 400
        assert get(port, "/items/no-such-item/similar")[0] == 404
        status, similar = get(port, f"/items/{some_item}/similar?k=5")
        assert status == 200
        check(similar, "Similar")
        text = ranker.text_scores(ranker._emb[ranker.index[some_item]])
        text[ranker.index[some_item]] = -np.inf
        assert [s["item_id"] for s in similar["items"]] == [ranker.ids[j] for j in np.argsort(-text)[:5]]

        # A second worker joins: the partitions are shared, and either worker answers for every user.
        workers.append(start_worker(env2, logs[2]))
        port2 = int(env2["INTEREST_WEB_PORT"])
        both = lambda: ready(port) and ready(port2) and loaded(logs[2])  # noqa: E731
        wait_for(both, 180, "two workers sharing the partitions", logs[2])
        for user, (recs, interest) in answers.items():
            for p in (port, port2):
                # the owner may now be the second worker: its own encoder call gave its copies of the
                # window items' text, equal to the first's up to float noise, and so is the mixed list
                status, again = get(p, f"/users/{user}/recommendations?k=10")
                assert status == 200 and {**again, "items": None} == {**recs, "items": None}
                _same_list(again["items"], recs["items"])
                assert get(p, f"/users/{user}/interest") == (200, interest)
        owned = [set(get(p, "/ready")[1]["owned_partitions"]) for p in (port, port2)]
        assert owned[0] and owned[1] and not owned[0] & owned[1]  # so some answers above were forwarded
    finally:
        for proc in [trainer, *workers]:
            stop_worker(proc)
        collector.stop_flag.set()
        collector.join(10)
        producer.close()
