"""The fault-injection suite at CI size: every scenario of ``tests/faults.py`` on a real broker, asserting
nothing lost, nothing applied twice, no version going backwards, no worker dying of its input.

The full-size run (20 kills in 100,000 events, ...) is ``make faults``, which writes
``benchmarks/results/faults.md``.
"""

from __future__ import annotations

import faults
import pytest

from streams.devbroker import LocalBroker

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
