"""The sequential model in the stream: the trainer learns from every partition and publishes chunked
snapshots; a worker loads them and gives each update the user vector of the newest snapshot."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from faults import stop_worker
from kafka import KafkaConsumer, KafkaProducer
from test_integration import (
    Collector,
    send_events,
    send_items,
    start_worker,
    wait_all_applied,
    wait_for,
    worker_env,
)

from models.events import Item
from models.ranker import NextItemRanker
from models.sequence import SequenceConfig, SequenceModel
from models.sources import movielens_events, movielens_items
from streams import model_sync
from streams.model_sync import (
    ServedModel,
    SnapshotAssembler,
    recreated_topics,
    resume_positions,
    snapshot_records,
)
from streams.settings import Settings
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent


def test_a_workers_item_text_is_bounded_least_recently_used_and_kept_only_while_a_model_is_loaded():
    served = ServedModel("unused:9092", "interest-model", max_text_items=3)
    vec = np.ones(8, np.float32)
    served.remember("a", vec)
    assert not served.text  # no snapshot yet: nothing would read it
    served.model = SequenceModel(8)
    for item in ("a", "b", "c"):
        served.remember(item, vec)
    assert served._text("a") is not None  # read: now the most recently used
    served.remember("d", vec)
    assert list(served.text) == ["c", "a", "d"]  # "b", least recently used, made room
    assert served.text["d"].dtype == np.float16


def test_the_trainer_skips_what_the_workers_dead_letter(tmp_path):
    from types import SimpleNamespace

    from models.events import Item
    from models.sharding import partition_for

    settings = Settings.load({})
    catalog = SimpleNamespace(get=lambda item_id: Item(f"title {item_id}", categories=("c",)))
    trainer = model_sync.Trainer(settings, SimpleNamespace(dim=8, config=settings.model), catalog, tmp_path)
    topic = next(iter(settings.event_topics))
    home = partition_for(b"u1", settings.partitions)

    def record(ts: float) -> bytes:
        return json.dumps({"event_id": f"e{ts}", "user_id": "u1", "item_id": "i1", "ts": ts}).encode()

    assert trainer.decode(topic, home, b"u1", record(1.7e9)) is not None
    elsewhere = (home + 1) % settings.partitions
    assert trainer.decode(topic, elsewhere, b"u1", record(1.7e9)) is None  # the worker: wrong_partition
    assert trainer.decode(topic, home, b"u1", record(4e9)) is None  # the worker: future_timestamp
    assert trainer.decode(topic, home, None, record(1.7e9)) is None  # the worker: missing_key
    assert trainer.skipped == 3


def test_a_snapshot_is_taken_only_when_all_its_chunks_and_its_checksum_are_there(monkeypatch, caplog):
    monkeypatch.setattr(model_sync, "CHUNK_BYTES", 10)
    first, second = bytes(range(35)), bytes(range(100, 125))
    one = list(snapshot_records(first, 1, learned_events=5))
    two = list(snapshot_records(second, 2, learned_events=9))
    assert [k for k, _ in one] == [b"chunk/0", b"chunk/1", b"chunk/2", b"chunk/3", b"manifest"]
    reader = SnapshotAssembler()
    for key, value in one:
        reader.apply(key, value)
    assert reader.take() == first and reader.take() is None
    # A trainer that died mid-publish: chunk 1 of snapshot 2 never arrived; the manifest must not win.
    for key, value in two:
        if key != b"chunk/1":
            reader.apply(key, value)
    assert reader.take() is None
    # A corrupted chunk fails the checksum.
    for key, value in two:
        reader.apply(key, value[:-1] + b"!" if key == b"chunk/1" else value)
    assert reader.take() is None
    for key, value in two:
        reader.apply(key, value)
    assert reader.take() == second and json.loads(two[-1][1])["learned_events"] == 9
    # Compaction: a cleaned segment kept snapshot 2's manifest, the chunks that replaced its chunks are
    # snapshot 3's, and snapshot 3's manifest follows. Snapshot 2 is not taken, and that is no fault.
    three = list(snapshot_records(bytes(range(200, 230)), 3, learned_events=12))
    reader, compacted = SnapshotAssembler(), [*three[:2], two[-1], *three[2:]]
    caplog.clear()
    with caplog.at_level("DEBUG", logger="interest_stream.model_sync"):
        taken = []
        for key, value in compacted:
            reader.apply(key, value)
            taken.append(reader.take())
    assert taken[2] is None and taken[-1] == bytes(range(200, 230))
    assert [r.levelname for r in caplog.records if "incomplete" in r.message] == ["DEBUG"]
    reader = SnapshotAssembler()
    for key, value in [*one[:-1], *two[:1], *two[2:-1]]:  # snapshot 2's chunk 1 never came: a warning
        reader.apply(key, value)
    with caplog.at_level("DEBUG", logger="interest_stream.model_sync"):
        reader.apply(*two[-1])
    assert caplog.records[-1].levelname == "WARNING" and reader.take() is None


def model_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """The model topic's committed records, in order: what a worker reads."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=1500, max_partition_fetch_bytes=16 * 1024**2,
                             isolation_level="read_committed")  # fmt: skip
    try:
        return [(msg.key, msg.value) for msg in consumer]
    finally:
        consumer.close()


