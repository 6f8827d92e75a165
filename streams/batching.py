"""Micro-batches as large as the backlog, never waiting on a timer while the worker is idle.

faust's ``take_events(n, within=t)`` hands over a batch when it holds n records or t seconds have passed,
and stops filling while the agent works on a batch. At low load every event then waits up to t (at
t = 0.5 s: a p50 event -> update latency of about half a second with an idle worker); under load the
records fetched during processing sit in faust's buffer instead of in the next batch.

Here a reader task moves records into a buffer all the time (up to one batch ahead: then it waits, and
faust's own buffers and flow control hold the rest), and the worker takes whatever is there as soon as
it is free, once the records already fetched have had the loop to arrive (``take``): one record at low
load, so an event is applied as soon as it arrives, and a full batch under load, so the per-batch costs
(the broker round trips that make a batch durable) are shared by many records. ``linger_s`` > 0 trades
latency back for larger batches at moderate load.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


IDLE_TURNS = 4
"""Loop turns without a new record after which ``take`` stops waiting for more: a record on its way from
faust's buffers to this one passes a few tasks, each a turn."""


class AdaptiveBatches(Generic[T]):
    def __init__(self, max_batch: int, linger_s: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._buffer: list[T] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self._buffer)

    async def put(self, item: T) -> None:
        """Add a record; wait while a whole batch is already waiting (back-pressure on the reader)."""
        while len(self._buffer) >= self.max_batch:
            self._room.clear()
            await self._room.wait()
        self._buffer.append(item)
        self._arrived.set()

    async def take(self) -> list[T]:
        """The records waiting now (at most ``max_batch``); wait only if there are none.

        Records already fetched reach the buffer only when the reader (and faust's tasks behind it) get
        the event loop, so right after a batch the buffer holds only what moved while that batch awaited
        the broker. Before taking, the loop is yielded for as long as the buffer keeps growing (up to
        ``max_batch``): a backlog then makes full batches, and at low load this costs a few loop turns."""
        while not self._buffer:
            self._arrived.clear()
            await self._arrived.wait()
        idle_turns = 0
        while len(self._buffer) < self.max_batch and idle_turns < IDLE_TURNS:
            before = len(self._buffer)
            await asyncio.sleep(0)
            idle_turns = idle_turns + 1 if len(self._buffer) == before else 0
        if self.linger_s > 0 and len(self._buffer) < self.max_batch:
            await asyncio.sleep(self.linger_s)
        return self.take_now()

    def take_now(self) -> list[T]:
        """The records waiting now (at most ``max_batch``; maybe none), without waiting."""
        batch = self._buffer[: self.max_batch]
        del self._buffer[: self.max_batch]
        self._room.set()
        return batch


async def adaptive_batches(
    source: AsyncIterator[T], max_batch: int, linger_s: float = 0.0
) -> AsyncIterator[list[T]]:
    """Batches of ``source`` as ``AdaptiveBatches`` forms them, read by a task of its own; an error of
    ``source`` is raised here, and the reader stops when the consumer of these batches does."""
    batches: AdaptiveBatches[T] = AdaptiveBatches(max_batch, linger_s)

    async def read() -> None:
        async for item in source:
            await batches.put(item)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            taking = asyncio.ensure_future(batches.take())
            await asyncio.wait({taking, reader}, return_when=asyncio.FIRST_COMPLETED)
            if taking.done():
                yield taking.result()
                continue
            taking.cancel()  # a take leaves the buffer as it is until it returns
            reader.result()  # the source failed: raise its error
            while len(batches):  # the source ended: what it delivered still goes out
                yield batches.take_now()
            return
    finally:
        reader.cancel()
