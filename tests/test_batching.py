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