def model_snapshots(bootstrap: str, topic: str) -> list[tuple[dict, bytes]]:
    """Every complete snapshot on the model topic so far, oldest first."""
    reader, out = SnapshotAssembler(), []
    for key, value in model_records(bootstrap, topic):
        reader.apply(key, value)
        raw = reader.take()
        if raw is not None:
            out.append((reader.manifest, raw))
    return out


def start_trainer(env: dict[str, str], log: Path) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "train"], env=env, cwd=REPO,
                            stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.mark.integration
def test_trainer_and_worker_share_one_model_through_the_broker(kafka_bootstrap, encoder, tmp_path):
    run = uuid.uuid4().hex[:8]
    extra = {"INTEREST_PARTITIONS": "3", "INTEREST_MAX_BATCH": "200", "INTEREST_MAX_WAIT_S": "0.3",
             "INTEREST_MODEL_TOPIC": f"m-{run}-model", "INTEREST_MODEL_SYNC_S": "2"}  # fmt: skip
    env = worker_env(kafka_bootstrap, f"m-{run}", tmp_path, **extra)
    settings = Settings.load(env)
    ensure_topics(settings)
    items = movielens_items()
    # In event-time order, as a live stream arrives: each user's window is then in time order too.
    records = sorted(movielens_events(max_users=12), key=lambda r: (r[1]["ts"], r[1]["event_id"]))
    quarter = len(records) // 4
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    send_items(producer, settings, items, {e["item_id"] for _, e in records})

    def send(batch) -> None:
        send_events(producer, settings, batch)

    def learned() -> int:
        snaps = model_snapshots(kafka_bootstrap, settings.model_topic)
        return snaps[-1][0]["learned_events"] if snaps else -1

    trainer_log, worker_log = tmp_path / "trainer.log", tmp_path / "worker.log"
    collector = Collector(settings)
    collector.start()
    send(records[:quarter])
    trainer = start_trainer(env, trainer_log)
    worker = None
    try:
        wait_for(lambda: learned() == quarter, 180, "the first snapshot of the first quarter", trainer_log)
        # Killed without warning, then restarted: it resumes from its checkpoint, so every event is
        # learned exactly once (a double count or a gap would show in learned_events).
        trainer.kill()
        trainer.wait(10)
        send(records[quarter : 2 * quarter])
        trainer = start_trainer(env, trainer_log)
        wait_for(lambda: learned() == 2 * quarter, 180, "learning on after a kill -9", trainer_log)
        stop_worker(trainer)  # the model is final from here on: the worker's vectors are checkable
        worker = start_worker(env, worker_log)
        wait_for(lambda: "model snapshot" in worker_log.read_text(errors="replace"), 120,
                 "the worker to load the snapshot", worker_log)  # fmt: skip
        send(records[2 * quarter :])
        wait_all_applied(collector, records, 240, worker_log)
    finally:
        for proc in (trainer, worker):
            if proc is not None:
                stop_worker(proc)
        collector.stop_flag.set()
        collector.join(10)
        producer.close()

    manifest, raw = model_snapshots(kafka_bootstrap, settings.model_topic)[-1]
    assert manifest["learned_events"] == 2 * quarter
    sequence, ranked = model_sync.unbundle(raw)
    model = SequenceModel.from_bytes(sequence)
    # The ranker came through the kill -9 exactly too: every event counted once.
    ranker = NextItemRanker.from_bytes(ranked, settings.model)
    learned_items: dict[str, int] = {}
    for _, e in records[: 2 * quarter]:
        learned_items[e["item_id"]] = learned_items.get(e["item_id"], 0) + 1
    assert {i: int(ranker._pop[ranker.index[i]]) for i in learned_items} == learned_items
    assert ranker._pop[: ranker.n_items].sum() == 2 * quarter
    # The last update of each user who acted after the worker had the snapshot carries the snapshot's
    # vector for the user's window (last 50 events by time, then item id), text from the real encoder (the
    # worker holds it as float16).
    late = {e["user_id"] for _, e in records[2 * quarter :]}
    assert late
    for user in late:
        final = collector.updates[user][-1]
        assert final["sequence"]["model"] == manifest["id"]
        assert len(final["recommendations"]) == settings.recommendations_k
        assert final["sequence"]["learned_events"] == manifest["learned_events"]
        mine = sorted((e["ts"], e["item_id"], t) for t, e in records if e["user_id"] == user)[-50:]
        texts = encoder.encode([items[i].encoder_text for _, i, _ in mine])
        window = [(i, texts[k].astype(np.float16).astype(np.float32), ("click", "cart", "order").index(t), ts)
                  for k, (ts, i, t) in enumerate(mine)]  # fmt: skip
        expected = model.user_vectors_of([window])[0]
        np.testing.assert_allclose(final["sequence"]["vector"], expected, atol=2e-4)


