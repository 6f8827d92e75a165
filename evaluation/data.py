"""Event logs for evaluation: MovieLens or the generic events + items JSONL, validated like the worker.

Every record goes through the core's ``parse_event`` / ``resolve_item``, so an evaluation sees exactly
the events a worker would apply; rejected records are counted by reason and reported.

The ranking catalogue is the set of items that occur in the log (the convention of the published
leave-one-out numbers this is compared with); items only in the items file are kept for their text.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.events import Event, InvalidEvent, Item, event_order, parse_event, parse_item, resolve_item
from models.sources import Record, movielens_events, movielens_items, read_jsonl


def item_sort_key(item_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the others as text: the order of the catalogue and of users."""
    return (0, int(item_id)) if item_id.isdigit() else (1, item_id)


@dataclass
class EventLog:
    name: str
    events: list[tuple[Event, Item]]  # in ``event_order`` (time, then event id)
    items: list[str]  # the ranking catalogue: item ids in the log, in item_sort_key order
    rejected: Counter = field(default_factory=Counter)
    notes: dict[str, Any] = field(default_factory=dict)  # how the data was prepared, for the report

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
        return EventLog(self.name, events, _catalogue(events), self.rejected, self.notes)

    def with_items(self, catalog: dict[str, Item], **notes: Any) -> EventLog:
        """The same events with their items' text and categories taken from ``catalog``."""
        events = [(event, catalog[event.item_id]) for event, _ in self.events]
        return EventLog(self.name, events, self.items, self.rejected, self.notes | notes)


Pair = tuple[Event, Item]


def held_out(events: list[Pair]) -> list[tuple[Pair, Pair]]:
    """Leave-one-out's held-out events: per user with at least 3 events, (validation, test) = the user's
    last two in ``event_order``. ``events`` must be in that order (an ``EventLog``'s are)."""
    per_user: dict[str, list[Pair]] = {}
    for pair in events:
        per_user.setdefault(pair[0].user_id, []).append(pair)
    return [(seq[-2], seq[-1]) for seq in per_user.values() if len(seq) >= 3]


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
    events.sort(key=lambda pair: event_order(pair[0]))
    return EventLog(name, events, _catalogue(events), rejected)


TAG_RULE = (
    "Item text uses only tags written before the movie's first held-out (validation or test) event and "
    "never tags by a user the movie is held out from."
)

DENSE_ITEMS = 1500
"""The dense variant of the MovieLens sample (``evaluate --dataset movielens-dense``): its most-rated
movies only (``EventLog.most_interacted``)."""


def load_movielens(folder: Path, most_interacted: int | None = None) -> EventLog:
    """The MovieLens mapping of ``models.sources`` (rating -> click/cart/order, genres as categories),
    optionally only the ``most_interacted`` items (the dense variant).

    Item text is built from ``tags.csv`` without leaking the held-out events: a tag counts only if it
    was written before the first held-out (validation or test) event on its movie, and never when its
    author is a user the movie is held out from. Unfiltered, a few test items carried the test user's
    own tag."""
    log = build_log("movielens", movielens_events(folder), movielens_items(folder))
    if most_interacted is not None:
        log = log.most_interacted(most_interacted)
    first_held: dict[str, float] = {}
    held_pairs: set[tuple[str, str]] = set()
    for pair in (p for two in held_out(log.events) for p in two):
        event = pair[0]
        held_pairs.add((event.user_id, event.item_id))
        first_held[event.item_id] = min(event.ts, first_held.get(event.item_id, math.inf))
    dropped = Counter[str]()

    def keep(user: str, movie: str, ts: int) -> bool:
        if (user, movie) in held_pairs:
            dropped["by a user the movie is held out from"] += 1
            return False
        if ts >= first_held.get(movie, math.inf):
            dropped["written after the movie's first held-out event"] += 1
            return False
        return True

    items = movielens_items(folder, keep)
    return log.with_items(items, tags_dropped=dict(dropped), tag_rule=TAG_RULE)


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
