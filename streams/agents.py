"""The agent: micro-batches from click/cart/order -> core -> state tables + interest-updates.

Kept thin on purpose: validation, embedding, the update rule and the head all live in ``models``. This
file only moves bytes between Kafka, the tables and the core, and routes bad records to the DLQ.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import os
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faust.streams
import faust.types
import numpy as np
from faust.types import EventT, StreamT

from models.core import InterestCore, InterestUpdate
from models.events import Event, InvalidEvent, Item, resolve_item
from models.head import PrequentialStats, SoftmaxHead
from models.interest import UserState
from models.sharding import partition_for
from streams import metrics
from streams.app import (
    app,
    dlq_topic,
    event_topic,
    heads,
    partitions_of,
    send_record_batches,
    settings,
    user_states,
)
from streams.batching import adaptive_batches
from streams.catalog import Catalog
from streams.checkpoint import TP, OffsetLedger, OffsetProbe
from streams.checkpoint import install as install_checkpoint
from streams.model_sync import ServedModel
from streams.replicas import HeadExchange
from streams.settings import build_core
from streams.stopping import exit_if_stop_outlasts
from streams.topics import decode_event, ensure_topics

log = logging.getLogger("interest_stream")


@dataclass
class Counters:
    started: float = field(default_factory=time.monotonic)
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    updates: int = 0
    batches: int = 0
    failed_batches: int = 0
    partitions_read_again: int = 0  # stuck partitions sought back (``wake_stuck_partitions``)
    failing_in_a_row: int = 0
    first_update_s: float | None = None
    prequential: PrequentialStats = field(default_factory=PrequentialStats)
    """Test-then-train scores of this worker's heads since it started."""


counters = Counters()
ledger = OffsetLedger()
offset_probe = OffsetProbe(settings.broker)
DLQ_MAX_VALUE = 1_000_000
unacknowledged: list[asyncio.Future] = []
"""Sends of the current batch (updates, dead letters) that the broker has not acknowledged yet."""

_core: InterestCore | None = None
_loading: concurrent.futures.Future | None = None


def start_loading_core() -> concurrent.futures.Future:
    """Build the core in a thread, once per process, then load the encoder's weights there too.

    The core is ready as soon as its embedding cache is open: a restarted worker whose items are all
    cached applies its first batch without waiting for torch (seconds of imports). The weights load
    behind it, overlapping faust's start-up; the first cache miss waits for them (``TextEncoder.load``).
    """
    global _loading
    if _loading is None:
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="load-core")
        _loading = pool.submit(build_core, settings)
        pool.submit(_load_weights, _loading, time.monotonic())
        pool.shutdown(wait=False)
    return _loading


def _load_weights(core: concurrent.futures.Future, since: float) -> None:
    """Load the encoder's weights and say when they are in. Until then the loading thread (imports,
    mostly) competes with the event loop for the interpreter, and latency has a long tail: on this
    project's 2-core machine, with the broker beside it, the weights were in 9-14 s after an idle worker
    started and 17-18 s after one applying 100 events/s, and 200 events/s offered meanwhile measured p95
    543 ms against 86 ms afterwards (``interest_encoder_weights_loaded`` says when that is over)."""
    encoder = core.result().encoder
    encoder.load_weights()
    if encoder.weights_loaded:
        log.info(
            "encoder weights loaded %.1fs after the worker started loading them", time.monotonic() - since
        )
    freeze_startup_objects()


def freeze_startup_objects() -> None:
    """Move every object alive now (the imports of torch and transformers, the model, the catalogue read
    so far) out of the garbage collector's sight (``gc.freeze``).

    They live as long as the process, yet each full collection walked all of them (about 520,000): in a
    worker on this project's 2-core machine one took 180-460 ms, and every event waiting meanwhile took
    that much longer. Frozen, a full collection in the same worker took at most 7 ms. Objects created
    later are collected as usual; the frozen ones are never freed, as start-up objects would not be
    anyway."""
    gc.collect()
    gc.freeze()
    log.info(
        "%d start-up objects frozen out of the garbage collector's full collections", gc.get_freeze_count()
    )


async def load_core() -> InterestCore:
    """The core, once loaded (an agent restarted by its supervisor reuses it)."""
    global _core
    if _core is None:
        _core = await asyncio.wrap_future(start_loading_core())
    return _core