@pytest.mark.integration
def test_a_newer_trainer_takes_over_the_model_topic_and_the_older_one_stops(kafka_bootstrap, tmp_path):
    """Two trainers of one app (a rolling update's overlap, or a second one started by mistake) both
    published, each its own snapshots, and workers served whichever came last. Their producers share a
    transactional id: the newer trainer's start fences the older one, whose next snapshot is aborted, and
    which then stops (exit code 0) because the model topic's claim names the newer one."""
    run = uuid.uuid4().hex[:8]
    extra = {"INTEREST_PARTITIONS": "3", "INTEREST_MODEL_TOPIC": f"t-{run}-model",
             "INTEREST_MODEL_SYNC_S": "2"}  # fmt: skip
    env_a = worker_env(kafka_bootstrap, f"t-{run}", tmp_path / "a", **extra)
    env_b = dict(env_a, INTEREST_STATE_DIR=str(tmp_path / "b" / "state"))  # its own checkpoint, the same app
    settings = Settings.load(env_a)
    ensure_topics(settings)
    records = sorted(movielens_events(max_users=8), key=lambda r: (r[1]["ts"], r[1]["event_id"]))
    half = len(records) // 2
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    send_items(producer, settings, movielens_items(), {e["item_id"] for _, e in records})
    send_events(producer, settings, records[:half])
    log_a, log_b = tmp_path / "trainer-a.log", tmp_path / "trainer-b.log"

    def claimed(log: Path) -> str | None:
        found = re.search(r"trainer (\S+) claimed the model topic", log.read_text(errors="replace"))
        return found.group(1) if found else None

    def last() -> dict:
        snaps = model_snapshots(kafka_bootstrap, settings.model_topic)
        return snaps[-1][0] if snaps else {}

    a = start_trainer(env_a, log_a)
    b = None
    try:
        wait_for(lambda: last().get("learned_events") == half, 180, "trainer A's snapshot", log_a)
        assert last()["trainer"] == claimed(log_a)
        b = start_trainer(env_b, log_b)
        wait_for(lambda: claimed(log_b) is not None or b.poll() is not None, 120, "trainer B's claim", log_b)
        send_events(producer, settings, records[half:])  # A learns them too, and tries to publish them
        assert a.wait(120) == 0, log_a.read_text(errors="replace")[-3000:]
        said = log_a.read_text(errors="replace")
        assert f"trainer {claimed(log_b)} took over the model topic" in said
        assert "Traceback" not in said and "never retrieved" not in said, said[-3000:]  # no fault
        wait_for(lambda: last().get("learned_events") == len(records), 180, "B's snapshot of all", log_b)
    finally:
        for proc in (a, b):
            if proc is not None:
                stop_worker(proc)
        producer.close()
    # What workers read: from B's claim on, B's snapshots only (A's last one was aborted).
    topic = model_records(kafka_bootstrap, settings.model_topic)
    since = max(i for i, (k, v) in enumerate(topic) if k == model_sync.CLAIM_KEY)
    assert json.loads(topic[since][1])["instance"] == claimed(log_b)
    after = [json.loads(v)["trainer"] for k, v in topic[since:] if k == model_sync.MANIFEST_KEY]
    assert after and set(after) == {claimed(log_b)}
    assert last() == json.loads(topic[-1][1]) and last()["trainer"] == claimed(log_b)


