"""What the worker commits: only input offsets whose effects are already durable in Kafka.

faust commits what its streams *acked*, and an ack is not proof of work: ``take_events`` acks a whole batch
when the agent's loop moves on, also when processing it failed, and faust acks records it dropped around a
rebalance (see ``Consumer._new_offset`` and the fetch loop in faust-streaming 0.15.3). Committing those
offsets loses events. So the worker keeps its own ledger and faust's commit commits the ledger, never the
acks.

A commit, whoever triggers it (faust's commit timer, ``broker_commit_every``, shutdown), goes:

1. per input partition, the ledger names the offset after the last record that a *finished* batch
   handled (applied, recognised as already applied, or dead-lettered);
2. faust flushes the producer, so those batches' changelog records (user states, heads), their
   interest updates and their dead letters are acknowledged by the broker;
3. the offsets are committed (never one that goes backwards).

Recovery therefore restarts from a point whose effects are all in Kafka. What is redelivered past it is
recognised exactly: each user state records the input offsets it has applied (``models/interest.py``).

The ledger also keeps each partition's records in offset order for the core, and it is the only filter
on input records: faust's own (it drops a record below the highest offset it has passed on, see
``Consumer._drain_messages``) is switched off for the input topics by ``install``, because it also drops
the records a seek back asks for again whenever a record fetched before the seek is drained after it.
Offsets arrive in order within a partition; a jump means records were skipped on the way (faust abandons
records around a rebalance: a gap) or simply do not exist (transaction markers). The ledger never guesses
which: the worker asks the broker (``OffsetProbe``: one fetch tells every offset that holds no record), goes
on over offsets that hold none, and for a real gap seeks back to the first missing offset and drops the
partition's later records until exactly that offset arrives. A record merely "close" to the gap proves
nothing: faust may still deliver records fetched before the seek.

Everything is per consumer generation: a rebalance starts a new ledger, and records fetched in an older
generation are dropped (faust seeks to the committed offsets after a rebalance, so they come again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

log = logging.getLogger("interest_stream.checkpoint")


class TP(NamedTuple):
    """Same shape as faust's ``TP``, so either can be used as a key."""

    topic: str
    partition: int


class Verdict(Enum):
    PROCESS = "process"  # the next record of its partition
    SEEN = "seen"  # below the handled prefix: handled already in this assignment
    SEEK = "seek"  # past a gap: seek the partition back to ``Ledger.read_offset(tp)``, drop the record
    AHEAD = "ahead"  # fetched before a seek back: dropped, the re-fetch brings it again
    STALE = "stale"  # fetched in an earlier consumer generation: dropped, it comes again


@dataclass
class _Rewind:
    expected: int  # the first offset not yet read; later records are dropped until it arrives


ABSENT_RANGES_KEPT = 1024
"""Per partition, how many ranges of offsets known not to exist the ledger remembers (the newest)."""