@contextmanager
def partition_of(event: EventT) -> Iterator[None]:
    """Make table reads *and* writes go to ``event``'s partition.

    faust picks the partition of a table read or write from the *current event*. Inside ``take_events``
    that is whichever record arrived last, which may belong to another partition: a state read there is
    not found (and the user would start over), a state written there would be restored by the wrong
    worker after a rebalance. So the right event is bound around both.
    """
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


def read_states(partition: int, users: Sequence[str]) -> dict[str, UserState]:
    """The stored states of ``users`` (those that have one), read from ``partition``'s store at once."""
    raws = user_states.get_many(partition, [u.encode() for u in users])
    return {u: UserState.from_bytes(raw) for u, raw in zip(users, raws, strict=True) if raw is not None}


catalog = Catalog(settings.broker, settings.items_topic, Path(settings.state_dir) / "catalog")
head_exchange = HeadExchange(settings.broker, heads.changelog_topic.get_topic_name(), settings.head_sync_s)
served_model = ServedModel(
    settings.broker, settings.model_topic, config=settings.model, search_threads=settings.search_threads
)


@app.task
async def read_catalog() -> None:
    await catalog.run()


@app.task
async def follow_model_snapshots() -> None:
    await served_model.run()


@app.task
async def follow_head_replicas() -> None:
    await head_exchange.run()


@app.task
async def bound_the_stop() -> None:
    """faust's stop waits for the batch in hand, and that batch for the broker's acknowledgement."""
    exit_if_stop_outlasts(lambda: app.should_stop, settings.stop_grace_s, log, "the committed offsets")


def resolve(event: Event) -> Item:
    try:
        return resolve_item(event, catalog.get)
    except InvalidEvent as exc:
        why = catalog.why_missing(event.item_id)
        if why is not None:
            raise InvalidEvent(exc.reason, f"{exc.message}; its catalog entry was rejected: {why}") from None
        raise


async def dead_letter(event: EventT, reason: str, message: str) -> asyncio.Future:
    """Original key and bytes, unchanged (so they can be replayed), with the reason in headers."""
    msg = event.message
    headers = [
        ("dlq.reason", reason.encode()),
        ("dlq.error", message.encode("utf-8", "backslashreplace")),
        ("dlq.topic", msg.topic.encode()),
        ("dlq.partition", str(msg.partition).encode()),
        ("dlq.offset", str(msg.offset).encode()),
    ]
    value = event.value or b""
    if len(value) > DLQ_MAX_VALUE:  # keep the dead letter under the broker's record limit with headers
        headers.append(("dlq.truncated_from", str(len(value)).encode()))
        value = value[:DLQ_MAX_VALUE]
    sent = await dlq_topic.send(key=msg.key, value=value, headers=headers)
    unacknowledged.append(sent)
    counters.dead_lettered += 1
    metrics.dead_letters.labels(reason).inc()
    log.warning("dead-lettered %s[%s]@%s: %s: %s", msg.topic, msg.partition, msg.offset, reason, message)
    return sent


def decode(record: EventT) -> Event:
    """Parse and check one record; ``InvalidEvent`` says why it is rejected."""
    msg = record.message
    return decode_event(settings, msg.topic, msg.partition, msg.key, record.value, msg.offset)


async def resolve_all(records: Sequence[EventT]) -> list[tuple[EventT, Event, Item]]:
    """Decode records and find their items; invalid ones go to the DLQ."""
    out = []
    waited = False
    for record in records:
        counters.events += 1
        topic = record.message.topic
        metrics.events_in.labels(topic, settings.event_topics.get(topic, "unknown")).inc()
        try:
            event = decode(record)
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
        out.append((record, event, item))
    return out


async def embed_all(core: InterestCore, items: list[Item]) -> dict[str, np.ndarray]:
    """Embeddings of the batch's texts in one encoder call; if that call fails, one text at a time, so
    a text the encoder cannot take costs only its own events (``apply`` fails them: no embedding)."""
    loop = asyncio.get_running_loop()
    try:
        with metrics.encode_seconds.time():
            return await loop.run_in_executor(None, core.embed, items)
    except Exception:  # noqa: BLE001 - isolate the failing text below
        log.exception("encoding %d texts failed; encoding them one by one", len(items))
    out: dict[str, np.ndarray] = {}
    for item in {i.encoder_text: i for i in items}.values():
        try:
            out.update(await loop.run_in_executor(None, core.embed, [item]))
        except Exception as exc:  # noqa: BLE001
            log.error("cannot encode %r: %r", item.encoder_text[:80], exc)
    return out


