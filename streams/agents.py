"""The agent: micro-batches from click/cart/order -> core -> state tables + interest-updates.

Kept thin on purpose: validation, embedding, the update rule and the head all live in ``models``. This
file only moves bytes between Kafka, the tables and the core, and routes bad records to the DLQ.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faust.streams
from faust.types import EventT, StreamT

from models.core import InterestCore
from models.events import Event, InvalidEvent, Item, parse_event, resolve_item
from models.head import PrequentialStats, SoftmaxHead
from models.interest import UserState
from streams.app import app, dlq_topic, event_topic, heads, settings, updates_topic, user_states
from streams.catalog import Catalog
from streams.settings import build_core
from streams.topics import ensure_topics

log = logging.getLogger("interest_stream")


@dataclass
class Counters:
    started: float = field(default_factory=time.monotonic)
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    updates: int = 0
    batches: int = 0
    first_update_s: float | None = None
    prequential: PrequentialStats = field(default_factory=PrequentialStats)
    """Test-then-train scores of this worker's heads since it started."""


counters = Counters()


_core: InterestCore | None = None


def load_core() -> InterestCore:
    """Load the encoder once per process (an agent restarted by its supervisor reuses it)."""
    global _core
    if _core is not None:
        return _core
    _core = build_core(settings)
    return _core


@contextmanager
def changelog_partition_of(event: EventT) -> Iterator[None]:
    """Make table writes go to ``event``'s partition.

    Faust picks a table write's changelog partition from the *current event*. Inside ``take_events`` that
    is whichever record arrived last, which may belong to another partition; a user's state written
    there would be restored by the wrong worker after a rebalance. So we bind the right event.
    """
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


class TableStates:
    """Read-only mapping view of the user-state table for ``InterestCore.apply``."""

    def get(self, user_id: str) -> UserState | None:
        raw = user_states.get(user_id.encode())
        return UserState.from_bytes(raw) if raw is not None else None


catalog = Catalog(settings.broker, settings.items_topic, Path(settings.state_dir) / "catalog")


@app.task
async def read_catalog() -> None:
    await catalog.run()


def resolve(event: Event) -> Item:
    try:
        return resolve_item(event, catalog.get)
    except InvalidEvent as exc:
        why = catalog.why_missing(event.item_id)
        if why is not None:
            raise InvalidEvent(exc.reason, f"{exc.message}; its catalog entry was rejected: {why}") from None
        raise


async def dead_letter(event: EventT, reason: str, message: str) -> None:
    """Original key and bytes, unchanged (so they can be replayed), with the reason in headers."""
    msg = event.message
    headers = [
        ("dlq.reason", reason.encode()),
        ("dlq.error", message.encode()),
        ("dlq.topic", msg.topic.encode()),
        ("dlq.partition", str(msg.partition).encode()),
        ("dlq.offset", str(msg.offset).encode()),
    ]
    await dlq_topic.send(key=msg.key, value=event.value or b"", headers=headers)
    counters.dead_lettered += 1
    log.warning("dead-lettered %s[%s]@%s: %s: %s", msg.topic, msg.partition, msg.offset, reason, message)


async def process_batch(core: InterestCore, batch: Sequence[EventT]) -> None:
    by_partition: dict[int, list[tuple[EventT, Event, Item]]] = defaultdict(list)
    waited = False
    for record in batch:
        msg = record.message
        counters.events += 1
        try:
            event = parse_event(record.value, settings.event_topics[msg.topic], msg.key)
            try:
                item = resolve(event)
            except InvalidEvent:
                if waited:
                    raise
                # The item may simply not be read yet: let the catalog reach the end of its topic once.
                await catalog.wait_caught_up(settings.catalog_wait_s)
                waited = True
                item = resolve(event)
        except InvalidEvent as exc:
            await dead_letter(record, exc.reason, exc.message)
            continue
        except Exception as exc:  # noqa: BLE001 - no input may crash the worker
            await dead_letter(record, "internal_error", repr(exc))
            continue
        by_partition[msg.partition].append((record, event, item))
    if not by_partition:
        return
    items = [item for group in by_partition.values() for _, _, item in group]
    embeddings = await asyncio.get_running_loop().run_in_executor(None, core.embed, items)
    states = TableStates()
    for partition, group in by_partition.items():
        head_key = str(partition).encode()
        raw_head = heads.get(head_key)
        head = SoftmaxHead.from_bytes(raw_head) if raw_head is not None else core.new_head()
        scored_before = dataclasses.replace(head.stats)  # a copy: apply() updates it in place
        result = core.apply([(e, i) for _, e, i in group], embeddings, states, head)
        counters.prequential += head.stats - scored_before
        with changelog_partition_of(group[0][0]):
            for user_id, state in result.states.items():
                user_states[user_id.encode()] = state.to_bytes()
            heads[head_key] = head.to_bytes()
        for update in result.updates:
            await updates_topic.send(key=update.user_id.encode(), value=json.dumps(update.to_json()).encode())
        counters.applied += len(result.applied)
        counters.duplicates += result.duplicates
        counters.updates += len(result.updates)
    if counters.first_update_s is None and counters.updates:
        counters.first_update_s = time.monotonic() - counters.started
        log.info("first interest update %.2fs after the worker started", counters.first_update_s)
    counters.batches += 1


@app.agent(event_topic)
async def interest_agent(stream: StreamT) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ensure_topics, settings)  # outputs must exist before we send
    core = await loop.run_in_executor(None, load_core)
    if not await catalog.wait_caught_up(settings.catalog_wait_s * 20):
        log.warning("catalog not loaded yet; events for unknown items may be dead-lettered")
    log.info("encoder %s ready (dim %d); batches of %d within %.2fs",
             core.encoder.name, core.dim, settings.max_batch, settings.max_wait_s)  # fmt: skip
    async for batch in stream.take_events(settings.max_batch, within=settings.max_wait_s):
        # take_events acks the whole batch when this loop is left, also when the agent is cancelled
        # (shutdown, rebalance) halfway through it: finish the batch first, or its events are
        # committed without ever being applied.
        work = asyncio.ensure_future(process_batch(core, batch))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await work
            raise


@app.timer(interval=10.0)
async def report() -> None:
    elapsed = time.monotonic() - counters.started
    p = counters.prequential.as_dict()
    log.info(
        "events=%d applied=%d duplicates=%d dlq=%d updates=%d batches=%d (%.0f events/s since start) "
        "prequential n=%d hit@1=%.3f hit@5=%.3f log_loss=%.3f",
        counters.events, counters.applied, counters.duplicates, counters.dead_lettered,
        counters.updates, counters.batches, counters.events / max(elapsed, 1e-9),
        p["n"], p["hit@1"], p["hit@5"], p["log_loss"],
    )  # fmt: skip
