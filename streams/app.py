"""The Faust app: topics and tables. The agent lives in ``streams.agents``.

Run it with ``interest-stream worker`` or ``faust -A streams.app worker -l info``.

State:
- ``user-state`` table: per-user ``UserState`` bytes, keyed by user_id, changelog-backed, RocksDB.
- ``heads`` table: one softmax-head replica per input partition (key = partition number), so a
  partition's head moves with it on a rebalance and survives restarts.
- item catalog: every worker reads the whole compacted ``items`` topic (``streams.catalog``), since
  user-keyed partitions never line up with item keys.
- the item-embedding cache is a plain RocksDB under the state dir (derived data; see models/cache.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust

from streams.settings import Settings

settings = Settings.load()
Path(settings.state_dir).mkdir(parents=True, exist_ok=True)

# Each table partition opens its own RocksDB with a 2 GiB block cache by default; keep it small.
_ROCKS = {"block_cache_size": 16 * 1024**2, "block_cache_compressed_size": 4 * 1024**2}

app = faust.App(
    settings.app_id,
    broker=[f"kafka://{host.strip()}" for host in settings.broker.split(",")],
    store="rocksdb://",
    datadir=str(Path(settings.state_dir) / "faust"),
    topic_partitions=settings.partitions,
    topic_replication_factor=1,
    web_port=settings.web_port,
    autodiscover=False,
    key_serializer="raw",
    value_serializer="raw",
    # What gets committed is decided by streams.checkpoint (offsets whose effects are durable).
    consumer_group_instance_id=settings.group_instance_id,
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=max(settings.session_timeout_s / 5, 1.0),
    consumer_max_fetch_size=settings.max_fetch_bytes,
    producer_max_request_size=2 * 1024**2,  # a dead letter of a record near the broker's 1 MB limit
    # A micro-batch writes a state (~2 KB) and an update (~4 KB) per user. With faust's default batch of
    # 16 KB per partition, that is three records per produce request, and one request in flight per
    # broker: the worker waited on round trips. A batch per partition now holds a whole micro-batch.
    producer_max_batch_size=1024**2,
)

# internal=True: faust creates the topics (with these partitions) when they are missing, so
# `faust -A streams.app worker` works on an empty broker too.
event_topic = app.topic(*settings.event_topics, partitions=settings.partitions, internal=True)
updates_topic = app.topic(settings.updates_topic, partitions=settings.partitions)
dlq_topic = app.topic(settings.dlq_topic, partitions=settings.partitions)


class DurableTable(faust.Table):
    """A table whose changelog records can be awaited until the broker has them.

    faust sends changelog records through a background buffer, and its ``producer.flush()`` gives up
    after 0.1 s without progress (``ProducerBuffer.flush_atmost``), so a commit can overtake them; after
    a crash the offsets are committed and the state is gone. The agent awaits ``take_unacknowledged()`` before
    it counts a batch as done (``streams.checkpoint``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged: list[asyncio.Future] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unacknowledged.append(fut)
        return fut

    def take_unacknowledged(self) -> list[asyncio.Future]:
        """The changelog sends since the last call (the caller awaits or drops them)."""
        pending, self._unacknowledged = self._unacknowledged, []
        return pending


# bytes key/value types make faust use the raw codec: we serialize states ourselves (compactly).
def durable_table(name: str) -> DurableTable:
    table = DurableTable(app, name=name, beacon=app.tables.beacon, key_type=bytes, value_type=bytes,
                         partitions=settings.partitions, options=_ROCKS)  # fmt: skip
    return app.tables.add(table)


user_states = durable_table("user-state")
heads = durable_table("heads")

from streams import agents  # noqa: E402,F401  (registers the agent and the query API with the app)