class Rebalanced(Exception):  # noqa: N818 - a condition, not an error
    """A rebalance began while a batch was under way: the batch is dropped (nothing of it is committed)."""


_heads: dict[int, tuple[bytes, SoftmaxHead]] = {}
"""Partition -> (the head bytes this worker wrote last, that head): the next batch of the partition reuses
the object instead of parsing the table's bytes again, if the table still holds exactly those bytes."""


def still_owner(rebalances: int) -> None:
    """Raise ``Rebalanced`` if a rebalance has begun since the batch began (``rebalances`` was the count
    then) or is under way: the partitions may belong to another worker by now, and writing their state
    would race the new owner's, which restores the changelog and redoes everything uncommitted."""
    if app.rebalancing_count != rebalances or not app.consumer.flow_active:
        raise Rebalanced


async def apply_partition(
    core: InterestCore,
    partition: int,
    group: list[tuple[EventT, Event, Item]],
    embeddings: dict,
    rebalances: int,
) -> list[InterestUpdate]:
    """Apply one partition's events and write its states and head; return the updates to publish.

    Reads and writes are bound to that partition (``partition_of``). Nothing here commits: the records'
    offsets become committable when the whole batch is done (``streams.checkpoint``).
    """
    head_key = str(partition).encode()
    source = {id(event): record for record, event, _ in group}
    # No await from this check to the writes below (``set_many`` checks again before any later send).
    still_owner(rebalances)
    stored = read_states(partition, list(dict.fromkeys(e.user_id for _, e, _ in group)))
    with partition_of(group[0][0]):
        raw = heads.get(head_key)
        kept = _heads.pop(partition, None)  # out while in use: a failed batch leaves no half-trained copy
        head = kept[1] if kept is not None and kept[0] == raw else core.load_head(raw)
        head_exchange.maybe_fold(head, partition)
        scored_before = dataclasses.replace(head.stats)  # a copy: apply() updates it in place
        result = core.apply([(e, i) for _, e, i in group], embeddings, stored, head)
        raw = head.to_bytes()
    changed = {
        user_id.encode(): state.to_bytes(settings.state_vector) for user_id, state in result.states.items()
    }
    # Both in bulk (``set_many``): the head's record then goes out beside the states', not later through
    # faust's send buffer, so the batch waits for one round trip to the broker, not two in a row.
    await user_states.set_many(partition, changed, check=lambda: still_owner(rebalances))
    await heads.set_many(partition, {head_key: raw}, check=lambda: still_owner(rebalances))
    _heads[partition] = (raw, head)
    counters.prequential += head.stats - scored_before
    metrics.rolling.add(head.stats - scored_before)
    for event, why in result.failed:
        await dead_letter(source[id(event)], "internal_error", f"the core could not apply it: {why}")
    if result.rebased:
        log.warning("%d user states were written by another encoder; restarted in %s's space",
                    result.rebased, core.encoder.name)  # fmt: skip
    counters.applied += len(result.applied)
    counters.duplicates += result.duplicates
    counters.redelivered += result.redelivered
    counters.updates += len(result.updates)
    await add_model_outputs(core, result.updates, result.states)
    return result.updates


async def add_model_outputs(core: InterestCore, updates: list[InterestUpdate], states: dict) -> None:
    """Give each update its recommendations and the user vector of the newest snapshot of the global
    models (none loaded: neither)."""
    model = served_model.model
    if model is None or not updates:
        return
    touched = {u.user_id: states[u.user_id] for u in updates}
    vectors = await sequence_vectors(core, touched)
    learned = served_model.model.learned_events  # the snapshot in force now (one may have loaded meanwhile)
    lists = served_model.recommend_many(touched, settings.recommendations_k, vectors)
    for update in updates:
        update.recommendations = lists[update.user_id]
        update.sequence = (vectors[update.user_id], served_model.version, learned)