@pytest.mark.integration
def test_a_trainer_that_lost_its_checkpoint_goes_on_from_the_published_snapshot(kafka_bootstrap, tmp_path):
    """A trainer whose checkpoint is gone (a new volume, a lost disk) learned everything again from the
    input topics' beginnings: what retention had deleted was lost from the model for good, and until it
    caught up the trainer published younger models than the one workers served. It now goes on from the
    newest snapshot on the model topic (which names the input positions it learned up to), rebuilding the
    users' windows from what the topics still hold."""
    import torch
    from kafka import KafkaAdminClient, TopicPartition

    from models.ranker import RecentItems

    run = uuid.uuid4().hex[:8]
    extra = {"INTEREST_PARTITIONS": "3", "INTEREST_MODEL_TOPIC": f"l-{run}-model",
             "INTEREST_MODEL_SYNC_S": "2"}  # fmt: skip
    env = worker_env(kafka_bootstrap, f"l-{run}", tmp_path, **extra)
    settings = Settings.load(env)
    ensure_topics(settings)
    trainer_dir = Path(settings.state_dir).parent / "trainer"  # where `train` keeps its checkpoint
    records = sorted(movielens_events(max_users=8), key=lambda r: (r[1]["ts"], r[1]["event_id"]))
    third = len(records) // 3
    parts = [records[:third], records[third : 2 * third], records[2 * third :]]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    send_items(producer, settings, movielens_items(), {e["item_id"] for _, e in records})
    log = tmp_path / "trainer.log"

    def learned() -> int:
        snaps = model_snapshots(kafka_bootstrap, settings.model_topic)
        return snaps[-1][0]["learned_events"] if snaps else -1

    def train_until(count: int) -> dict:
        """A trainer on a fresh volume, run until a snapshot has learned ``count`` events; its checkpoint."""
        shutil.rmtree(trainer_dir, ignore_errors=True)
        trainer = start_trainer(env, log)
        try:
            wait_for(lambda: learned() == count, 180, f"a snapshot of {count} events", log)
        finally:
            stop_worker(trainer)
        return torch.load(trainer_dir / "trainer-checkpoint.pt", weights_only=False)

    send_events(producer, settings, parts[0])
    train_until(len(parts[0]))
    send_events(producer, settings, parts[1])
    saved = train_until(2 * third)  # went on from the first trainer's snapshot
    assert log.read_text().count("going on from the model topic's snapshot") == 1
    # the windows it rebuilt from the topics are exactly the ones learning every event would leave
    expected = RecentItems(settings.model.history_len)
    for _, e in records[: 2 * third]:
        expected.add(e["user_id"], e["ts"], e["item_id"])
    rebuilt = RecentItems(settings.model.history_len)
    rebuilt.restore(saved["recent_items"], NextItemRanker.from_bytes(saved["ranker"], settings.model).ids)
    assert rebuilt.of == expected.of
    model = SequenceModel.from_bytes(saved["weights"])
    model.restore_histories(saved["histories"])
    window = SequenceConfig().max_len + 1
    counts = {u: sum(e["user_id"] == u for _, e in records[: 2 * third]) for u in expected.of}
    assert {u: len(h) for u, h in model.history.items()} == {u: min(n, window) for u, n in counts.items()}
    # retention deletes everything sent so far: a trainer starting from scratch could not learn it again
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    ends = {tp: saved["positions"][(tp.topic, tp.partition)]
            for tp in (TopicPartition(t, p) for t, p in saved["positions"])}  # fmt: skip
    admin.delete_records({tp: end for tp, end in ends.items() if end > 0})
    admin.close()
    send_events(producer, settings, parts[2])
    train_until(len(records))
    producer.close()

    # every snapshot the three trainers published, in order: none younger than the one before it
    line = r"published model snapshot (\d+) \(.*?, (\d+) events learned"
    published = [(int(n), int(e)) for n, e in re.findall(line, log.read_text())]
    assert [n for n, _ in published] == list(range(1, len(published) + 1))
    assert [e for _, e in published] == sorted(e for _, e in published)
    _, raw = model_snapshots(kafka_bootstrap, settings.model_topic)[-1]
    ranker = NextItemRanker.from_bytes(model_sync.unbundle(raw)[1], settings.model)
    counted: dict[str, int] = {}
    for _, e in records:
        counted[e["item_id"]] = counted.get(e["item_id"], 0) + 1
    assert {i: int(ranker._pop[ranker.index[i]]) for i in counted} == counted  # every event once
    assert log.read_text().count("going on from the model topic's snapshot") == 2


