"""Next-item ranker: which item will this user act on next?

The interest vector alone (a decayed mean of item-text embeddings) ranks the catalogue poorly: on
MovieLens it loses to plain popularity (see ``benchmarks/results/eval-movielens.md``). What it misses is
*order*: what people pick right after the items this user just picked. The ranker learns that online,
from the same stream, as sparse successor counts, and mixes three scores for item j::

    score(j) = sequence_weight * seq(j) / max(seq)
             + text_weight * cos(interest, e_j) + popularity_weight * pop(j)

    seq(j)   = sum_k history_decay**k * T[i_k, j] / (out(i_k) + 1)**degree_power
               over the user's recent items i_0 (newest), i_1, ...
    T[i, j] += transition_decay**(d - 1)             when j comes d <= transition_window events after i
    T[j, i] += transition_backward * (the same)      (order within a session is only partly meaningful)
    pop(j)   = log1p(count_j) / log1p(max count)

Learning is counting, so it is exact, one pass, order-independent across users and cheap (a few dict
updates per event); the per-user part is the interest state plus the last ``history_len`` item ids.
Every number is in ``InterestConfig``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from models.config import InterestConfig


class NextItemRanker:
    def __init__(self, config: InterestConfig, dim: int) -> None:
        self.config = config
        self.dim = dim
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._emb = np.zeros((0, dim), np.float32)
        self._pop = np.zeros(0, np.float64)
        self.successors: list[dict[int, float]] = []
        self._out = np.zeros(0, np.float64)

    @property
    def n_items(self) -> int:
        return len(self.ids)

    def add_item(self, item_id: str, embedding: np.ndarray) -> int:
        """Make an item rankable (a catalogue item can be recommended before anyone acted on it)."""
        idx = self.index.get(item_id)
        if idx is not None:
            return idx
        idx = len(self.ids)
        if idx == len(self._emb):  # grow by doubling: amortised O(1) per item
            cap = max(16, 2 * idx)
            self._emb = np.resize(self._emb, (cap, self.dim))
            self._pop = np.resize(self._pop, cap)
            self._out = np.resize(self._out, cap)
            self._pop[idx:] = 0
            self._out[idx:] = 0
        self._emb[idx] = embedding
        self.ids.append(item_id)
        self.index[item_id] = idx
        self.successors.append({})
        return idx

    def add_items(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        for item_id, emb in items:
            self.add_item(item_id, emb)

    def learn(self, history: Sequence[str], item_id: str, embedding: np.ndarray) -> None:
        """Learn from one event: ``history`` is the user's recent item ids *before* it, oldest first."""
        cfg = self.config
        j = self.add_item(item_id, embedding)
        self._pop[j] += 1.0
        recent = history[-cfg.transition_window :]
        for d, prev in enumerate(reversed(recent), start=1):
            i = self.index.get(prev)
            if i is None or i == j:
                continue
            w = cfg.transition_decay ** (d - 1)
            row = self.successors[i]
            row[j] = row.get(j, 0.0) + w
            self._out[i] += w
            if cfg.transition_backward:
                back = self.successors[j]
                back[i] = back.get(i, 0.0) + cfg.transition_backward * w
                self._out[j] += cfg.transition_backward * w

    # -- scoring ---------------------------------------------------------------------------------
    def sequence_scores(self, history: Sequence[str]) -> np.ndarray:
        cfg = self.config
        seq = np.zeros(self.n_items, np.float64)
        for k, prev in enumerate(reversed(history[-cfg.history_len :])):
            i = self.index.get(prev)
            if i is None or not self.successors[i]:
                continue
            row = self.successors[i]
            idx = np.fromiter(row.keys(), np.int64, len(row))
            val = np.fromiter(row.values(), np.float64, len(row))
            seq[idx] += (cfg.history_decay**k / (self._out[i] + 1.0) ** cfg.degree_power) * val
        return seq

    def text_scores(self, interest: np.ndarray) -> np.ndarray:
        return self._emb[: self.n_items] @ interest.astype(np.float32)

    def popularity_scores(self) -> np.ndarray:
        pop = np.log1p(self._pop[: self.n_items])
        top = pop.max() if len(pop) else 0.0
        return pop / top if top > 0 else pop

    def scores(self, history: Sequence[str], interest: np.ndarray | None) -> np.ndarray:
        """Scores of every known item, in ``self.ids`` order (higher = more likely next)."""
        cfg = self.config
        seq = self.sequence_scores(history)
        top = seq.max() if len(seq) else 0.0
        total = cfg.sequence_weight * (seq / top if top > 0 else seq)
        if cfg.text_weight and interest is not None and np.any(interest):
            total += cfg.text_weight * self.text_scores(interest)
        if cfg.popularity_weight:
            total += cfg.popularity_weight * self.popularity_scores()
        return total

    def recommend(
        self, history: Sequence[str], interest: np.ndarray | None, k: int, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """The top ``k`` items (id, score), leaving out ``exclude`` (e.g. what the user already has)."""
        s = self.scores(history, interest)
        for item_id in exclude:
            idx = self.index.get(item_id)
            if idx is not None:
                s[idx] = -np.inf
        k = min(k, int(np.isfinite(s).sum()))
        top = np.argpartition(-s, k - 1)[:k] if k else np.zeros(0, np.int64)
        top = top[np.argsort(-s[top], kind="stable")]
        return [(self.ids[i], float(s[i])) for i in top]