async def sequence_vectors(core: InterestCore, states: dict[str, UserState]) -> dict[str, np.ndarray]:
    """User -> the loaded snapshot's sequential-model vector of the user's window (a snapshot must be
    loaded). Window items from before this worker started get their text through the embedding cache
    first, so a worker that took the user over reads the same window texts (the vectors then agree up to
    float noise: another encoder call, another batch of users)."""
    missing = served_model.missing(states)
    if missing:
        items = {i: catalog.get(i) for i in missing}
        found = {i: item for i, item in items.items() if item is not None}
        embeddings = await embed_all(core, list(found.values()))
        for item_id, item in found.items():
            if item.encoder_text in embeddings:
                served_model.remember(item_id, embeddings[item.encoder_text])
    return served_model.user_vectors(states, served_model.model)


async def admit(batch: Sequence[EventT]) -> tuple[list[EventT], dict[TP, int]]:
    """The records of ``batch`` to process, in order; where partitions with a gap must seek back.

    A gap is first put to the broker (``OffsetProbe``): offsets that hold no record (transaction markers)
    are noted in the ledger, and where records resume exactly at the record that revealed the gap, the
    partition goes on from it in this batch, without a seek and a re-fetch per transaction."""
    committed = app.consumer._committed_offset  # what faust sought each partition to (None: 0 or none)
    entries = [(TP(m.topic, m.partition), m.offset, m.generation_id, committed.get(m.tp) or 0)
               for m in (record.message for record in batch)]  # fmt: skip
    process, gaps = ledger.admit_batch(entries)
    while gaps:
        resumed = await ask_where_records_resume({tp: (ledger.read_offset(tp), entries[i][1])
                                                  for tp, i in gaps.items()})  # fmt: skip
        if not resumed:
            break
        rest = [j for j, entry in enumerate(entries) if entry[0] in resumed and j >= gaps[entry[0]]]
        for tp in resumed:
            del gaps[tp]
        more, again = ledger.admit_batch([entries[j] for j in rest])
        process += [rest[k] for k in more]
        gaps.update({tp: rest[k] for tp, k in again.items()})
    for tp, i in gaps.items():
        log.warning("gap in %s: expected offset %d, got %d; seeking back", tp, ledger.read_offset(tp),
                    entries[i][1])  # fmt: skip
    return [batch[i] for i in sorted(process)], {tp: ledger.read_offset(tp) for tp in gaps}


async def ask_where_records_resume(gaps: dict[TP, tuple[int, int]]) -> set[TP]:
    """For each partition's gap (the first missing offset, the offset of the record that revealed it),
    ask the broker which offsets from the missing one on hold records (one fetch); note those that hold
    none in the ledger. Returns the partitions whose records resume exactly at the revealing record
    (nothing is missing: go on). Without an answer a partition is sought back: the ledger then waits for
    exactly the missing offset, and the stuck-partition check asks again if it never comes."""
    resumed = set()
    for tp, (missing, revealing) in gaps.items():
        offsets = await learn_offsets_without_records(tp, missing)
        if offsets and offsets[0] >= revealing:
            resumed.add(tp)
    return resumed


async def learn_offsets_without_records(tp: TP, start: int) -> list[int] | None:
    """Ask the broker which offsets from ``start`` on hold records (``OffsetProbe``, one fetch, in a
    thread); note those that hold none in the ledger. Returns the offsets of the records found (None: no
    answer)."""
    try:
        offsets, position = await asyncio.get_running_loop().run_in_executor(
            None, offset_probe.records_from, tp, start
        )
    except Exception as exc:  # noqa: BLE001 - the broker may be briefly away: no answer this time
        log.warning("could not ask the broker which offsets of %s hold records from %d: %r", tp, start, exc)
        return None
    absent = ledger.note_records_from(tp, start, offsets, position)
    if absent:
        log.info("%s: %d offsets from %d on hold no record (transaction markers, say): not a gap, not lag",
                 tp, absent, start)  # fmt: skip
    return offsets


async def seek(offsets: dict[TP, int]) -> None:
    """Move the fetch position back (in the consumer's own thread: aiokafka is not thread-safe)."""
    if offsets:
        await app.consumer.seek_wait(
            {faust.types.TP(tp.topic, tp.partition): off for tp, off in offsets.items()}
        )


def take_unacknowledged() -> list[asyncio.Future]:
    """Every send of this batch so far: states, heads (changelogs), updates, dead letters."""
    pending = user_states.take_unacknowledged() + heads.take_unacknowledged() + unacknowledged
    unacknowledged.clear()
    return pending