def _fake_vectors(items, dim: int = 8) -> dict[str, np.ndarray]:
    out = {}
    for item in items:
        v = np.random.default_rng(zlib.crc32(item.encoder_text.encode())).normal(size=dim).astype(np.float32)
        out[item.encoder_text] = v / np.linalg.norm(v)
    return out


def _same_top(got: list[tuple[str, float]], scores: dict[str, float], k: int) -> None:
    """``got`` is a top ``k`` of ``scores``: the same scores in order, the same items up to exact ties."""
    ranked = sorted(scores.values(), reverse=True)[:k]
    np.testing.assert_allclose([s for _, s in got], ranked, rtol=1e-9)
    for item, score in got:
        assert scores[item] == pytest.approx(score, rel=1e-9)
    assert len({i for i, _ in got}) == k


def test_a_trainer_adds_a_large_catalogue_over_several_snapshots_in_its_order(tmp_path):
    """A new trainer encoded its whole catalogue before its first snapshot (~25 s for the MovieLens
    titles on two cores, minutes for 100,000 items): workers served no model meanwhile, and a trainer
    stopped then ran out its grace. ``add_catalogue`` now stops once its time budget is spent, after at
    least one chunk, and the next calls add the rest, in the order one unbounded call adds them."""
    from types import SimpleNamespace

    from models.config import InterestConfig

    items = {str(n): Item(f"title {n}", text=f"text {n}") for n in range(700)}
    vectors = _fake_vectors(items.values())
    embed = lambda chunk: {i.encoder_text: vectors[i.encoder_text] for i in chunk}  # noqa: E731
    core = SimpleNamespace(dim=8, config=InterestConfig(), embed=embed)
    catalog = SimpleNamespace(items=lambda: iter(items.items()))
    whole = model_sync.Trainer(Settings.load({}), core, catalog, tmp_path / "whole")
    assert whole.add_catalogue() == (700, 0)
    parts = model_sync.Trainer(Settings.load({}), core, catalog, tmp_path / "parts")
    assert [parts.add_catalogue(budget_s=0) for _ in range(4)] == [(256, 444), (256, 188), (188, 0), (0, 0)]
    assert parts.ranker.ids == whole.ranker.ids
    np.testing.assert_array_equal(parts.ranker.text_vectors(), whole.ranker.text_vectors())


