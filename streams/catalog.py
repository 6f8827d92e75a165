"""The item catalog: every worker reads the *whole* compacted ``items`` topic into a local RocksDB.

Events are partitioned by user, items by item id, so no partition alignment can give a worker the items
its users touch: each worker needs all of them. Faust's GlobalTable is the textbook tool, but with the
``items`` topic as its changelog its partition assignment never completed in our tests (faust-streaming
0.15.3; see also faust issue #432), so this is the small, explicit equivalent: an unassigned aiokafka
consumer over all ``items`` partitions, read from the beginning at every start (the topic is compacted,
so that is one record per item; a stored offset could silently point into a different, recreated topic),
and ``wait_caught_up`` so the agent can wait for the initial load and, when an
event names an item not seen yet, for the reader to reach the end of the topic before giving up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from rocksdict import Rdict

from models.events import InvalidEvent, Item, parse_item

log = logging.getLogger("interest_stream.catalog")
_BAD = b"\x00bad:"


class Catalog:
    def __init__(self, bootstrap: str, topic: str, path: str | Path, parsed_max: int = 100_000) -> None:
        self.path = Path(path)
        self.db: Rdict | None = None  # opened by run(): importing the app must not touch the disk
        self.bootstrap = bootstrap
        self.topic = topic
        self._positions: dict[int, int] = {}
        self._ends: dict[int, int] = {}
        self._progress = asyncio.Condition()
        self._ends_asked_at = -1.0  # monotonic time at which the current end offsets were requested
        self.loaded = 0
        self._parsed: OrderedDict[str, Item] = OrderedDict()  # item id -> item, least recently used first
        self.parsed_max = parsed_max

    def get(self, item_id: str) -> Item | None:
        """The item, parsed once: a worker looks its items up for every event, and reading and validating
        the stored JSON each time cost more than the rest of an event's work on a warm cache."""
        item = self._parsed.get(item_id)
        if item is not None:
            self._parsed.move_to_end(item_id)
            return item
        raw = self.db.get(item_id.encode()) if self.db is not None else None
        if raw is None:
            return None
        item = parse_item(json.loads(raw), "catalog item")
        self._parsed[item_id] = item
        if len(self._parsed) > self.parsed_max:
            self._parsed.popitem(last=False)
        return item

    def items(self) -> Iterator[tuple[str, Item]]:
        """Every accepted catalogue item (id, item), in key order."""
        if self.db is None:
            return
        for key, raw in self.db.items():
            if not key.startswith(_BAD):
                yield key.decode(), parse_item(json.loads(raw), "catalog item")

    def ids(self) -> Iterator[str]:
        """Every accepted catalogue item's id, in key order, without parsing the items."""
        if self.db is None:
            return
        for key in self.db.keys():  # noqa: SIM118 - an Rdict is not iterable; keys() reads no values
            if not key.startswith(_BAD):
                yield key.decode()

    def why_missing(self, item_id: str) -> str | None:
        """The validation error of a rejected catalog entry for this id, if it had one."""
        raw = self.db.get(_BAD + item_id.encode()) if self.db is not None else None
        return raw.decode() if raw is not None else None

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            log.warning("items record without a key ignored")
            return
        self._parsed.pop(key.decode("utf-8", "replace"), None)  # a new version, a rejection or a deletion
        if value is None:  # tombstone: the item was deleted
            self.db.delete(key)
            return
        try:
            item = parse_item(json.loads(value), "catalog item")
        except (InvalidEvent, ValueError) as exc:
            log.warning("catalog item %r rejected: %s", key, exc)
            self.db[_BAD + key] = str(exc).encode()
            return
        self.db[key] = json.dumps({"title": item.title, "text": item.text,
                                   "categories": list(item.categories)}).encode()  # fmt: skip
        self.loaded += 1

    def caught_up(self) -> bool:
        return bool(self._ends) and all(self._positions.get(p, 0) >= e for p, e in self._ends.items())

    async def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until the reader has reached end offsets asked for *after* this call: an item produced
        just before an event that names it is then in the catalog."""
        asked = time.monotonic()

        def fresh() -> bool:
            return self._ends_asked_at >= asked and self.caught_up()

        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(fresh), timeout_s)
            except TimeoutError:
                return False
        return True

    async def run(self) -> None:
        # Rebuilt from the topic at every start, so what a previous run left is dropped first.
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(self.path))

        async def on_round(positions: dict[int, int], ends: dict[int, int], asked: float) -> None:
            self._positions = positions
            async with self._progress:
                self._ends = ends
                self._ends_asked_at = asked
                self._progress.notify_all()

        await follow_topic(self.bootstrap, self.topic, self._apply, on_round)
        # The store stays open: an agent finishing its last batch during shutdown still reads it (it is
        # rebuilt at the next start anyway).


async def follow_topic(
    bootstrap: str,
    topic: str,
    apply: Callable[[bytes | None, bytes | None], None],
    on_round: Callable[[dict[int, int], dict[int, int], float], Awaitable[None]] | None = None,
    isolation_level: str = "read_uncommitted",
) -> None:
    """Read every partition of ``topic`` from the beginning, for ever: ``apply(key, value)`` per record.

    For compacted topics that every worker needs whole (the item catalog, the head replicas), outside
    the consumer group. After each round ``on_round(positions, end offsets, when the ends were asked)``.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024**2,  # head replicas can be near 1 MB
        isolation_level=isolation_level,
    )
    await consumer.start()
    try:
        while topic not in await consumer.topics():
            await asyncio.sleep(0.5)  # the topic is created by whoever produces first
        parts = consumer.partitions_for_topic(topic) or {0}
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            asked = time.monotonic()
            ends = await consumer.end_offsets(tps)
            batch = await consumer.getmany(*tps, timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    apply(r.key, r.value)
            if on_round is not None:
                positions = {tp.partition: await consumer.position(tp) for tp in tps}
                await on_round(positions, {tp.partition: ends[tp] for tp in tps}, asked)
    finally:
        await consumer.stop()
