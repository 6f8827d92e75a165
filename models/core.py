"""The core step shared by every driver: a micro-batch of valid events in, interest updates out.

No Kafka here. The Faust worker and the file replay both call ``embed`` then ``apply``; they differ only
in where states and heads are stored and where updates go.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.cache import CachedEncoder
from models.config import InterestConfig
from models.events import Event, Item
from models.fusion import feature_dim, fuse
from models.head import SoftmaxHead
from models.interest import UserState
from models.ranker import NextItemRanker


@dataclass
class InterestUpdate:
    """One message on the updates topic (see ``schemas/interest-update.schema.json``)."""

    user_id: str
    version: int
    event_ts: float
    embedding: np.ndarray
    top_interests: list[tuple[str, float]]
    events_applied: int
    model: str
    last_event: Event

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "version": self.version,
            "event_ts": self.event_ts,
            "embedding": np.round(self.embedding.astype(np.float64), 7).tolist(),
            "top_interests": [{"category": c, "p": round(p, 6)} for c, p in self.top_interests],
            "events_applied": self.events_applied,
            "model": self.model,
            "last_event": {
                "event_id": self.last_event.event_id,
                "type": self.last_event.type,
                "item_id": self.last_event.item_id,
            },
        }


@dataclass
class BatchResult:
    updates: list[InterestUpdate]
    states: dict[str, UserState]  # the states that changed, to write back
    duplicates: int
    applied: list[tuple[Event, Item]]  # in the order they were applied (event time)
    predictions: list[np.ndarray]  # per applied event: the head's category probabilities before it


class InterestCore:
    def __init__(self, config: InterestConfig, encoder: CachedEncoder) -> None:
        self.config = config
        self.encoder = encoder
        self.dim = encoder.dim
        self.n_features = feature_dim(self.dim, config)

    def new_head(self) -> SoftmaxHead:
        return SoftmaxHead(self.n_features, self.config.learning_rate, self.config.l2)

    def new_state(self) -> UserState:
        return UserState.empty(self.dim, self.config.dedup_window)

    def embed(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        """Unit vectors keyed by encoder text; all cache misses of the batch go in one encoder call."""
        return self.encoder.embed([item.encoder_text for item in items])

    def apply(
        self,
        events: Sequence[tuple[Event, Item]],
        embeddings: dict[str, np.ndarray],
        states: MutableMapping[str, UserState] | dict[str, UserState],
        head: SoftmaxHead,
        ranker: NextItemRanker | None = None,
    ) -> BatchResult:
        """Apply events in event-time order; one update per touched user (its newest state).

        For each event: predict its categories from the state before it and learn (test-then-train),
        then move the user's interest state. ``states`` is read for users not yet loaded; changed states
        are returned, not written, so the caller owns storage. A ``ranker`` learns from each event too.
        """
        cfg = self.config
        changed: dict[str, UserState] = {}
        last: dict[str, Event] = {}
        duplicates = 0
        applied = []
        predictions = []
        for event, item in sorted(events, key=lambda pair: (pair[0].ts, pair[0].event_id)):
            state = changed.get(event.user_id)
            if state is None:
                state = states.get(event.user_id) or self.new_state()
            if state.has_seen(event.event_id):
                duplicates += 1
                continue
            x = fuse(state, event.ts, event.context, cfg)
            predictions.append(head.test_then_train(x, item.categories))
            emb = embeddings[item.encoder_text]
            if ranker is not None:
                ranker.learn(state.recent_items, event.item_id, emb)
            state.add(event.event_id, event.ts, event.type, emb, cfg, event.item_id)
            changed[event.user_id] = state
            last[event.user_id] = event
            applied.append((event, item))
        updates = []
        for user_id, state in changed.items():
            state.version += 1
            newest = last[user_id]
            x = fuse(state, newest.ts, newest.context, cfg)
            updates.append(
                InterestUpdate(
                    user_id=user_id,
                    version=state.version,
                    event_ts=state.t_ref,
                    embedding=state.embedding(),
                    top_interests=head.top_k(x, cfg.top_k),
                    events_applied=state.events_applied,
                    model=self.encoder.name,
                    last_event=newest,
                )
            )
        return BatchResult(updates, changed, duplicates, applied, predictions)