def test_an_idle_trainer_publishes_again_for_catalogue_items_its_ranker_lacks(tmp_path):
    """What a snapshot had no time to add, and items published while no event comes, make an idle
    trainer publish (``catalogue_pending``), so workers can recommend them by their text; a trainer that
    has learned nothing publishes no model for them."""
    from types import SimpleNamespace

    from models.config import InterestConfig

    items = {str(n): Item(f"title {n}", text=f"text {n}") for n in range(300)}
    vectors = _fake_vectors(items.values())
    embed = lambda chunk: {i.encoder_text: vectors[i.encoder_text] for i in chunk}  # noqa: E731
    core = SimpleNamespace(dim=8, config=InterestConfig(), embed=embed)
    catalog = SimpleNamespace(items=lambda: iter(items.items()), ids=lambda: iter(items))
    trainer = model_sync.Trainer(Settings.load({}), core, catalog, tmp_path)
    assert not trainer.catalogue_pending()  # nothing learned: no model to publish
    trainer.model.learned_events = 1  # as after its first micro-batch
    assert trainer.catalogue_pending()
    assert trainer.add_catalogue(budget_s=0) == (256, 44) and trainer.catalogue_pending()
    assert trainer.add_catalogue(budget_s=0) == (44, 0) and not trainer.catalogue_pending()
    items["new"] = Item("a new title")
    vectors.update(_fake_vectors([items["new"]]))
    assert trainer.catalogue_pending()


