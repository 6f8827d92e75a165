"""The head exchange: a partition's replica folds in the others' latest, at most every head_sync_s."""

from __future__ import annotations

import numpy as np

from models.head import SoftmaxHead
from streams.replicas import HeadExchange


def replica(classes: list[str], value: float, n: int) -> SoftmaxHead:
    head = SoftmaxHead(3)
    head.add_classes(classes)
    head.W[:] = value
    head.stats.n = n
    return head


def test_a_replica_folds_in_the_others_latest_at_most_every_sync_interval():
    exchange = HeadExchange("unused:9092", "heads-changelog", sync_s=3600)
    exchange._apply(b"0", replica(["a"], 0.0, 10).to_bytes())  # its own last write: not folded in
    exchange._apply(b"1", replica(["a", "b"], 1.0, 30).to_bytes())
    exchange._apply(b"2", replica(["c"], 5.0, 1).to_bytes())
    exchange._apply(b"2", None)  # deleted: forgotten
    mine = replica(["a"], 2.0, 10)
    assert exchange.maybe_fold(mine, 0)
    assert mine.classes == ["a", "b"] and mine.stats.n == 10
    np.testing.assert_allclose(mine.W[:, 0], [0.25 * 2 + 0.75 * 1, 1.0])
    assert not exchange.maybe_fold(mine, 0)  # within the interval
    assert exchange.maybe_fold(replica(["a"], 0.0, 1), 1)  # another partition has its own clock


def test_sync_zero_keeps_replicas_apart():
    exchange = HeadExchange("unused:9092", "heads-changelog", sync_s=0)
    exchange._apply(b"1", replica(["b"], 1.0, 3).to_bytes())
    mine = replica(["a"], 2.0, 1)
    assert not exchange.maybe_fold(mine, 0) and mine.classes == ["a"]
