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
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faust
import rocksdict

from streams.rocks import CompressedRocksDB
from streams.settings import Settings, SettingsError

try:
    settings = Settings.load()
except SettingsError as exc:
    # `faust -A streams.app worker` imports this module through faust's loader: a traceback from here
    # buries the one line that names the bad setting. Same words and exit status as `interest-stream`.
    print(f"settings: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
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

    def __init__(self, *args: Any, compression: str = "none", **kwargs: Any) -> None:
        self.compression = compression  # of its RocksDB blocks (``CompressedRocksDB``), as its store opens
        super().__init__(*args, **kwargs)
        self._unacknowledged: list[asyncio.Future] = []
        self._persisted: dict[int, int] = {}  # partition -> last changelog offset written by set_many

    def _new_store_by_url(self, url: Any) -> Any:
        store = super()._new_store_by_url(url)
        if self.compression != "none" and store.use_rocksdict:  # the driver this project installs
            store.rocksdb_options = CompressedRocksDB(self.compression, **store.options)
        return store

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unacknowledged.append(fut)
        return fut

    def take_unacknowledged(self) -> list[asyncio.Future]:
        """The changelog sends since the last call (the caller awaits or drops them)."""
        pending, self._unacknowledged = self._unacknowledged, []
        return pending

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        """The values of ``keys`` in ``partition``'s store, in one RocksDB multi-get.

        ``table.get(key)`` reads one key, finding the partition through faust's current event; a batch
        that touches many users paid that per user."""
        return self.data._db_for_partition(partition).get(keys) if keys else []

    async def set_many(
        self, partition: int, items: dict[bytes, bytes], check: Callable[[], None] | None = None
    ) -> None:
        """Do what ``table[key] = value`` does for every item, in bulk: one RocksDB write batch into
        ``partition``'s store, then the changelog records as producer record batches (their futures join
        ``take_unacknowledged``), and, once the broker has them, the store's persisted changelog offset,
        which faust's recovery starts from.

        ``table[key] = value`` sends one record through faust's buffer, with a future, a callback and a
        second RocksDB write (the persisted offset) per key; with thousands of users per batch that was a
        large share of the worker's time. The records are the ones faust would send (raw key and value,
        the key's table partition), so recovery, standbys and ``streams.recovery`` read them as before.
        ``check`` runs before each changelog batch (``send_record_batches``): the caller's "do I still own
        this partition?".
        """
        if not items:
            return
        store = self.data
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in items.items():
            batch.put(key, value)
        store._db_for_partition(partition).write(batch)
        for key in items:
            store._key_index[key] = partition
        topic = self.changelog_topic.get_topic_name()
        tp = faust.types.TP(topic, partition)

        def persisted(sent: asyncio.Future, count: int) -> None:
            if not sent.cancelled() and sent.exception() is None:
                last = sent.result().offset + count - 1  # a batch's metadata carries its base offset
                if last > self._persisted.get(partition, -1):
                    self._persisted[partition] = last
                    store.set_persisted_offset(tp, last)

        for sent, count in await send_record_batches(topic, partition, items.items(), check):
            sent.add_done_callback(lambda f, n=count: persisted(f, n))
            self._unacknowledged.append(sent)


_last_batch: dict[tuple[str, int], asyncio.Future] = {}


async def partitions_of(topic: str) -> int:
    """How many partitions ``topic`` has, from the producer's metadata (fetched once if not known)."""
    producer = app.producer._ensure_producer()  # the aiokafka producer under faust's wrapper
    return len(await producer.client._wait_on_metadata(topic))


async def send_record_batches(
    topic: str,
    partition: int,
    records: Iterable[tuple[bytes, bytes]],
    check: Callable[[], None] | None = None,
) -> list[tuple[asyncio.Future, int]]:
    """Hand ``records`` (key, value) to the producer as record batches for one partition; return each
    batch's future (resolved when the broker has it) and its record count.

    One ``send`` per record costs aiokafka a future, a partitioner call and an accumulator lookup, and
    faust's ``Topic.send`` a channel and a future message on top: more than the record itself.

    A batch goes to the producer only once the previous batch of its partition is delivered, and
    ``check`` (which raises to stop) runs right before each one, after any wait: so a caller that must
    not write once its partitions are being handed over (a rebalance) stops between batches, instead of
    having aiokafka append a batch after the hand-over's flush."""
    producer = app.producer._ensure_producer()
    await producer.client._wait_on_metadata(topic)
    sent: list[tuple[asyncio.Future, int]] = []

    async def send(batch: Any, count: int) -> None:
        batch.close()
        previous = _last_batch.get((topic, partition))
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        if check is not None:
            check()
        future = await producer.send_batch(batch, topic, partition=partition)
        _last_batch[(topic, partition)] = future
        sent.append((future, count))

    batch, count = producer.create_batch(), 0
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
            await send(batch, count)
            batch, count = producer.create_batch(), 0
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit in a producer batch")
        count += 1
    if count:
        await send(batch, count)
    return sent


# bytes key/value types make faust use the raw codec: we serialize states ourselves (compactly).
def durable_table(name: str, compression: str = "none") -> DurableTable:
    table = DurableTable(app, name=name, beacon=app.tables.beacon, key_type=bytes, value_type=bytes,
                         partitions=settings.partitions, options=_ROCKS, compression=compression)  # fmt: skip
    return app.tables.add(table)


user_states = durable_table("user-state", settings.state_compression)
heads = durable_table("heads")  # float32 weights: nothing to gain

from streams import agents  # noqa: E402,F401  (registers the agent and the query API with the app)