async def publish(updates: list[InterestUpdate]) -> None:
    """Hand the updates to the producer (the broker's acknowledgements are awaited by the caller).

    Record batches per partition of the updates topic (``send_record_batches``), not one ``send`` per
    update. Each update goes to the partition Kafka's default partitioner gives its key
    (``models.sharding``), as a keyed send would."""
    if not updates:
        return
    topic = settings.updates_topic
    partitions = await partitions_of(topic)
    by_partition: dict[int, list[InterestUpdate]] = defaultdict(list)
    for update in updates:
        by_partition[partition_for(update.user_id.encode(), partitions)].append(update)
    for partition, group in by_partition.items():
        records = ((u.user_id.encode(), u.to_bytes(settings.update_vectors)) for u in group)
        unacknowledged.extend(sent for sent, _ in await send_record_batches(topic, partition, records))


async def process_batch(core: InterestCore, batch: Sequence[EventT]) -> None:
    """One micro-batch: admit → decode (DLQ) → embed → apply per partition → states durable → publish
    updates → updates durable → done.

    Updates go out only once the states they describe are in the changelog, so an update is never
    published for a state that a crash could still undo. Only a batch whose every effect the broker has
    acknowledged is marked done in the ledger, and only done offsets are committed (``streams.checkpoint``).
    """
    if not app.consumer.flow_active:
        # A rebalance is under way: these records were fetched before it. Their partitions' owner
        # reads them again from the committed offsets once it is over; touching the ledger now could
        # only start it from a wrong position.
        await asyncio.sleep(0.1)
        return
    rebalances = app.rebalancing_count
    ledger.begin(app.consumer_generation_id, rebalances)
    generation = ledger.generation
    records, seeks = await admit(batch)
    first: dict[TP, int] = {}
    last: dict[TP, int] = {}
    for record in records:
        tp = TP(record.message.topic, record.message.partition)
        first.setdefault(tp, record.message.offset)
        last[tp] = record.message.offset
    try:
        await seek(seeks)
        valid = await resolve_all(records)
        by_partition: dict[int, list[tuple[EventT, Event, Item]]] = defaultdict(list)
        for entry in valid:
            by_partition[entry[0].message.partition].append(entry)
        updates: list[InterestUpdate] = []
        if by_partition:
            embeddings = await embed_all(core, [item for _, _, item in valid])
            for _, event, item in valid:
                if item.encoder_text in embeddings:
                    served_model.remember(event.item_id, embeddings[item.encoder_text])
            for partition, group in by_partition.items():
                updates += await apply_partition(core, partition, group, embeddings, rebalances)
        await asyncio.gather(*take_unacknowledged())  # states, heads, dead letters: the broker has them
        await publish(updates)
        await asyncio.gather(*take_unacknowledged())
        acknowledged = time.time()
        for record, _, _ in valid:
            if record.message.timestamp:  # seconds since the epoch (faust divides Kafka's ms by 1,000)
                metrics.event_to_update_seconds.observe(max(acknowledged - record.message.timestamp, 0.0))
        metrics.updates_out.inc(len(updates))
        live.note_updated([u.user_id for u in updates])
    except Rebalanced:
        take_unacknowledged()
        log.info("batch of %d records dropped: a rebalance began; their partitions' owner reads them "
                 "again", len(records))  # fmt: skip
        with contextlib.suppress(Exception):  # mid-rebalance a seek may be refused; faust seeks after it
            await seek(ledger.failed(first, generation))
        await asyncio.sleep(0.2)
        return
    except Exception:
        # Not input (that goes to the DLQ): the broker, the store. Nothing of this batch is committed;
        # read it again from what is done (its users' offsets make the replay exact).
        take_unacknowledged()
        counters.failed_batches += 1
        counters.failing_in_a_row += 1
        log.exception("batch of %d records failed; it will be read again", len(records))
        if counters.failing_in_a_row >= settings.max_failed_batches:
            # Not going to heal in this process (e.g. the broker lost its topics). Exit, so that the
            # supervisor restarts the worker: nothing unfinished was committed, and the start-up check
            # (streams.recovery) deals with a broker that lost its data.
            log.critical("%d batches in a row failed; exiting so the worker is restarted",
                         counters.failing_in_a_row)  # fmt: skip
            logging.shutdown()
            os._exit(3)
        await seek(ledger.failed(first, generation))
        await asyncio.sleep(min(2.0 ** min(counters.failed_batches, 5) * 0.1, 3.0))
        return
    ledger.done(last, generation)
    counters.failing_in_a_row = 0
    metrics.batch_size.observe(len(records))
    metrics.note_events(counters.events)
    if counters.first_update_s is None and counters.updates:
        counters.first_update_s = time.monotonic() - counters.started
        log.info("first interest update %.2fs after the worker started", counters.first_update_s)
    counters.batches += 1


