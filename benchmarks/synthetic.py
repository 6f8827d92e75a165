"""A generated event stream for benchmarks: many users, MovieLens items with Zipf popularity.

The MovieLens sample has 610 users, so a micro-batch of its replay touches few of them and per-user work
(state read and write, the update message) hides. Real services see many users with a few events each;
this stream has that shape: users uniformly random, items drawn with probability ~ 1 / rank ** exponent
(rank by the sample's own rating counts), event types by the sample's rating mix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from models.sources import Record, movielens_events

DEFAULT_EXPONENT = 1.1
START_TS = 1_700_000_000


def zipf_stream(
    n_events: int,
    n_users: int = 10_000,
    exponent: float = DEFAULT_EXPONENT,
    seed: int = 0,
    items: list[str] | None = None,
    user_prefix: str = "u",
) -> Iterator[Record]:
    """``n_events`` wire-form events, one second apart, in event-time order; event ids are unique.

    ``items``: the item ids to draw from, most popular first (default: MovieLens movies by rating count).
    """
    rng = np.random.default_rng(seed)
    if items is None:
        counts = Counter(e["item_id"] for _, e in movielens_events())
        items = [i for i, _ in counts.most_common()]
    p = 1.0 / np.arange(1, len(items) + 1) ** exponent
    p /= p.sum()
    item_idx = rng.choice(len(items), size=n_events, p=p)
    users = rng.integers(0, n_users, size=n_events)
    kinds = rng.choice(3, size=n_events, p=[0.45, 0.35, 0.20])
    devices = ("web", "ios", "android")
    for n in range(n_events):
        event: dict[str, Any] = {
            "event_id": f"e{seed}-{n}",
            "user_id": f"{user_prefix}{users[n]}",
            "item_id": items[item_idx[n]],
            "ts": START_TS + n,
            "context": {"device": devices[kinds[n]]},
        }
        yield ("click", "cart", "order")[kinds[n]], event
