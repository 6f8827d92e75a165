"""End to end on a real Kafka broker: MovieLens events through click/cart/order, a real worker process
(restarted once mid-stream), and a separate consumer checking the interest-updates and DLQ topics
against the same events run through the core directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from faults import assigned_consumer, stop_worker
from kafka import KafkaConsumer, KafkaProducer

from models.cache import CachedEncoder
from models.core import InterestCore
from models.events import item_to_json
from models.head import SoftmaxHead
from models.interest import UserState
from models.replay import replay
from models.sources import movielens_events, movielens_items
from streams.checkpoint import TP, OffsetProbe
from streams.devbroker import free_port
from streams.recovery import local_changelog_offsets, stale_partitions
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
N_EVENTS = 5200


def bad_records(known_user: str) -> list[tuple[str, bytes | None, bytes, str]]:
    """(type, key, value, expected dead-letter reason)."""
    good = {"event_id": "bad-x", "user_id": known_user, "item_id": "1", "ts": 964982703}
    return [
        ("click", known_user.encode(), b"{oops", "bad_json"),
        ("cart", known_user.encode(), json.dumps({**good, "event_id": None}).encode(), "missing_field"),
        ("order", known_user.encode(), json.dumps({**good, "ts": [1]}).encode(), "wrong_type"),
        ("click", known_user.encode(), json.dumps({**good, "item_id": "no-such-item"}).encode(),
         "unknown_item"),
        ("click", b"another-user", json.dumps(good).encode(), "key_mismatch"),
        ("cart", known_user.encode(), json.dumps({**good, "pad": "x" * 70_000}).encode(), "too_large"),
    ]  # fmt: skip


class Collector(threading.Thread):
    """A separate consumer of the updates and DLQ topics, from the beginning.

    A failure of its consumer is kept in ``error`` (and shown by ``wait_all_applied``), not lost with
    the thread."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.updates: dict[str, list[dict]] = defaultdict(list)
        self.dead: list = []
        self.error: BaseException | None = None
        self.stop_flag = threading.Event()

    def run(self) -> None:
        try:
            consumer = assigned_consumer(self.settings)
            while not self.stop_flag.is_set():
                for msg in consumer:
                    if msg.topic == self.settings.updates_topic:
                        u = json.loads(msg.value)
                        self.updates[u["user_id"]].append(u)
                    else:
                        self.dead.append(msg)
            consumer.close()
        except BaseException as exc:
            self.error = exc
            raise