@app.on_partitions_revoked.connect
async def drain_before_handing_over(sender: object, revoked: object, **kwargs: object) -> None:
    """Before partitions move, every record this worker has issued reaches the broker: the new owner
    restores the changelog afterwards, and a late state record of ours must not land after its own.
    (faust flushes here too, but its buffer flush gives up after 0.1 s without progress.)"""
    producer = app.producer
    while producer.buffer.size:
        await producer.buffer.flush()
    await producer.flush()


@app.agent(event_topic)
async def interest_agent(stream: StreamT) -> None:
    install_checkpoint(app, ledger, settings.event_topics)  # first: before faust's fetcher starts
    _stream[0] = stream
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ensure_topics, settings)  # outputs must exist before we send
    core = await load_core()
    # Events that name catalog items must not be dead-lettered as unknown while the catalog loads.
    while not await catalog.wait_caught_up(10.0):
        log.warning("waiting for the item catalog to load (%d items so far)", catalog.loaded)
    if not await served_model.wait_caught_up(30.0):
        log.warning("the sequential model's topic is not read to its end after 30 s; updates go out "
                    "without its vectors until a snapshot is loaded")  # fmt: skip
    log.info("encoder %s (dim %d, weights %s); batches of up to %d, what has arrived (linger %.3fs)",
             core.encoder.name, core.dim, "loaded" if core.encoder.weights_loaded else "loading",
             settings.max_batch, settings.max_wait_s)  # fmt: skip
    async for batch in adaptive_batches(stream.events(), settings.max_batch, settings.max_wait_s):
        # Finish a started batch even if the agent is cancelled (shutdown, rebalance), so its effects
        # and the ledger agree; what is committed is decided by the ledger, not by faust's acks.
        work = _running[0] = asyncio.ensure_future(process_batch(core, batch))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await work
            raise


_stream: list[StreamT | None] = [None]
"""The agent's stream (its queue is in ``fetch_state``)."""
_running: list[asyncio.Future | None] = [None]
"""The batch under way, if any (a long one, e.g. waiting for the encoder's weights, is not a stall)."""


STALL_S = 30.0
LOOK_AFTER_IDLE_S = 10.0
"""Idle this long with records not done, the worker asks the broker whether they are records at all."""


def _highwater(tp: TP) -> int | None:
    try:
        return app.consumer.highwater(faust.types.TP(*tp))
    except Exception:  # noqa: BLE001 - revoked meanwhile, or not fetched yet: unknown
        return None


def lag() -> int:
    """Input records not yet done on this worker's partitions (by the consumer's high-water marks)."""
    return ledger.lag({tp: _highwater(tp) for tp in ledger.partitions()})


def owned_partitions() -> list[int]:
    """The input partitions (so the users) this worker owns now."""
    try:
        actives = app.assignor.assigned_actives()
    except Exception:  # noqa: BLE001 - before the first assignment
        return []
    return sorted({tp.partition for tp in actives if tp.topic in settings.event_topics})


_assigned_at = time.monotonic()
silent_records: dict[TP, int] = {}
"""Owned input partitions that hold records but have delivered none (``wake_stuck_partitions``)."""


@app.on_partitions_assigned.connect
async def note_assignment(sender: object, assigned: object, **kwargs: object) -> None:
    global _assigned_at
    _assigned_at = time.monotonic()