class OffsetLedger:
    """Per input partition: how far records have been read into batches, and how far they are done."""

    def __init__(self) -> None:
        self._read: dict[TP, int] = {}  # next offset to admit
        self._done: dict[TP, int] = {}  # next offset after what finished batches handled
        self._committed: dict[TP, int] = {}
        self._rewind: dict[TP, _Rewind] = {}
        self._absent: dict[TP, list[tuple[int, int]]] = {}  # [start, end) the broker says do not exist
        self.generation = 0  # increases with every assignment this ledger has seen
        self._assignment: tuple[int, int] = (-1, -1)
        self._consumer_generation = -1
        self.gaps = 0  # gaps met (and failed batches), each sought back over
        self.progressed_at = time.monotonic()

    def begin(self, generation: int, rebalances: int = 0) -> None:
        """Called before each batch with the consumer's generation and the app's rebalance count: after
        a rebalance the ledger starts afresh (both, because a group the broker lost restarts its
        generations at 1)."""
        self._consumer_generation = generation
        if (generation, rebalances) != self._assignment:
            self._assignment = (generation, rebalances)
            self.generation += 1
            for table in (self._read, self._done, self._committed, self._rewind):
                table.clear()

    def is_current(self, generation: int, rebalances: int) -> bool:
        return (generation, rebalances) == self._assignment

    # -- admission: called for each record, in the order the stream delivers them -----------------
    def admit(
        self, tp: TP, offset: int, generation: int | None = None, committed: int | None = None
    ) -> Verdict:
        """``committed``: the partition's committed offset as the consumer sought it (0 when there is
        none): the first record of an assignment must sit exactly there, or what lies between is re-read
        (never assumed done: a commit past unread records would lose them)."""
        if generation is not None and generation != self._consumer_generation:
            return Verdict.STALE
        read = self._read.get(tp)
        if read is None:  # first record of this partition in this assignment: faust sought it here
            if committed is not None and offset > committed:
                # ... but records were skipped between the committed offset and this one.
                self._read[tp] = self._done[tp] = committed
                return self.admit(tp, offset)
            self._read[tp] = offset + 1
            self._done.setdefault(tp, offset)
            return Verdict.PROCESS
        if offset < read:
            return Verdict.SEEN
        rewind = self._rewind.get(tp)
        if offset == read or self._absent_between(tp, read, offset):
            self._rewind.pop(tp, None)
            self._read[tp] = offset + 1
            return Verdict.PROCESS
        if rewind is not None:
            return Verdict.AHEAD
        self._rewind[tp] = _Rewind(read)
        self.gaps += 1
        log.debug("jump in %s: expected offset %d, got %d", tp, read, offset)
        return Verdict.SEEK

    def admit_batch(
        self, records: Sequence[tuple[TP, int, int | None, int | None]]
    ) -> tuple[list[int], dict[TP, int]]:
        """``admit`` for a batch of (partition, offset, generation, committed offset) in delivery order:
        the indices of the records to process, and for each partition with a gap the index of the record
        that revealed it (the partition is to be sought back to ``read_offset``, unless the broker says
        nothing lies between: ``note_absent``, then admit its records from that index again).

        Once a partition has a gap, its later records in the batch are not judged at all. They may be
        the missing records already (faust re-fetches from the committed offset after a rebalance, so a
        batch can hold a record fetched before that seek and then the re-fetch), and admitting them would
        move the read position past records that this batch drops, so that the seek's re-fetch would
        find them "seen": never processed, and committed with the next record done."""
        process, gaps = [], {}
        for index, (tp, offset, generation, committed) in enumerate(records):
            if tp in gaps:
                continue
            verdict = self.admit(tp, offset, generation, committed)
            if verdict is Verdict.PROCESS:
                process.append(index)
            elif verdict is Verdict.SEEK:
                gaps[tp] = index
        return process, gaps

    def note_absent(self, tp: TP, start: int, end: int) -> int:
        """The broker says offsets ``start`` .. ``end - 1`` of ``tp`` hold no record (transaction
        markers, compacted or deleted records): a jump over them is not a gap. Kept across assignments
        (it is a fact about the log), the newest ``ABSENT_RANGES_KEPT`` ranges per partition. Returns how
        many of those offsets were not known before."""
        new = self._records_between(tp, start, end)
        if new:
            ranges = self._absent.setdefault(tp, [])
            ranges.append((start, end))
            del ranges[:-ABSENT_RANGES_KEPT]
        return new

    def note_records_from(
        self, tp: TP, start: int, offsets: Sequence[int], position: int | None = None
    ) -> int:
        """A fetch from ``start`` brought records at ``offsets`` (ascending) and left the reader at
        ``position``: every offset from ``start`` to the last record that is not among them holds no
        record, and so does every offset from after the last record (or ``start``) to ``position`` (a
        reader moves past offsets without records, such as transaction markers, only once it has read
        them). Returns how many such offsets were not known before."""
        absent = [(low + 1, high) for low, high in zip([start - 1, *offsets], offsets, strict=False)
                  if high > low + 1]  # fmt: skip
        after = offsets[-1] + 1 if offsets else start
        if position is not None and position > after:
            absent.append((after, position))
        return sum(self.note_absent(tp, low, high) for low, high in absent)

    def _absent_between(self, tp: TP, start: int, end: int) -> bool:
        """Whether every offset in [start, end) is known to hold no record."""
        return self._records_between(tp, start, end) == 0

    def read_offset(self, tp: TP) -> int:
        return self._read[tp]

    # -- completion --------------------------------------------------------------------------------
    def done(self, last: Mapping[TP, int], generation: int) -> None:
        """A batch finished: ``last`` is, per partition, the highest offset it admitted."""
        if generation != self.generation:
            return  # its partitions were revoked meanwhile; the new owner redoes what is uncommitted
        for tp, offset in last.items():
            if tp in self._done:
                self._done[tp] = max(self._done[tp], offset + 1)
        self.progressed_at = time.monotonic()

    def failed(self, partitions: Iterable[TP], generation: int) -> dict[TP, int]:
        """A batch failed: read its ``partitions`` again from what is done. Returns where to seek each."""
        if generation != self.generation:
            return {}
        seeks = {}
        for tp in partitions:
            if tp in self._done:
                done = self._done[tp]
                self._read[tp] = done
                self._rewind[tp] = _Rewind(done)
                seeks[tp] = done
                self.gaps += 1
        return seeks

    # -- commits ---------------------------------------------------------------------------------
    def committable(self) -> dict[TP, int]:
        """Offsets to commit now: what is done, where that is ahead of the last commit."""
        return {tp: off for tp, off in self._done.items() if off > self._committed.get(tp, -1)}

    def committed(self, offsets: Mapping[Any, int]) -> None:
        for tp, offset in offsets.items():
            self._committed[TP(tp.topic, tp.partition)] = offset

    def lag(self, highwaters: Mapping[TP, int | None]) -> int:
        """Records not yet done, summed over the partitions with a known high-water mark (offsets known to
        hold no record, like the marker a transaction leaves at the end of a partition, do not count)."""
        return sum(
            self._records_between(tp, self._done[tp], hw)
            for tp, hw in highwaters.items()
            if hw is not None and tp in self._done
        )

    def partitions(self) -> list[TP]:
        return list(self._done)

    def waiting(
        self,
        owned: Iterable[TP],
        generation: int,
        rebalances: int,
        start: Mapping[TP, int],
        ends: Mapping[TP, int],
    ) -> dict[TP, tuple[int, int]]:
        """Owned partitions holding records this worker has not done: partition -> (the first offset not
        done, how many records from there to the high-water mark may hold records).

        A partition that has delivered something in this assignment counts from what is done; one that
        has not, from ``start`` (where reading starts: the committed offset or the earliest record). The
        latter is not lagging by ``lag`` (which knows only partitions it has seen). ``ends``: the
        high-water marks; a partition without one is not judged."""
        current = self.is_current(generation, rebalances)
        waiting = {}
        for tp in owned:
            if tp not in ends:
                continue
            begin = self._done[tp] if current and tp in self._done else start.get(tp, 0)
            count = self._records_between(tp, begin, ends[tp])
            if count > 0:
                waiting[tp] = (begin, count)
        return waiting

    def _records_between(self, tp: TP, start: int, end: int) -> int:
        """How many offsets in [start, end) are not known to hold no record."""
        if end <= start:
            return 0
        known = 0
        position = start
        for low, high in sorted(self._absent.get(tp, ())):
            low, high = max(low, position), min(high, end)
            if high > low:
                known += high - low
                position = high
        return end - start - known

    def describe(self, tp: TP) -> str:
        rewind = self._rewind.get(tp)
        text = f"read={self._read.get(tp)} done={self._done.get(tp)} committed={self._committed.get(tp)}"
        return text + (f" awaiting the re-fetch of {rewind.expected}" if rewind else "")

    def reread(self, tp: TP) -> None:
        """Forget how far ``tp`` was read (not what is done): its next record is admitted as the first
        of the assignment, checked against the committed offset. For a partition sought back to where
        reading starts because the records it owes never came."""
        self._read.pop(tp, None)
        self._rewind.pop(tp, None)
        self.gaps += 1


