"""A model snapshot as a trainer would publish it after a stream: what a benchmark's worker serves.

The ranker learns the stream's events in event time (successor counts and popularity are what a list
costs to score); the sequence model is untrained, since a forward pass costs the same whatever its
weights are. Both go out bundled, as ``streams.model_sync`` publishes them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from models.config import InterestConfig
from models.sources import Record


def served_snapshot(
    records: Iterable[Record], item_vectors: dict[str, np.ndarray], config: InterestConfig
) -> bytes:
    """The bundled snapshot (sequence model + ranker) after ``records``; ``item_vectors``: item id -> its
    text embedding, for every item the ranker should hold."""
    from models.ranker import NextItemRanker, RecentItems
    from models.sequence import SequenceModel
    from streams.model_sync import bundle

    dim = len(next(iter(item_vectors.values())))
    ranker = NextItemRanker(config, dim)
    ranker.add_items(item_vectors.items())
    recent = RecentItems(config.history_len)
    for _, e in sorted(records, key=lambda r: (r[1]["ts"], str(r[1]["event_id"]))):
        ranker.learn(recent.items(e["user_id"]), e["item_id"], item_vectors[e["item_id"]])
        recent.add(e["user_id"], float(e["ts"]), e["item_id"])
    return bundle(SequenceModel(dim).to_bytes(), ranker.to_bytes())