def test_the_trainers_ranker_is_evaluates_default_ranker_and_a_worker_serves_it(tmp_path):
    """What the trainer counts from a stream in event-time order is the ranker ``evaluate`` builds as its
    ``default`` model, and a worker serving the snapshot recommends what that model ranks."""
    from types import SimpleNamespace

    from evaluation.data import load_movielens
    from evaluation.scorers import CoreModel
    from models.config import InterestConfig
    from models.core import InterestCore

    log = load_movielens(REPO / "data" / "ml-latest-small")
    events = log.events[:1500]
    catalogue = {e.item_id: item for e, item in log.events}
    vectors = _fake_vectors(catalogue.values())
    core = InterestCore(InterestConfig(), SimpleNamespace(dim=8, name="fake"))
    reference = CoreModel("default", core, list(catalogue), np.stack([vectors[i.encoder_text] for i in
                          catalogue.values()]), vectors)  # fmt: skip
    embed = lambda items: {i.encoder_text: vectors[i.encoder_text] for i in items}  # noqa: E731
    fake_core = SimpleNamespace(dim=8, config=core.config, embed=embed)
    catalog = SimpleNamespace(get=catalogue.get, items=lambda: iter(catalogue.items()))
    trainer = model_sync.Trainer(Settings.load({}), fake_core, catalog, tmp_path)
    trainer.model.config = dataclasses.replace(trainer.model.config, steps=0)  # the ranker is under test
    for start in range(0, len(events), 256):
        batch = events[start : start + 256]
        reference.learn(batch)
        trainer.learn(list(batch))
    assert trainer.add_catalogue() == (len(catalogue) - len({e.item_id for e, _ in events}), 0)
    ours, theirs = trainer.ranker, reference.ranker
    assert sorted(ours.ids) == sorted(theirs.ids)
    for item in theirs.ids:
        i, j = ours.index[item], theirs.index[item]
        assert ours._pop[i] == theirs._pop[j] and ours._out[i] == pytest.approx(theirs._out[j], rel=1e-12)
        assert {ours.ids[c]: w for c, w in ours.successors[i].items()} == pytest.approx(
            {theirs.ids[c]: w for c, w in theirs.successors[j].items()}, rel=1e-12)  # fmt: skip

    served = ServedModel("unused:9092", "interest-model", config=core.config)
    raw = model_sync.bundle(trainer.model.to_bytes(), ours.to_bytes())
    for key, value in snapshot_records(raw, 1, trainer.model.learned_events):
        served._apply(key, value)
    assert served.ranker is not None and served.ranker.n_items == len(catalogue)
    checked = 0
    for user, state in reference.states.items():
        if len(state.recent_items) >= 50:  # the worker leaves out the 50 items a state keeps; evaluate all
            continue
        got = served.recommend(state, 10)
        scores = reference.scores(user)
        seen = {e.item_id for e, _ in events if e.user_id == user}
        _same_top(got, {i: float(s) for i, s in zip(catalogue, scores, strict=True) if i not in seen}, 10)
        checked += 1
    assert checked >= 10

    # With the user's vector from the snapshot's sequential model, the list is evaluate's ``Mix`` of that
    # model's scores and the default model's, at the configured share.
    from evaluation.scorers import Mix

    assert served.item_vectors is not None and served.item_vectors.shape == (len(catalogue), 64)
    text = np.stack([vectors[i.encoder_text] for i in catalogue.values()])
    model_scores = served.model.item_vectors_of(list(catalogue), text)  # catalogue order, as evaluate
    mixed_checked = 0
    for user, state in reference.states.items():
        if len(state.recent_items) >= 50:
            continue
        u = served.user_vectors({user: state}, served.model)[user]
        model_scorer = SimpleNamespace(scores=lambda _user, u=u: model_scores @ u)
        mixed = Mix("mix", model_scorer, reference, core.config.sequence_mix).scores(user)
        got = served.recommend(state, 10, u)
        seen = {e.item_id for e, _ in events if e.user_id == user}
        expected = sorted(((float(s), i) for i, s in zip(catalogue, mixed, strict=True) if i not in seen),
                          reverse=True)[:10]  # fmt: skip
        np.testing.assert_allclose([s for _, s in got], [s for s, _ in expected], rtol=1e-5)
        assert got != served.recommend(state, 10)  # the model's share changed the list
        mixed_checked += 1
    assert mixed_checked >= 10


def test_a_workers_snapshots_search_the_text_index_with_the_threads_it_was_given():
    rng = np.random.default_rng(0)
    served = ServedModel("unused:9092", "interest-model", search_threads=3)
    ranker = NextItemRanker(served.config, 16)
    for version, n_items in ((1, 40), (2, 60)):  # the second snapshot extends the first's index
        vectors = rng.normal(size=(n_items, 16))
        ranker.add_items((f"i{k}", v / np.linalg.norm(v)) for k, v in enumerate(vectors))
        raw = model_sync.bundle(SequenceModel(16).to_bytes(), ranker.to_bytes())
        for key, value in snapshot_records(raw, version, 0):
            served._apply(key, value)
        assert served.ranker is not None and served.ranker.n_items == n_items
        assert served.ranker.text_index is not None and served.ranker.text_index.search_threads == 3