def worker_env(bootstrap: str, prefix: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a worker with its own app id, topics, state dir and web port."""
    topics = {
        f"INTEREST_{t.upper()}_TOPIC": f"{prefix}-{t}"
        for t in ("click", "cart", "order", "items", "updates", "dlq")
    }
    return dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, INTEREST_APP_ID=prefix,
                INTEREST_STATE_DIR=str(tmp_path / f"{prefix}-state"), INTEREST_WEB_PORT=str(free_port()),
                **topics, **extra)  # fmt: skip


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, cwd=REPO,
                            stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip


def wait_for(cond, timeout_s: float, what: str, log: Path, detail=None) -> None:  # noqa: ANN001
    """Poll ``cond`` until true; on timeout fail with ``detail()`` (what was seen) and the log's tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-6000:] if log.exists() else ""
    seen = f"\n{detail()}" if detail is not None else ""
    pytest.fail(f"timed out waiting for {what}{seen}\n--- worker log tail ---\n{tail}")


def wait_all_applied(collector: Collector, records, timeout_s: float, log: Path) -> dict[str, int]:  # noqa: ANN001
    """Wait until each user's last update has applied all of the user's ``records``; their counts."""
    counts = dict(Counter(e["user_id"] for _, e in records))

    def behind() -> dict[str, str]:
        """Users whose last update so far has not applied all their records: "seen of expected"."""
        last = {u: collector.updates[u][-1]["events_applied"] if collector.updates.get(u) else None
                for u in counts}  # fmt: skip
        return {u: f"{last[u]} of {n}" for u, n in counts.items() if last[u] != n}

    def seen() -> str:
        return f"the collector's last events_applied per user behind: {behind()}; error: {collector.error!r}"

    wait_for(lambda: not behind(), timeout_s, "every user's last update", log, detail=seen)
    return counts


def send_items(producer: KafkaProducer, settings: Settings, items: dict, item_ids) -> None:  # noqa: ANN001
    """Put these catalogue items on the items topic (key = item id)."""
    for item_id in item_ids:
        value = json.dumps(item_to_json(items[item_id])).encode()
        producer.send(settings.items_topic, key=item_id.encode(), value=value)


def send_events(producer: KafkaProducer, settings: Settings, records) -> None:  # noqa: ANN001
    """Send (type, event) records to their type's topic, keyed by user_id, and flush."""
    for etype, event in records:
        producer.send(
            settings.topic_for(etype), key=event["user_id"].encode(), value=json.dumps(event).encode()
        )
    producer.flush()


@pytest.mark.parametrize(
    ("workers", "state_vector"),
    [(1, "float32"), (2, "float16")],
    ids=["one-worker", "two-workers-float16-states"],
)
def test_worker_matches_direct_core_run_across_a_restart(
    kafka_bootstrap, encoder, tmp_path, workers, state_vector
):
    """With two workers the partitions (and their state and heads) move on the restart's rebalances; that
    run stores the states' vectors in float16 (``INTEREST_STATE_VECTOR``), so its embeddings match the
    direct run's to cosine 0.9999 instead of 1e-5 per component."""
    run = uuid.uuid4().hex[:8]
    extra = {"INTEREST_PARTITIONS": "3", "INTEREST_MAX_BATCH": "200", "INTEREST_MAX_WAIT_S": "0.3",
             "INTEREST_STATE_VECTOR": state_vector}  # fmt: skip
    env = worker_env(kafka_bootstrap, f"it-{run}", tmp_path, **extra)
    settings = Settings.load(env)
    ensure_topics(settings)

    # Data: MovieLens ratings; every third event carries its item inline, the rest rely on the catalog.
    items = movielens_items()
    records = []
    for n, (etype, event) in enumerate(movielens_events(limit=N_EVENTS)):
        if n % 3 == 0:
            event["item"] = item_to_json(items[event["item_id"]])
        records.append((etype, event))
    redelivered = records[-30:]  # the newest events again (as a redelivery would): must change nothing
    users = {e["user_id"] for _, e in records}
    catalog_ids = {e["item_id"] for _, e in records if "item" not in e}
    bad = bad_records(records[0][1]["user_id"])

    # Reference: the same events through the core directly.
    direct_core = InterestCore(settings.model, CachedEncoder(encoder))
    direct = replay(records + redelivered, direct_core, {i: items[i] for i in catalog_ids})
    expected_applied = {u: s.events_applied for u, s in direct.states.items()}
    assert sum(expected_applied.values()) == len(records)

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    send_items(producer, settings, items, catalog_ids)

    def send(batch) -> None:
        send_events(producer, settings, batch)

    collector = Collector(settings)
    collector.start()
    log = tmp_path / "worker.log"
    half = len(records) // 2
    send(records[:half])
    for etype, key, value, _ in bad:
        producer.send(settings.topic_for(etype), key=key, value=value)
    producer.flush()

    t0 = time.monotonic()
    worker = start_worker(env, log)
    others = [
        start_worker(
            worker_env(kafka_bootstrap, f"it-{run}", tmp_path / f"w{n}", **extra), tmp_path / f"w{n}.log"
        )
        for n in range(1, workers)
    ]
    try:
        wait_for(lambda: len(collector.updates) >= 5, 180, "first updates", log)
        first_update_s = time.monotonic() - t0
        stop_worker(worker)  # restart mid-stream
        assert worker.returncode is not None
        send(records[half:] + redelivered)
        worker = start_worker(env, log)
        done = lambda: all(  # noqa: E731
            collector.updates.get(u) and collector.updates[u][-1]["events_applied"] == n
            for u, n in expected_applied.items()
        )
        wait_for(done, 300, "all users to reach their event counts", log)
        wait_for(lambda: len(collector.dead) >= len(bad), 60, "dead letters", log)
        time.sleep(1.0)  # let stragglers (there should be none) arrive
    finally:
        for proc in [worker, *others]:
            stop_worker(proc)
        collector.stop_flag.set()
        collector.join(10)
        producer.close()
    print(f"\nfirst update {first_update_s:.1f}s after starting the worker")

    # Every user with events got updates; versions never go back, and a version published again (after
    # a redelivery) carries the same events; counts are exact.
    assert set(collector.updates) == users
    schema = json.loads((REPO / "schemas" / "interest-update.schema.json").read_text())
    for user, ups in collector.updates.items():
        versions = [u["version"] for u in ups]
        assert versions == sorted(versions), f"user {user}: versions {versions}"
        by_version = {}
        for u in ups:
            assert by_version.setdefault(u["version"], u["events_applied"]) == u["events_applied"]
        counts = [u["events_applied"] for u in ups]
        assert counts == sorted(counts)
        final = ups[-1]
        jsonschema.validate(final, schema)
        emb = np.asarray(final["embedding"], np.float32)
        assert emb.shape == (384,)
        assert abs(np.linalg.norm(emb) - 1) < 1e-5
        if state_vector == "float32":
            np.testing.assert_allclose(emb, direct.states[user].embedding(), atol=1e-5)
        else:
            assert float(emb @ direct.states[user].embedding()) > 0.9999
        assert final["event_ts"] == direct.states[user].t_ref
        assert final["model"] == encoder.name
        assert final["top_interests"] and final["last_event"]["type"] in ("click", "cart", "order")

    # Bad records: each in the DLQ, original bytes kept, with a readable reason. Delivery is at least
    # once (a rebalance can redeliver a batch), so a record is identified by its source coordinates.
    by_source: dict[tuple[str, str, str], tuple[str, bytes]] = {}
    originals = {value for _, _, value, _ in bad}
    for msg in collector.dead:
        headers = {k: v.decode() for k, v in msg.headers}
        assert msg.value in originals
        assert headers["dlq.error"] and headers["dlq.topic"] in settings.event_topics
        source = (headers["dlq.topic"], headers["dlq.partition"], headers["dlq.offset"])
        assert by_source.setdefault(source, (headers["dlq.reason"], msg.value)) == (
            headers["dlq.reason"],
            msg.value,
        )
    assert Counter(reason for reason, _ in by_source.values()) == Counter(reason for *_, reason in bad)

    # The softmax heads survived the restart: their test-then-train counts cover every event with
    # categories, before and after it (a head rebuilt from scratch would have counted fewer).
    heads = KafkaConsumer(f"{settings.app_id}-heads-changelog", bootstrap_servers=kafka_bootstrap,
                          group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=2000)  # fmt: skip
    latest = {msg.key: msg.value for msg in heads}
    heads.close()
    replicas = [SoftmaxHead.from_bytes(v) for v in latest.values()]
    assert 1 <= len(replicas) <= settings.partitions
    assert sum(h.stats.n for h in replicas) == direct.head.stats.n

    # The user states' changelog (written in bulk, ``DurableTable.set_many``) ends with every user's final
    # state, and the local store knows how far it has it (faust's recovery starts there).
    changelog = KafkaConsumer(
        f"{settings.app_id}-user-state-changelog",
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
    )
    final_states = {msg.key.decode(): UserState.from_bytes(msg.value) for msg in changelog}
    changelog.close()
    assert {u: s.events_applied for u, s in final_states.items()} == expected_applied
    assert local_changelog_offsets(settings) and stale_partitions(settings) == []


def test_broker_supports_transactions(kafka_bootstrap):
    """Exactly-once users need transactions: the single-node broker must host the transaction log."""
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{topic}")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topic, b"aborted")
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic, b"committed")
    producer.commit_transaction()
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None,
                             auto_offset_reset="earliest", isolation_level="read_committed",
                             consumer_timeout_ms=3000)  # fmt: skip
    assert [m.value for m in consumer] == [b"committed"]
    consumer.close()


