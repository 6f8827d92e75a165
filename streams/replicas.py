"""One softmax head for all workers: each partition's replica folds in the others now and then.

Users are partitioned, the head is not: each input partition trains its own replica (the ``heads``
table, which moves with its partition). The replicas are already published: the table's changelog is a
compacted topic, key = partition, value = the replica. Every worker follows that topic whole (like the
item catalog) and, at most every ``head_sync_s`` seconds per partition, folds the latest of the other
replicas into the one it is about to train (``SoftmaxHead.fold_in``: example-weighted averaging, classes
aligned by name, each replica keeping its own counts). Federated averaging through Kafka: no extra topic,
no coordinator. A replica's view of the others is at most ``head_sync_s`` plus the changelog's lag old.
"""

from __future__ import annotations

import logging
import math
import time

from models.head import SoftmaxHead
from streams.catalog import follow_topic

log = logging.getLogger("interest_stream.replicas")


class HeadExchange:
    def __init__(self, bootstrap: str, changelog_topic: str, sync_s: float) -> None:
        self.bootstrap = bootstrap
        self.topic = changelog_topic
        self.sync_s = sync_s
        self.latest: dict[int, bytes] = {}  # partition -> its replica, as last written
        self._folded_at: dict[int, float] = {}
        self.folds = 0

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self.latest.pop(int(key), None)
        else:
            self.latest[int(key)] = value

    async def run(self) -> None:
        if self.sync_s > 0:
            await follow_topic(self.bootstrap, self.topic, self._apply)

    def maybe_fold(self, head: SoftmaxHead, partition: int) -> bool:
        """Fold the other partitions' replicas into ``head`` if ``sync_s`` has passed for this one."""
        if self.sync_s <= 0:
            return False
        now = time.monotonic()
        if now - self._folded_at.get(partition, -math.inf) < self.sync_s:
            return False
        self._folded_at[partition] = now
        others = []
        for p, raw in list(self.latest.items()):
            if p == partition:
                continue
            other = SoftmaxHead.from_bytes(raw)
            if other.n_features == head.n_features:
                others.append(other)
        head.fold_in(others)
        self.folds += bool(others)
        return bool(others)
