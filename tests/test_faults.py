"""The fault-injection suite at CI size: every scenario of ``tests/faults.py`` on a real broker, asserting
nothing lost, nothing applied twice, no version going backwards, no worker dying of its input.

The full-size run (20 kills in 100,000 events, ...) is ``make faults``, which writes
``benchmarks/results/faults.md``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from test_integration import REPO, start_worker, wait_for, worker_env, worker_ready
from test_model_sync import model_snapshots, start_trainer

from streams.devbroker import LocalBroker
from streams.settings import Settings

pytestmark = pytest.mark.integration


def check(tally: faults.Tally) -> None:
    print(f"\n{tally.row()}\n{tally.notes}")
    assert tally.unique_events > 0 and tally.users > 0
    assert tally.lost == 0, tally.notes
    assert tally.applied_twice == 0, tally.notes
    assert tally.users_wrong == 0, tally.notes
    assert tally.last_update_missing == 0, tally.notes
    assert tally.versions_backwards == 0
    assert tally.worker_deaths == 0


def test_kill_9_at_random_moments(kafka_bootstrap, encoder, tmp_path):
    tally = faults.kill9(kafka_bootstrap, tmp_path, encoder, events=6000, users=300, kills=4)
    check(tally)
    assert len(tally.recovery_s) >= 2  # the kills really hit a working worker


def test_workers_join_die_and_leave(kafka_bootstrap, encoder, tmp_path):
    check(faults.several_workers(kafka_bootstrap, tmp_path, encoder, events=8000, users=400, rate=250))


def test_broker_restarts_with_and_without_its_data(encoder, tmp_path):
    broker = LocalBroker(tmp_path / "own-broker")
    broker.start()
    try:
        kept, wiped = faults.broker_restarts(broker, tmp_path, encoder, events=3000, users=200)
    finally:
        broker.stop()
    check(kept)
    check(wiped)
    assert any("explains the lost state: yes" in note for note in wiped.notes), wiped.notes


def test_deleted_state_folder_is_rebuilt_from_the_changelog(kafka_bootstrap, encoder, tmp_path):
    check(faults.lost_state_dir(kafka_bootstrap, tmp_path, encoder, users=500))


def test_poison_fuzzed_and_misrouted_input(kafka_bootstrap, encoder, tmp_path):
    tally = faults.hostile_input(kafka_bootstrap, tmp_path, encoder, fuzzed=500)
    check(tally)
    assert tally.dead_lettered > 4  # the four hand-made bad records and the fuzzed rejects


def test_flood_drains_without_loss(kafka_bootstrap, encoder, tmp_path):
    check(faults.backpressure(kafka_bootstrap, tmp_path, encoder, seconds=3, users=1000))


def stops_within_its_grace(proc: subprocess.Popen, log: Path, grace_s: float) -> None:
    """SIGTERM ``proc``, whose broker is gone: it must exit within ``grace_s`` (and some slack), and if
    its stop could not finish, say that it exited as ``kill -9`` would."""
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still stopping 60 s after SIGTERM:\n{log.read_text(errors='replace')[-3000:]}")
    took = time.monotonic() - asked
    assert took < grace_s + 15, took
    if code != 0:  # it did not stop by itself: the grace ran out, and it said so
        assert "exiting now, as kill -9 would" in log.read_text(errors="replace")


def test_a_worker_asked_to_stop_after_its_broker_went_away_exits_within_its_grace(tmp_path):
    """faust's stop waits for the batch in hand, which waits for the broker's acknowledgement: with the
    broker gone, a worker was still stopping 150 s after SIGTERM. ``INTEREST_STOP_GRACE_S`` bounds that
    (and an exit then is a kill -9, which the scenarios above show loses nothing)."""
    broker = LocalBroker(tmp_path / "own-broker")
    info = broker.start()
    proc = None
    try:
        env = worker_env(info.bootstrap, "stop-grace", tmp_path, INTEREST_STOP_GRACE_S="5")
        subprocess.run([sys.executable, "-m", "streams.cli", "produce", "--movielens", "--quiet", "--limit",
                        "30000"], env=env, cwd=REPO, check=True, capture_output=True)  # fmt: skip
        log = tmp_path / "worker.log"
        proc = start_worker(env, log)
        port = int(env["INTEREST_WEB_PORT"])
        wait_for(lambda: worker_ready(port).get("applied", 0) > 1000, 180, "the worker applying", log)
        broker.stop()  # in the middle of the backlog
        time.sleep(3)
        stops_within_its_grace(proc, log, 5)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()


PUBLISHED = re.compile(r"published model snapshot \d+ \(.*?, (\d+) events learned")


def test_a_trainer_outlives_its_broker_going_away_and_its_stop_is_bounded(tmp_path):
    """A trainer whose snapshot the broker did not take within the producer's request timeout (40 s;
    ``INTEREST_MODEL_PUBLISH_TIMEOUT_S`` now, lowered here so the outage is short) died of it
    (``KafkaTimeoutError`` out of ``publish``), and the workers served its last snapshot for good. Now it
    says so, keeps its checkpoint and publishes once the broker is back, having learned every event
    exactly once; asked to stop while the broker is gone, it exits within its grace."""
    broker = LocalBroker(tmp_path / "own-broker")
    info = broker.start()
    proc = None
    events = 30_000
    try:
        env = worker_env(info.bootstrap, "trainer-outage", tmp_path, INTEREST_MODEL_SYNC_S="2",
                         INTEREST_STOP_GRACE_S="5", INTEREST_MODEL_PUBLISH_TIMEOUT_S="8")  # fmt: skip
        produce = [sys.executable, "-m", "streams.cli", "produce", "--movielens", "--quiet", "--limit"]
        subprocess.run([*produce, str(events)], env=env, cwd=REPO, check=True, capture_output=True)
        log = tmp_path / "trainer.log"
        proc = start_trainer(env, log)

        def text() -> str:
            return log.read_text(errors="replace")

        def learned() -> list[int]:
            return [int(n) for n in PUBLISHED.findall(text())]

        wait_for(lambda: learned() or proc.poll() is not None, 240, "the trainer's first snapshot", log)
        assert proc.poll() is None, text()[-3000:]
        assert learned()[0] < events, "learned everything before the broker went away: nothing to try"

        broker.stop()  # mid-backlog: what it learns next cannot go out
        wait_for(lambda: "could not publish model snapshot" in text() or proc.poll() is not None, 120,
                 "a publish the broker did not take", log)  # fmt: skip
        time.sleep(3)
        assert proc.poll() is None, f"the trainer died of its broker's absence:\n{text()[-3000:]}"
        assert "did not finish within 8 s" in text()  # the timeout set, not aiokafka's own

        broker.start()
        wait_for(lambda: events in learned() or proc.poll() is not None, 240, "every event learned", log)
        assert proc.poll() is None, text()[-3000:]
        assert max(learned()) == events  # each exactly once, across the outage

        subprocess.run([*produce, "3000"], env=env, cwd=REPO, check=True, capture_output=True)
        broker.stop()  # the trainer holds new events it cannot publish
        stops_within_its_grace(proc, log, 5)

        broker.start()  # a new trainer goes on from the checkpoint: nothing lost, nothing learned twice
        proc = start_trainer(env, log)
        wait_for(lambda: events + 3000 in learned() or proc.poll() is not None, 240, "the rest learned", log)
        assert max(learned()) == events + 3000, text()[-3000:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()


def test_a_trainer_whose_broker_lost_its_data_learns_the_new_history_whole(tmp_path):
    """The trainer resumes from the input positions in its checkpoint. A broker that lost its data (wiped,
    rebuilt, its topics recreated) numbers new records from 0 again, so those positions pointed into other
    records: a trainer restarted after such a loss skipped as many new events as it had learned before
    (here 3,000 of 5,000). Now a recreated topic (a new topic id) is read from its beginning, whether the
    loss happened while the trainer was stopped or while it ran (it then exits with code 3, without a
    checkpoint, and its restart reads the new topics whole)."""
    broker = LocalBroker(tmp_path / "own-broker")
    info = broker.start()
    port = int(info.bootstrap.rsplit(":", 1)[1])
    proc = None
    try:
        env = worker_env(info.bootstrap, "trainer-wiped", tmp_path, INTEREST_MODEL_SYNC_S="2")
        settings = Settings.load(env)
        produce = [sys.executable, "-m", "streams.cli", "produce", "--movielens", "--quiet", "--limit"]
        log = tmp_path / "trainer.log"

        def text() -> str:
            return log.read_text(errors="replace")

        def learned() -> list[int]:
            return [int(n) for n in PUBLISHED.findall(text())]

        def lose_the_data_and_produce(events: int) -> None:
            broker.stop()
            broker.start(port=port, fresh=True)  # the same address, none of the data
            if events:
                subprocess.run([*produce, str(events)], env=env, cwd=REPO, check=True, capture_output=True)

        subprocess.run([*produce, "3000"], env=env, cwd=REPO, check=True, capture_output=True)
        proc = start_trainer(env, log)
        wait_for(lambda: 3000 in learned() or proc.poll() is not None, 240, "the first events learned", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0

        # While the trainer is stopped: the new topics hold more records than its checkpoint had read.
        lose_the_data_and_produce(5000)
        proc = start_trainer(env, log)
        wait_for(lambda: 8000 in learned() or proc.poll() is not None, 120, "every new event learned", log)
        assert max(learned()) == 8000, text()[-3000:]
        assert "was recreated" in text()

        # While it runs, and no event comes: it notices within a sync interval (the model topic is gone),
        # declares the topics again and exits for a restart, which puts the snapshot it holds in the new
        # model topic before any new event (workers starting meanwhile would otherwise serve no model).
        lose_the_data_and_produce(0)
        assert proc.wait(120) == 3, text()[-3000:]
        assert "recreated while the trainer read them" in text()
        proc = start_trainer(env, log)
        wait_for(lambda: model_snapshots(info.bootstrap, settings.model_topic) or proc.poll() is not None,
                 120, "the snapshot published again", log)  # fmt: skip
        assert model_snapshots(info.bootstrap, settings.model_topic)[-1][0]["learned_events"] == 8000

        subprocess.run([*produce, "10000"], env=env, cwd=REPO, check=True, capture_output=True)
        wait_for(lambda: 18_000 in learned() or proc.poll() is not None, 120, "the rest learned", log)
        assert max(learned()) == 18_000, text()[-3000:]

        # The model topic alone deleted (by hand, say): declared again as it should be, with the snapshot.
        admin = KafkaAdminClient(bootstrap_servers=info.bootstrap)
        try:
            admin.delete_topics([settings.model_topic])
            wait_for(lambda: [m for m, _ in model_snapshots(info.bootstrap, settings.model_topic)]
                     or proc.poll() is not None, 120, "the model topic declared again", log)  # fmt: skip
            manifest = model_snapshots(info.bootstrap, settings.model_topic)[-1][0]
            assert manifest["learned_events"] == 18_000
            assert "does not hold the last snapshot" in text()
            resource = ConfigResource(ConfigResourceType.TOPIC, settings.model_topic)
            configs = admin.describe_configs([resource])["topic"][settings.model_topic]
            assert configs["cleanup.policy"]["value"] == "compact", configs
        finally:
            admin.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop()
