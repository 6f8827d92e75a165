"""Micro-batches as large as the backlog, never waiting on a timer while the worker is idle.

faust's ``take_events(n, within=t)`` hands over a batch when it holds n records or t seconds have passed,
and stops filling while the agent works on a batch. At low load every event then waits up to t (at
t = 0.5 s: a p50 event -> update latency of about half a second with an idle worker); under load the
records fetched during processing sit in faust's buffer instead of in the next batch.

Here a reader task moves records into a buffer all the time (up to one batch ahead: then it waits, and
faust's own buffers and flow control hold the rest), and the worker takes whatever is there as soon as
it is free: one record at low load, so an event is applied as soon as it arrives, and a full batch under
load, so the per-batch costs (the broker round trips that make a batch durable) are shared by many
records. ``linger_s`` > 0 trades latency back for larger batches at moderate load.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


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
        """The records waiting now (at most ``max_batch``); wait only if there are none."""
        while not self._buffer:
            self._arrived.clear()
            await self._arrived.wait()
        if self.linger_s > 0 and len(self._buffer) < self.max_batch:
            await asyncio.sleep(self.linger_s)
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
            if not taking.done():
                taking.cancel()
                reader.result()  # the source failed: raise its error
                return  # the source ended
            yield taking.result()
    finally:
        reader.cancel()