class OffsetProbe:
    """Asks the broker where a partition's records resume at or after an offset, so that the ledger
    never has to guess whether a jump in offsets is a gap (records skipped on the way: re-read them) or
    offsets that hold no record (transaction markers: go on).

    A kafka-python consumer of its own (no group, the worker's isolation level: read_uncommitted),
    created on first use and kept; one question at a time. Blocking: call it from a thread."""

    def __init__(self, bootstrap: str, timeout_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._consumer: Any = None
        self._lock = threading.Lock()

    def records_from(self, tp: TP, offset: int, max_records: int = 1000) -> tuple[list[int], int | None]:
        """The offsets of the records at and after ``offset`` that one fetch brings (up to
        ``max_records``), and where the reader then stands. Offsets missing between ``offset`` and the
        last record, or between the last record (or ``offset``) and that position, hold no record: a
        read_uncommitted fetch returns every record, and a reader moves past an offset without one (a
        transaction marker, what compaction or retention removed) only once it has read it. No records
        and no move within the time: ``([], None)``."""
        from kafka import KafkaConsumer, TopicPartition

        with self._lock:
            if self._consumer is None:
                self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                               enable_auto_commit=False, auto_offset_reset="earliest",
                                               client_id="interest-stream-offset-probe")  # fmt: skip
            consumer = self._consumer
            partition = TopicPartition(tp.topic, tp.partition)
            if consumer.assignment() != {partition}:
                consumer.assign([partition])
            consumer.seek(partition, offset)
            end = consumer.end_offsets([partition])[partition]
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                records = consumer.poll(timeout_ms=200, max_records=max_records).get(partition)
                if records:
                    return [record.offset for record in records], consumer.position(partition)
                position = consumer.position(partition)
                if position >= end:  # read to the end: nothing but markers from ``offset`` on
                    return [], position
            return [], None

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