def send_in_transactions(bootstrap: str, transactional_id: str, records, per_transaction: int) -> None:  # noqa: ANN001
    """(topic, key, value) records, ``per_transaction`` at a time, each group committed as a transaction:
    the broker writes a marker after each, at an offset that holds no record."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=transactional_id)
    producer.init_transactions()
    for start in range(0, len(records), per_transaction):
        producer.begin_transaction()
        for topic, key, value in records[start : start + per_transaction]:
            producer.send(topic, key=key, value=value)
        producer.commit_transaction()
    producer.close()


def test_the_offset_probe_says_where_records_resume_past_transaction_markers(kafka_bootstrap):
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    # offsets 0-2, marker 3; 4-5, marker 6
    send_in_transactions(kafka_bootstrap, f"tx-{topic}", [(topic, b"k", b"v")] * 5, per_transaction=3)
    probe = OffsetProbe(kafka_bootstrap, timeout_s=3.0)
    try:
        tp = TP(topic, 0)
        assert probe.records_from(tp, 0) == ([0, 1, 2, 4, 5], 7)  # and read past the marker at 6
        assert [probe.records_from(tp, o)[0][0] for o in (2, 3, 5)] == [2, 4, 5]
        assert probe.records_from(tp, 6) == ([], 7)  # only the last marker lies there: read past it
    finally:
        probe.close()


def test_a_transactional_producers_events_are_all_applied(kafka_bootstrap, encoder, tmp_path):
    """A producer writing in transactions (an exactly-once Flink or Kafka Streams job upstream) leaves a
    marker offset after every commit in every partition it wrote to. To the worker each is a jump in
    offsets: it asks the broker (``OffsetProbe``), steps over the marker, and applies every event."""
    run = uuid.uuid4().hex[:8]
    extra = {"INTEREST_PARTITIONS": "1", "INTEREST_MAX_WAIT_S": "0.05"}
    env = worker_env(kafka_bootstrap, f"tx-{run}", tmp_path, **extra)
    settings = Settings.load(env)
    ensure_topics(settings)
    items = movielens_items()
    records = []
    for etype, event in movielens_events(limit=240):
        event["item"] = item_to_json(items[event["item_id"]])
        records.append((etype, event))
    sends = [(settings.topic_for(t), e["user_id"].encode(), json.dumps(e).encode()) for t, e in records]
    send_in_transactions(kafka_bootstrap, f"tx-{run}", sends, per_transaction=8)
    collector = Collector(settings)
    collector.start()
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        wait_all_applied(collector, records, 300, log)
        # Each partition ends with the last transaction's marker: not a record left to do. Once idle, the
        # worker learns so from the broker and reports no lag (it is not "stalled").
        state: dict = {}

        def caught_up() -> bool:
            state.update(worker_ready(int(env["INTEREST_WEB_PORT"])))
            return state.get("lag") == 0 and state.get("ready") is True

        wait_for(caught_up, 60, "no lag in /ready", log, detail=lambda: state)
    finally:
        stop_worker(worker)
        collector.stop_flag.set()
        collector.join(10)
    text = log.read_text(errors="replace")
    assert "hold no record" in text  # the markers were met and stepped over, not guessed
    assert "stalled" not in text and "reading them again" not in text
    assert state["partitions_read_again"] == 0


def worker_ready(port: int) -> dict:
    """The worker's ``GET /ready`` body, whatever its status ({} if it does not answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        return json.loads(err.read())
    except OSError:
        return {}