def fetch_state(tps: Sequence[TP]) -> str:
    """Where the records of ``tps`` could be held up, for the log: the agent's stream queue, faust's fetch
    sets (active, paused, held for a full buffer), aiokafka's position and prefetched records, and the
    ledger. Read from the consumer thread's objects without locking, each part on its own (a part that
    cannot be read is left out): a snapshot for a human, never a reason for the check to fail."""
    consumer = app.consumer
    parts = []
    with contextlib.suppress(Exception):
        queue = _stream[0].channel.queue
        parts.append(f"stream queue {queue.qsize()} (pressure-drop callbacks pending "
                     f"{len(queue._pending_pressure_drop_callbacks)})")  # fmt: skip
    with contextlib.suppress(Exception):
        parts.append(f"flow_active={consumer.flow_active} flow_control={app.flow_control.is_active()}")
    for tp in tps:
        ftp = faust.types.TP(*tp)
        part = f"{tp.topic}[{tp.partition}]: ledger {ledger.describe(tp)}"
        with contextlib.suppress(Exception):
            part += (f"; faust active={ftp in (consumer._active_partitions or ())} "
                     f"paused={ftp in consumer._paused_partitions} "
                     f"buffered={ftp in consumer._buffered_partitions}")  # fmt: skip
        with contextlib.suppress(Exception):
            kafka = consumer._thread._consumer
            assignment = kafka._subscription.subscription.assignment
            state = assignment.state_value(ftp) if ftp in assignment.tps else None
            part += (f"; aiokafka assigned={state is not None} paused={getattr(state, 'paused', None)} "
                     f"position={getattr(state, '_position', None)} "
                     f"prefetched={kafka._fetcher._records.get(ftp)!r}")  # fmt: skip
        parts.append(part)
    return "; ".join(parts)


@app.timer(interval=10.0)
async def wake_stuck_partitions() -> None:
    """Find owned input partitions that hold records this worker has not done while it has sat idle for
    ``STALL_S``, say so (with where the records could be held up), and read them again from where
    reading starts (resume the partition, forget the read position, seek).

    A worker that is idle while its partitions hold records is stuck: nothing is lost (what is not done
    is not committed), but nobody would process those records until the next rebalance. Seen in
    multi-worker tests on an overloaded machine: after a rebalance, a partition with a backlog
    delivered nothing at all; and once, a partition whose ledger sought back over a gap never
    delivered the records it sought (each record after them was then dropped as ahead of the re-fetch).
    """
    silent_records.clear()
    now = time.monotonic()
    if _core is None or app.rebalancing or not app.consumer.flow_active:
        return
    if _running[0] is not None and not _running[0].done():
        return
    idle_s = min(now - _assigned_at, now - ledger.progressed_at)
    if idle_s < LOOK_AFTER_IDLE_S:
        return
    owned = [TP(*tp) for tp in app.assignor.assigned_actives() if tp.topic in settings.event_topics]
    if not owned:
        return
    try:
        ends = {TP(*tp): end for tp, end in (await app.consumer.highwaters(*owned)).items()}
        earliest = await app.consumer.earliest_offsets(*owned)
    except Exception:  # noqa: BLE001 - the broker may be briefly away: look again next time
        return
    committed = app.consumer._committed_offset
    start = {tp: max(committed.get(tp) or 0, earliest.get(tp, 0)) for tp in owned}
    generation, rebalances = app.consumer_generation_id, app.rebalancing_count
    found = ledger.waiting(owned, generation, rebalances, start, ends)
    # What is left may be offsets without records (a transactional producer leaves a marker after its
    # last commit): ask before calling a partition stuck, so that it is not counted as lag either.
    for tp, (begin, _) in found.items():
        await learn_offsets_without_records(tp, begin)
    found = ledger.waiting(owned, generation, rebalances, start, ends)
    current = ledger.is_current(generation, rebalances)
    seen = set(ledger.partitions()) if current else set()
    silent_records.update({tp: n for tp, (_, n) in found.items() if tp not in seen})
    if not found or idle_s < STALL_S:
        return
    log.warning("%s hold %d records not done and nothing was done for %.0f s; reading them again (%s)",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in found), sum(n for _, n in found.values()),
                idle_s, fetch_state(list(found)))  # fmt: skip
    counters.partitions_read_again += len(found)
    app.consumer.resume_partitions({faust.types.TP(*tp) for tp in found})
    for tp in found:
        ledger.reread(tp)
    with contextlib.suppress(Exception):  # refused mid-rebalance: the next look tries again
        await seek({tp: start[tp] for tp in found})


def health() -> dict:
    """What ``/ready`` and the periodic log line report."""
    behind = lag() + sum(silent_records.values())
    idle_s = time.monotonic() - ledger.progressed_at
    stalled = behind > 0 and idle_s > STALL_S
    return {
        "ready": catalog.caught_up() and _core is not None and not stalled,
        "catalog_loaded": catalog.caught_up(),
        "partitions": len(ledger.partitions()),
        "owned_partitions": owned_partitions(),
        "lag": behind,
        "stalled": stalled,
        "seconds_since_progress": round(idle_s, 1),
        "events": counters.events,
        "applied": counters.applied,
        "dead_lettered": counters.dead_lettered,
        "failed_batches": counters.failed_batches,
        "partitions_read_again": counters.partitions_read_again,
    }