class _UnfilteredInputs(dict):
    """faust's per-partition read offsets, reading as "none" for the input topics (see the module doc)."""

    def __init__(self, inputs: set[str], current: Mapping[Any, int | None]) -> None:
        super().__init__(current)
        self.inputs = inputs

    def __getitem__(self, tp: Any) -> int | None:
        if tp.topic in self.inputs:
            return None
        return self.get(tp)


def install(app: Any, ledger: OffsetLedger, input_topics: Iterable[str]) -> None:
    """Make faust's consumer commit the ledger for the input topics, and pass every fetched input record
    to the ledger. Call it before faust's fetcher starts (it binds the read-offset map when it does).

    faust's own bookkeeping of acks still runs (it trims its lists); only its result is replaced.
    """
    consumer = app.consumer
    inputs = set(input_topics)
    if getattr(consumer, "_interest_ledger", None) is ledger:
        return
    consumer._interest_ledger = ledger
    consumer._read_offset = _UnfilteredInputs(inputs, consumer._read_offset)
    fetcher = getattr(app, "_fetcher", None)
    if fetcher is not None and fetcher.started:  # it still filters until the next rebalance restarts it
        log.warning("the offset ledger was installed after faust's fetcher started")

    async def commit_tps(tps: Iterable[Any], start_new_transaction: bool) -> bool:
        consumer._filter_committable_offsets(tps)  # keeps faust's ack lists short; offsets unused
        if app.rebalancing or not consumer.flow_active:
            return False  # mid-rebalance: what is done is committed by the next commit, or redone
        if not ledger.is_current(app.consumer_generation_id, app.rebalancing_count):
            return False  # rebalanced since the last batch: nothing of this generation is done yet
        assigned = {TP(tp.topic, tp.partition): tp for tp in consumer.assignment() if tp.topic in inputs}
        offsets = {assigned[tp]: off for tp, off in ledger.committable().items() if tp in assigned}
        if not offsets:
            return False
        # _commit_offsets flushes the producer before it commits (step 2 above).
        did = await consumer._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        if did:
            ledger.committed(offsets)
        return did

    consumer._commit_tps = commit_tps
