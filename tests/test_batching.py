"""Adaptive micro-batches: no waiting when idle, batches as large as the backlog under load."""

from __future__ import annotations

import asyncio
import time

import pytest

from streams.batching import adaptive_batches


async def _source(items, gaps):
    for item, gap in zip(items, gaps, strict=True):
        if gap:
            await asyncio.sleep(gap)
        yield item


def test_an_idle_worker_takes_each_record_as_it_arrives():
    async def main():
        got, waited = [], []
        sent = time.monotonic()
        async for batch in adaptive_batches(_source(range(5), [0.05] * 5), max_batch=256):
            waited.append(time.monotonic() - sent)
            got.append(batch)
            sent = time.monotonic()
        return got, waited

    got, waited = asyncio.run(main())
    assert got == [[0], [1], [2], [3], [4]]
    assert max(waited) < 0.5  # a take_events(within=0.5) batch would have waited for the timer


def test_a_busy_worker_gets_the_backlog_in_full_batches_in_order():
    async def main():
        got = []
        async for batch in adaptive_batches(_source(range(1000), [0] * 1000), max_batch=100):
            got.append(batch)
            await asyncio.sleep(0.01)  # processing: the reader fills the next batch meanwhile
        return got

    got = asyncio.run(main())
    assert [x for b in got for x in b] == list(range(1000))
    assert max(len(b) for b in got) == 100 and len(got) <= 12


def test_an_error_of_the_source_reaches_the_consumer():
    async def broken():
        yield 1
        raise RuntimeError("fetch failed")

    async def main():
        return [b async for b in adaptive_batches(broken(), max_batch=10)]

    with pytest.raises(RuntimeError, match="fetch failed"):
        asyncio.run(main())


def test_a_backlog_that_moves_a_hop_per_loop_turn_still_makes_full_batches():
    """Like faust's buffers: fetched records reach the source through another task, a hop per loop turn,
    and a worker busy without awaiting (the core's arithmetic) lets nothing move meanwhile."""

    async def main():
        hops: asyncio.Queue[int] = asyncio.Queue()

        async def fetcher():
            for i in range(1000):
                await hops.put(i)
                await asyncio.sleep(0)

        async def source():
            for _ in range(1000):
                yield await hops.get()

        feeding = asyncio.ensure_future(fetcher())
        got = []
        async for batch in adaptive_batches(source(), max_batch=100):
            got.append(batch)
            time.sleep(0.002)  # processing that never yields the loop
        await feeding
        return got

    got = asyncio.run(main())
    assert [x for b in got for x in b] == list(range(1000))
    assert len(got) <= 12, [len(b) for b in got]  # taken as it stood after each batch: ~1 record each
