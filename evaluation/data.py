"""Event logs for evaluation: MovieLens or the generic events + items JSONL, validated like the worker.

Every record goes through the core's ``parse_event`` / ``resolve_item``, so an evaluation sees exactly
the events a worker would apply; rejected records are counted by reason and reported.

The ranking catalogue is the set of items that occur in the log (the convention of the published
leave-one-out numbers this is compared with); items only in the items file are kept for their text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.events import Event, InvalidEvent, Item, parse_event, parse_item, resolve_item
from models.sources import Record, movielens_events, movielens_items, read_jsonl


def item_sort_key(item_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the others as text: the tie-break of the split."""
    return (0, int(item_id)) if item_id.isdigit() else (1, item_id)


@dataclass
class EventLog:
    name: str
    events: list[tuple[Event, Item]]  # in event-time order (ties: user, item id)
    items: list[str]  # the ranking catalogue: item ids in the log, in item_sort_key order
    rejected: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.item_index = {item_id: i for i, item_id in enumerate(self.items)}
        self.item_of = {event.item_id: item for event, item in self.events}

    @property
    def users(self) -> list[str]:
        return sorted({event.user_id for event, _ in self.events}, key=item_sort_key)

    def most_interacted(self, n_items: int) -> EventLog:
        """The log restricted to its ``n_items`` items with the most events (ties: item id): a denser
        variant of a sparse log, where order and item-to-item structure carry more signal."""
        counts = Counter(event.item_id for event, _ in self.events)
        keep = set(sorted(counts, key=lambda i: (-counts[i], item_sort_key(i)))[:n_items])
        events = [pair for pair in self.events if pair[0].item_id in keep]
        return EventLog(f"{self.name}-dense{n_items}", events, _catalogue(events))

    def first_users(self, n: int) -> EventLog:
        """The log of the first ``n`` users (in id order) only: quick runs on a slice of a big log."""
        keep = set(self.users[:n])
        events = [pair for pair in self.events if pair[0].user_id in keep]
        return EventLog(self.name, events, _catalogue(events), self.rejected)


def _catalogue(events: list[tuple[Event, Item]]) -> list[str]:
    return sorted({event.item_id for event, _ in events}, key=item_sort_key)


def build_log(name: str, records: Iterable[Record], catalog: dict[str, Item]) -> EventLog:
    events: list[tuple[Event, Item]] = []
    rejected: Counter = Counter()
    for event_type, obj in records:
        try:
            event = parse_event(json.dumps(obj).encode(), event_type)
            events.append((event, resolve_item(event, catalog.get)))
        except InvalidEvent as exc:
            rejected[exc.reason] += 1
    events.sort(key=lambda pair: (pair[0].ts, item_sort_key(pair[0].user_id), item_sort_key(pair[0].item_id)))
    return EventLog(name, events, _catalogue(events), rejected)


def load_movielens(folder: Path) -> EventLog:
    """The MovieLens mapping of ``models.sources`` (rating -> click/cart/order, genres as categories)."""
    return build_log("movielens", movielens_events(folder), movielens_items(folder))


def read_items_jsonl(path: Path) -> dict[str, Item]:
    """Lines of ``{"item_id", "title", "text", "categories"}``."""
    items = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj: Any = json.loads(line)
            try:
                item_id = obj.pop("item_id")
                items[str(item_id)] = parse_item(obj)
            except (KeyError, AttributeError, InvalidEvent) as exc:
                raise ValueError(f"{path}:{line_no}: not an item line ({exc})") from exc
    return items


def load_jsonl(events: Path, items: Path, name: str | None = None) -> EventLog:
    return build_log(name or Path(events).stem, read_jsonl(Path(events)), read_items_jsonl(Path(items)))