def users_in_state() -> int:
    """RocksDB's estimate of the keys in the user-state stores of the owned partitions."""
    dbs = getattr(user_states.data, "_dbs", {})
    total = 0
    for partition in owned_partitions():
        db = dbs.get(partition)
        if db is not None:
            with contextlib.suppress(Exception):
                total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
    return total


def scrape() -> dict[str, float]:
    """The gauges of ``/metrics`` read at scrape time."""
    values: dict[str, float] = {"interest_consumer_lag": lag(), "interest_users_in_state": users_in_state(),
                                "interest_owned_partitions": len(owned_partitions())}  # fmt: skip
    if _core is not None:
        values["interest_embedding_cache_hits"] = _core.encoder.hits
        values["interest_embedding_cache_misses"] = _core.encoder.misses
        values["interest_encoder_weights_loaded"] = float(_core.encoder.weights_loaded)
    rates = metrics.rolling.rates()
    if rates["n"]:
        values["interest_prequential_hit1"], values["interest_prequential_hit5"] = (
            rates["hit@1"],
            rates["hit@5"],
        )
    manifest = served_model.manifest
    values["interest_model_snapshot"] = served_model.version or 0
    if manifest and "published_at" in manifest:
        values["interest_model_snapshot_age_seconds"] = max(time.time() - manifest["published_at"], 0.0)
    return values


metrics.install(scrape)


@app.page("/metrics")
async def metrics_page(web, request):  # noqa: ANN001, ANN201 - faust's view signature
    return web.bytes(metrics.exposition(), content_type="text/plain; version=0.0.4")


@app.page("/health")
async def health_page(web, request):  # noqa: ANN001, ANN201 - faust's view signature
    return web.json({"status": "up"})


@app.page("/ready")
async def ready_page(web, request):  # noqa: ANN001, ANN201
    state = health()
    return web.json(state, status=200 if state["ready"] else 503)


def missing_changelogs() -> list[str]:
    """Changelog topics the broker no longer has (it lost its data, or someone deleted them)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.broker, client_id="interest-stream-check")
    try:
        present = set(admin.list_topics())
    finally:
        admin.close()
    return sorted(t for t in (user_states.changelog_topic.get_topic_name(),
                              heads.changelog_topic.get_topic_name()) if t not in present)  # fmt: skip


@app.timer(interval=30.0)
async def check_broker_kept_our_data() -> None:
    """A broker that lost the changelog topics cannot back this worker's state any more: exit, so the
    supervisor restarts the worker and the start-up check (``streams.recovery``) sets the state aside."""
    if _core is None:
        return
    try:
        missing = await asyncio.get_running_loop().run_in_executor(None, missing_changelogs)
    except Exception:  # noqa: BLE001 - the broker may be briefly away; that is not this check's business
        return
    if missing:
        log.critical("the broker no longer has %s (did it lose its data?); exiting so that the worker is "
                     "restarted and rebuilds from what the broker holds", ", ".join(missing))  # fmt: skip
        logging.shutdown()
        os._exit(3)


@app.timer(interval=10.0)
async def report() -> None:
    elapsed = time.monotonic() - counters.started
    p = counters.prequential.as_dict()
    state = health()
    log.info(
        "events=%d applied=%d duplicates=%d redelivered=%d dlq=%d updates=%d batches=%d lag=%d "
        "(%.0f events/s since start) prequential n=%d hit@1=%.3f hit@5=%.3f log_loss=%.3f",
        counters.events, counters.applied, counters.duplicates, counters.redelivered,
        counters.dead_lettered, counters.updates, counters.batches, state["lag"],
        counters.events / max(elapsed, 1e-9), p["n"], p["hit@1"], p["hit@5"], p["log_loss"],
    )  # fmt: skip
    if state["stalled"]:
        log.warning("consumer stalled: %d records behind and nothing done for %.0fs",
                    state["lag"], state["seconds_since_progress"])  # fmt: skip


# Last: the query API's and the live page's views use the catalog, the served model and the tables above.
from streams import api, live  # noqa: E402,F401