def test_plain_faust_command_runs_the_same_app(kafka_bootstrap, tmp_path):
    """`faust -A streams.app worker` on topics nobody created yet: it declares them and serves."""
    run = uuid.uuid4().hex[:8]
    env = worker_env(kafka_bootstrap, f"plain-{run}", tmp_path)
    settings = Settings.load(env)
    log = tmp_path / "faust.log"
    faust_bin = Path(sys.executable).parent / "faust"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(faust_bin), "-A", "streams.app", "worker", "-l", "info"], env=env,
                                cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        event = {"event_id": "p1", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000,
                 "item": {"title": "Wireless earbuds", "categories": ["audio"]}}  # fmt: skip

        wait_for(lambda: _topic_exists(kafka_bootstrap, settings.order_topic), 120, "declared topics", log)
        producer.send(settings.order_topic, key=b"u1", value=json.dumps(event).encode())
        producer.flush()
        producer.close()
        consumer = KafkaConsumer(settings.updates_topic, bootstrap_servers=kafka_bootstrap, group_id=None,
                                 auto_offset_reset="earliest", consumer_timeout_ms=500)  # fmt: skip
        got: list = []
        wait_for(lambda: got.extend(json.loads(m.value) for m in consumer) or got, 120, "an update", log)
        consumer.close()
        assert got[0]["user_id"] == "u1" and got[0]["last_event"] == {"event_id": "p1", "type": "order",
                                                                       "item_id": "i1"}  # fmt: skip
    finally:
        stop_worker(proc)


def _topic_exists(bootstrap: str, topic: str) -> bool:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return topic in admin.list_topics()
    finally:
        admin.close()