def test_a_trainer_resumes_where_its_checkpoint_says_unless_the_broker_lost_what_it_counted_in():
    saved = {("click", 0): 500, ("click", 1): 300, ("order", 0): 90}
    ends = {("click", 0): 800, ("click", 1): 200, ("order", 0): 90, ("order", 1): 40}
    same = {"click": "id-c", "order": "id-o"}
    starts, notes = resume_positions(saved, same, same, ends)
    # click[1] lost records past 200 in the same topic: what comes next is numbered from 200
    assert starts == {("click", 0): 500, ("click", 1): 200, ("order", 0): 90, ("order", 1): None}
    assert len(notes) == 1 and "click[1] ends at 200" in notes[0]

    starts, notes = resume_positions(saved, same, {"click": "id-c2", "order": "id-o"}, ends)
    assert starts == {("click", 0): None, ("click", 1): None, ("order", 0): 90, ("order", 1): None}
    assert len(notes) == 1 and "click was recreated" in notes[0]

    # a checkpoint from before topic ids were kept: past the end, most likely a recreated topic
    starts, notes = resume_positions(saved, {}, same, ends)
    assert starts[("click", 0)] == 500 and starts[("click", 1)] is None
    assert recreated_topics({}, same) == [] and recreated_topics(same, {"click": None}) == []


def test_the_trainer_takes_the_steps_it_is_set_to_also_when_it_resumes_from_a_checkpoint(tmp_path):
    from types import SimpleNamespace

    def trainer(steps: str) -> model_sync.Trainer:
        settings = Settings.load({"INTEREST_TRAINER_STEPS": steps})
        return model_sync.Trainer(settings, SimpleNamespace(dim=8, config=settings.model), None, tmp_path)

    first = trainer("1")
    assert first.model.config.steps == 1
    first._save(first.model.to_bytes(), first.ranker.to_bytes())  # its snapshot's config says 1 step
    assert trainer("3").model.config.steps == 3
    assert trainer("0").model.config.steps == SequenceConfig().steps == 2  # unset: the default again


def test_a_trainer_goes_on_only_from_a_snapshot_that_is_ahead_names_its_positions_and_fits_its_encoder(
    tmp_path, monkeypatch
):
    import asyncio
    from types import SimpleNamespace

    settings = Settings.load({})
    monkeypatch.setattr(model_sync, "_topic_ids_now", lambda _settings: None)

    def published(dim: int, learned: int, positions=None) -> tuple[dict, bytes]:  # noqa: ANN001
        model = SequenceModel(dim)
        model.learned_events = learned
        raw = model_sync.bundle(model.to_bytes(), NextItemRanker(settings.model, dim).to_bytes())
        records = snapshot_records(raw, 7, learned, "elsewhere:1:x", positions, {"click": "id-c"})
        return json.loads(list(records)[-1][1]), raw

    def go_on(snapshot: tuple[dict, bytes] | None) -> tuple[bool, model_sync.Trainer]:
        monkeypatch.setattr(model_sync, "latest_snapshot", lambda _settings: snapshot)
        trainer = model_sync.Trainer(settings, SimpleNamespace(dim=8, config=settings.model), None, tmp_path)
        return asyncio.run(trainer.go_on_from_topic(None, {"click": "id-c"}, {})), trainer

    assert go_on(None)[0] is False  # nothing published yet: learn from the beginning
    assert go_on(published(8, 40))[0] is False  # published before manifests named their positions
    assert go_on(published(16, 40, {("click", 0): 40}))[0] is False  # another encoder's text vectors
    done, trainer = go_on(published(8, 40, {("click", 0): 30, ("click", 1): 10}))
    assert done and trainer.snapshot_id == 7 and trainer.model.learned_events == 40
    assert trainer.positions == {("click", 0): 30, ("click", 1): 10} and trainer.topic_ids == {
        "click": "id-c"
    }
    # a checkpoint that has learned as much as the topic's snapshot stays (it has the optimiser's moments)
    trainer._save(trainer.model.to_bytes(), trainer.ranker.to_bytes())
    assert go_on(published(8, 40, {("click", 0): 40}))[0] is False
    assert go_on(published(8, 41, {("click", 0): 41}))[0] is True
