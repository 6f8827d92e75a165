"""The file-replay driver: the same core as the worker, fed from an iterable instead of Kafka.

Used for backfills and as the reference that integration tests compare the worker with.
Records are validated exactly as the worker validates them; rejections are counted by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from models.core import InterestCore, InterestUpdate
from models.events import Event, InvalidEvent, Item, parse_event, resolve_item
from models.head import SoftmaxHead
from models.interest import UserState


@dataclass
class ReplayResult:
    states: dict[str, UserState]
    head: SoftmaxHead
    updates: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)


def replay(
    records: Iterable[tuple[str, bytes | dict[str, Any]]],
    core: InterestCore,
    catalog: dict[str, Item],
    batch_size: int = 256,
    on_update: Callable[[InterestUpdate], None] | None = None,
) -> ReplayResult:
    result = ReplayResult(states={}, head=core.new_head())
    batch: list[tuple[Event, Item]] = []

    def flush() -> None:
        embeddings = core.embed([item for _, item in batch])
        out = core.apply(batch, embeddings, result.states, result.head)
        result.states.update(out.states)
        result.updates += len(out.updates)
        result.duplicates += out.duplicates
        if on_update is not None:
            for update in out.updates:
                on_update(update)
        batch.clear()

    for event_type, raw in records:
        if isinstance(raw, dict):
            raw = json.dumps(raw).encode()
        try:
            event = parse_event(raw, event_type)
            batch.append((event, resolve_item(event, catalog.get)))
        except InvalidEvent as exc:
            result.rejected[exc.reason] += 1
            continue
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return result
