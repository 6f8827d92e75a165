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

Counting ranks only items someone has acted on: a new item's score is its text term alone, which never
beats a counted successor. So the last ``fresh_slots`` places of the first ``fresh_within`` go to new
items (no learned event), those nearest by text to the user's recent items (weighted like the query,
``history_decay**k``): the text path's share of the list, and the only way a new item is ever shown.
"""

from __future__ import annotations

import bisect
import io
import itertools
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models.config import InterestConfig
from models.ragged import lengths_of, spans

_SNAPSHOT_MAGIC = b"IRNK1"


def standardised(s: np.ndarray) -> np.ndarray:
    """z-scores over the items a scorer ranked; an item it did not consider (-inf: outside a bounded
    ranker's candidates) ties with its lowest, so the other part of a mix can still rank it."""
    s = np.asarray(s, dtype=np.float64)
    ranked = np.isfinite(s)
    if ranked.all():  # a model's scores of every item: the same floats without the masked copies
        return (s - s.mean()) / (s.std() + 1e-12)
    if not ranked.any():
        return np.zeros(len(s))
    values = s[ranked]
    z = np.zeros(len(s))
    z[ranked] = (values - values.mean()) / (values.std() + 1e-12)
    z[~ranked] = z[ranked].min()
    return z


def mix(
    items: np.ndarray, s: np.ndarray, sequence: np.ndarray, share: float, outside: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The mixed list's scores: ``share * z(sequence) + (1 - share) * z(ranker)``, where the ranker scored
    ``items`` with ``s`` (every other item: -inf, its lowest z) and ``sequence`` scores every item.

    Returns (every item, its score), or with ``outside`` = N the candidates and only the N best other
    items by ``sequence``: those cover any top N of the mix that leaves some candidates out."""
    n = len(sequence)
    z_seq = standardised(sequence)
    z_ranker = standardised(s)
    floor = float(z_ranker.min()) if len(z_ranker) else 0.0
    if outside is None:
        full = share * z_seq + (1 - share) * floor
        full[items] = share * z_seq[items] + (1 - share) * z_ranker
        return np.arange(n), full
    others = np.ones(n, bool)
    others[items] = False
    rest = np.flatnonzero(others)
    if len(rest) > outside:
        rest = rest[np.argpartition(-z_seq[rest], outside - 1)[:outside]] if outside else rest[:0]
    mixed = share * z_seq[items] + (1 - share) * z_ranker
    return np.concatenate([items, rest]), np.concatenate([mixed, share * z_seq[rest] + (1 - share) * floor])


@dataclass(frozen=True)
class TextHits:
    """One user's text-index results, looked up ahead: ``NextItemRanker.text_hits_many`` searches the
    index once for a whole batch of users instead of twice per user (a worker's micro-batch asks for many
    lists at once). ``near``: the items nearest to the interest vector (None: the list has no text query);
    ``fresh_query`` and ``fresh_near``: the fresh places' query and the items nearest to it (None: none)."""

    near: np.ndarray | None
    fresh_query: np.ndarray | None
    fresh_near: np.ndarray | None


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` for short arrays: numpy 2's hash-based unique costs ~40 us on 300 values, a sort
    ~8 us (a list's candidates are a few hundred)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


class NextItemRanker:
    def __init__(self, config: InterestConfig, dim: int) -> None:
        self.config = config
        self.dim = dim
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._emb = np.zeros((0, dim), np.float32)
        self._pop = np.zeros(0, np.float64)
        self.successors: list[dict[int, float]] = []
        # Each scored row of ``successors`` as (indices, counts) arrays, until the row changes: a served
        # snapshot never learns, so a worker reads each row out of its dict once, not once per list.
        self._row_arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._out = np.zeros(0, np.float64)
        self._pop_max = 0.0
        self._learned = 0  # events learned: the popular candidates are recomputed after new ones
        self._popular: tuple[int, np.ndarray] | None = None
        self.text_index: TextIndex | None = None

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
        self._pop_max = max(self._pop_max, self._pop[j])
        self._learned += 1
        recent = history[-cfg.transition_window :]
        for d, prev in enumerate(reversed(recent), start=1):
            i = self.index.get(prev)
            if i is None or i == j:
                continue
            w = cfg.transition_decay ** (d - 1)
            self._count(i, j, w)
            if cfg.transition_backward:
                self._count(j, i, cfg.transition_backward * w)

    def _count(self, i: int, j: int, w: float) -> None:
        row = self.successors[i]
        row[j] = row.get(j, 0.0) + w
        self._row_arrays.pop(i, None)
        self._out[i] += w
        kept = self.config.successors_kept
        if kept and len(row) >= 2 * kept:
            # Keep the ``kept`` largest counts (ties: the lower index). ``_out`` keeps the pruned weight,
            # so what is kept scores exactly as before.
            top = sorted(row.items(), key=lambda e: (-e[1], e[0]))[:kept]
            self.successors[i] = dict(top)

    # -- scoring ---------------------------------------------------------------------------------
    def _sequence(self, history: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """seq(j) of every item with seq(j) > 0 (the successors of the user's recent items): indices,
        values. Accumulated row by row, newest item first, so any candidate set gets the same floats."""
        cfg = self.config
        idx, val = [], []
        for k, prev in enumerate(reversed(history[-cfg.history_len :])):
            i = self.index.get(prev)
            if i is None or not self.successors[i]:
                continue
            cols, counts = self._row(i)
            idx.append(cols)
            val.append((cfg.history_decay**k / (self._out[i] + 1.0) ** cfg.degree_power) * counts)
        if not idx:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        items, where = np.unique(np.concatenate(idx), return_inverse=True)
        seq = np.zeros(len(items), np.float64)
        np.add.at(seq, where, np.concatenate(val))
        return items, seq

    def _row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``i`` of the successor counts as arrays (successor indices, counts), in the dict's order."""
        arrays = self._row_arrays.get(i)
        if arrays is None:
            row = self.successors[i]
            arrays = (
                np.fromiter(row.keys(), np.int64, len(row)),
                np.fromiter(row.values(), np.float64, len(row)),
            )
            self._row_arrays[i] = arrays
        return arrays

    def sequence_scores(self, history: Sequence[str]) -> np.ndarray:
        seq = np.zeros(self.n_items, np.float64)
        items, values = self._sequence(history)
        seq[items] = values
        return seq

    def text_scores(self, interest: np.ndarray) -> np.ndarray:
        return self._emb[: self.n_items] @ interest.astype(np.float32)

    def text_vectors(self) -> np.ndarray:
        """(n_items, dim) the items' text embeddings, in ``ids`` order."""
        return self._emb[: self.n_items]

    def popularity_scores(self) -> np.ndarray:
        pop = np.log1p(self._pop[: self.n_items])
        top = pop.max() if len(pop) else 0.0
        return pop / top if top > 0 else pop

    def _score(
        self, items: np.ndarray, seq: np.ndarray, seq_top: float, interest: np.ndarray | None
    ) -> np.ndarray:
        """The mixed score of ``items`` (``seq``: their sequence scores, ``seq_top``: the largest of all)."""
        cfg = self.config
        total = cfg.sequence_weight * (seq / seq_top if seq_top > 0 else seq)
        if cfg.text_weight and interest is not None and np.any(interest):
            total += cfg.text_weight * (self._emb[items] @ interest.astype(np.float32))
        if cfg.popularity_weight:
            top = np.log1p(self._pop_max)
            pop = np.log1p(self._pop[items])
            total += cfg.popularity_weight * (pop / top if top > 0 else pop)
        return total

    def candidates(
        self, history: Sequence[str], interest: np.ndarray | None, hits: TextHits | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, their scores). Unbounded (``text_candidates`` = 0): every item. Bounded: only
        the items that can score well, so a query costs the same whatever the catalogue's size: the
        successors of the recent items (every item with sequence score), the ``text_candidates`` nearest
        items to the interest vector (an HNSW index, or ``hits`` looked up ahead), and the
        ``popular_candidates`` most popular."""
        cfg = self.config
        seq_items, seq = self._sequence(history)
        seq_top = float(seq.max()) if len(seq) else 0.0
        if not cfg.text_candidates:
            full = np.zeros(self.n_items, np.float64)
            full[seq_items] = seq
            items = np.arange(self.n_items)
            return items, self._score(items, full, seq_top, interest)
        parts = [seq_items, self._most_popular()]
        if hits is not None:
            if hits.near is not None:
                parts.append(hits.near)
        elif self._has_text_query(interest):
            parts.append(self._nearest(interest, cfg.text_candidates))
        items = _sorted_unique(np.concatenate(parts))
        full = np.zeros(len(items), np.float64)
        full[np.searchsorted(items, seq_items)] = seq
        return items, self._score(items, full, seq_top, interest)

    def ranked(
        self,
        history: Sequence[str],
        interest: np.ndarray | None,
        exclude: Iterable[str] = (),
        sequence: np.ndarray | None = None,
        keep: int | None = None,
        hits: TextHits | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, scores) as the list is served: the candidates, mixed with the sequential model's
        scores ``sequence`` (every item, ``self.ids`` order) when given and ``sequence_mix`` > 0, then
        ``place_fresh``. ``keep``: only the list's first ``keep`` places are needed (a top k), so of the
        items outside the candidates only the best by ``sequence`` are scored; the top ``keep`` is the
        same as over every item. ``hits``: the text index's results, looked up ahead (``text_hits_many``)."""
        exclude = list(exclude)
        items, s = self.candidates(history, interest, hits)
        share = self.config.sequence_mix
        if sequence is not None and share > 0:
            if len(sequence) != self.n_items:
                raise ValueError(f"sequence scores for {len(sequence)} items, the ranker has {self.n_items}")
            # Items outside the candidates share one ranker term, so they rank among themselves by the
            # model's score: enough of its best cover any top ``keep`` after exclusions and fresh places.
            outside = None if keep is None else keep + len(exclude) + self.config.fresh_within
            items, s = mix(items, s, sequence, share, outside)
        return self.place_fresh(items, s, history, exclude, hits)

    def place_fresh(
        self,
        items: np.ndarray,
        s: np.ndarray,
        history: Sequence[str],
        exclude: Iterable[str] = (),
        hits: TextHits | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``s`` of ``items`` with ``exclude`` left out (-inf) and the fresh items (``fresh``) scored
        just below the ``fresh_within - fresh_slots`` best others, so that any top k of the result is the
        recommended list. A fresh item's score is therefore a place, not a score of its own. Any scores
        over the ranker's items can be placed (``evaluate``'s mixes use it too)."""
        s = np.array(s, dtype=np.float64)
        excluded = np.fromiter((self.index.get(i, -1) for i in exclude), np.int64)
        for j in excluded:  # a few ids: one comparison each beats np.isin's sorts
            s[items == j] = -np.inf
        fresh = self.fresh(history, excluded, self.config.fresh_slots, hits)
        if not len(fresh):
            return items, s
        missing = [j for j in fresh if not (items == j).any()]  # not among the candidates: join them
        if missing:
            items = np.concatenate([items, np.asarray(missing, items.dtype)])
            s = np.concatenate([s, np.full(len(missing), -np.inf)])
        where = [int(np.flatnonzero(items == j)[0]) for j in fresh]
        others = np.delete(s, where)
        others = others[np.isfinite(others)]
        above = min(self.config.fresh_within - len(fresh), len(others))  # others placed before the fresh
        # ``above``-th largest of the others (a partition, not a sort: only that value is needed)
        place = np.partition(others, len(others) - above)[len(others) - above] if len(others) else 0.0
        for w in where:  # just below ``place``, best first, one float step apart
            place = np.nextafter(place, -np.inf)
            s[w] = place
        return items, s

    def fresh(
        self, history: Sequence[str], excluded: np.ndarray, n: int, hits: TextHits | None = None
    ) -> np.ndarray:
        """Up to ``n`` new items (no learned event), nearest by text to the recent items, best first. A
        bounded ranker looks among the ``text_candidates`` items nearest to that query, so the cost does not
        grow with the catalogue: where fewer new items are that near, fewer places are kept for them."""
        if n <= 0 or not self.n_items:
            return np.zeros(0, np.int64)
        if hits is not None:
            query, near = hits.fresh_query, hits.fresh_near
        else:
            query = self._fresh_query(history)
            near = None if query is None else self._near_all(query)
        if query is None or near is None:
            return np.zeros(0, np.int64)
        near = near[self._pop[near] == 0]
        if len(near) and len(excluded):  # a few hundred by a few dozen: one broadcast beats np.isin's sorts
            near = near[(near[:, None] != excluded[None, :]).all(axis=1)]
        sims = self._emb[near] @ query
        return near[np.lexsort((near, -sims))[:n]]

    def _fresh_query(self, history: Sequence[str]) -> np.ndarray | None:
        """The fresh places' query: the recent items' text, newest weighted most (``history_decay**k``),
        unit length; None without one (no known recent item, or they cancel out)."""
        cfg = self.config
        known = [self.index[i] for i in history[-cfg.history_len :] if i in self.index]
        if not known:
            return None
        weights = cfg.history_decay ** np.arange(len(known) - 1, -1, -1, dtype=np.float64)
        query = (weights[:, None] * self._emb[known]).sum(axis=0).astype(np.float32)
        norm = float(np.linalg.norm(query))
        if norm == 0:
            return None
        return query / np.float32(norm)

    def _near_all(self, query: np.ndarray) -> np.ndarray:
        return self._near_all_many([query])[0]

    def _near_all_many(self, queries: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Where the fresh places look, per query: the items nearest to it (bounded), or every item."""
        if self.config.text_candidates:
            return self._nearest_many(queries, self.config.text_candidates)
        return [np.arange(self.n_items)] * len(queries)

    def _has_text_query(self, interest: np.ndarray | None) -> bool:
        return bool(self.config.text_weight and interest is not None and np.any(interest))

    def text_hits_many(
        self, histories: Sequence[Sequence[str]], interests: Sequence[np.ndarray | None]
    ) -> list[TextHits]:
        """Each user's ``TextHits``, with one text-index search for all the interest queries and one for
        all the fresh queries: the same items as the per-user searches (each query is searched alone
        inside the batch call, with the same settings)."""
        cfg = self.config
        n = len(histories)
        near: list[np.ndarray | None] = [None] * n
        if cfg.text_candidates:
            asks = [k for k in range(n) if self._has_text_query(interests[k])]
            found = self._nearest_many([interests[k] for k in asks], cfg.text_candidates)
            for k, f in zip(asks, found, strict=True):
                near[k] = f
        fresh_query: list[np.ndarray | None] = [None] * n
        fresh_near: list[np.ndarray | None] = [None] * n
        if cfg.fresh_slots > 0 and self.n_items:
            fresh_query = [self._fresh_query(h) for h in histories]
            asks = [k for k in range(n) if fresh_query[k] is not None]
            found = self._near_all_many([fresh_query[k] for k in asks])
            for k, f in zip(asks, found, strict=True):
                fresh_near[k] = f
        return [TextHits(near[k], fresh_query[k], fresh_near[k]) for k in range(n)]

    def scores(
        self,
        history: Sequence[str],
        interest: np.ndarray | None,
        exclude: Iterable[str] = (),
        sequence: np.ndarray | None = None,
    ) -> np.ndarray:
        """Scores of every known item, in ``self.ids`` order, as ``ranked`` gives them (higher = earlier in
        the list); items a bounded ranker does not consider, and ``exclude``, score -inf."""
        items, values = self.ranked(history, interest, exclude, sequence)
        out = np.full(self.n_items, -np.inf)
        out[items] = values
        return out

    def recommend(
        self,
        history: Sequence[str],
        interest: np.ndarray | None,
        k: int,
        exclude: Iterable[str] = (),
        sequence: np.ndarray | None = None,
        hits: TextHits | None = None,
    ) -> list[tuple[str, float]]:
        """The top ``k`` items (id, score), leaving out ``exclude`` (e.g. what the user already has);
        mixed with the sequential model's scores ``sequence`` when given (see ``ranked``)."""
        items, s = self.ranked(history, interest, exclude, sequence, keep=k, hits=hits)
        k = min(k, int(np.isfinite(s).sum()))
        top = np.argpartition(-s, k - 1)[:k] if k else np.zeros(0, np.int64)
        top = top[np.lexsort((items[top], -s[top]))]  # by score, ties by item index
        return [(self.ids[items[i]], float(s[i])) for i in top]

    def similar(self, vector: np.ndarray, k: int, leave_out: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The ``k`` items nearest to ``vector`` by text (id, cosine), best first: from the HNSW index when
        queries are bounded (``text_candidates`` > 0), by exact search otherwise."""
        skip = {self.index[i] for i in leave_out if i in self.index}
        if self.config.text_candidates:
            found = self._nearest(vector, k + len(skip))
        else:
            found = np.arange(self.n_items)
        found = found[~np.isin(found, list(skip))]
        scores = self._emb[found] @ vector.astype(np.float32)
        order = np.lexsort((found, -scores))[:k]
        return [(self.ids[found[o]], float(scores[o])) for o in order]

    def _most_popular(self) -> np.ndarray:
        """The ``popular_candidates`` most acted-on items, recomputed only after new events."""
        if self._popular is None or self._popular[0] != self._learned:
            n, k = self.n_items, min(self.config.popular_candidates, self.n_items)
            top = np.argpartition(-self._pop[:n], k - 1)[:k] if k else np.zeros(0, np.int64)
            self._popular = (self._learned, np.sort(top))
        return self._popular[1]

    def _nearest(self, vector: np.ndarray, k: int) -> np.ndarray:
        """Item indices nearest to ``vector`` in the text index. The index may be shared with a newer
        snapshot's ranker that has already added its new items (``adopt_index``): those are left out."""
        return self._nearest_many([vector], k)[0]

    def _nearest_many(self, vectors: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
        if not len(vectors):
            return []
        found = self._text_index().search_many(np.stack(vectors), k)
        return [f[f < self.n_items] for f in found]

    def prepare_index(self) -> None:
        """Build (or extend) the text index now, e.g. in a loader thread before the ranker serves."""
        self._text_index()

    def _text_index(self) -> TextIndex:
        if self.text_index is None:
            self.text_index = TextIndex(self.dim)
        self.text_index.sync(self._emb, self.n_items)
        return self.text_index

    def adopt_index(self, previous: NextItemRanker | None) -> None:
        """Take over ``previous``'s text index when this ranker extends its items (a newer snapshot of the
        same trainer: items only join, at the end), so a worker does not rebuild it at every snapshot."""
        old = previous.text_index if previous is not None else None
        if old is None or old.size > self.n_items or old.dim != self.dim:
            return
        n = min(old.size, previous.n_items)
        if n and (self.ids[n - 1] != previous.ids[n - 1] or self.ids[0] != previous.ids[0]):
            return
        self.text_index = old

    def is_new(self, item_id: str) -> bool:
        """True for an item no learned event has touched (what the fresh places are kept for)."""
        j = self.index.get(item_id)
        return j is None or bool(self._pop[j] == 0)

    def because(self, history: Sequence[str], item_id: str, n: int = 3) -> list[str]:
        """The user's recent items that put ``item_id`` in their recommendations: those whose successor
        counts give it sequence score, largest share first (empty: text and popularity alone)."""
        cfg = self.config
        j = self.index.get(item_id)
        shares: dict[str, float] = {}
        for k, prev in enumerate(reversed(history[-cfg.history_len :])):
            i = self.index.get(prev)
            count = self.successors[i].get(j, 0.0) if i is not None and j is not None else 0.0
            if count > 0:
                share = cfg.history_decay**k / (self._out[i] + 1.0) ** cfg.degree_power * count
                shares[prev] = shares.get(prev, 0.0) + share
        return sorted(shares, key=lambda i: -shares[i])[:n]

    # -- snapshots (the trainer publishes the ranker with the sequential model) ------------------
    def to_bytes(self) -> bytes:
        """Items, their text embeddings (float32), popularity and successor counts (float64, exact)."""
        n = self.n_items
        lengths = np.fromiter((len(r) for r in self.successors), np.int64, n)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        total = int(indptr[-1])
        cols = np.fromiter((j for r in self.successors for j in r), np.int32, total)
        vals = np.fromiter((w for r in self.successors for w in r.values()), np.float64, total)
        buf = io.BytesIO()
        np.savez(buf, ids=np.asarray(self.ids, dtype=str), emb=self._emb[:n], pop=self._pop[:n],
                 out=self._out[:n], indptr=indptr, cols=cols, vals=vals)  # fmt: skip
        return _SNAPSHOT_MAGIC + buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes, config: InterestConfig) -> NextItemRanker:
        if raw[: len(_SNAPSHOT_MAGIC)] != _SNAPSHOT_MAGIC:
            raise ValueError("not a next-item ranker snapshot")
        with np.load(io.BytesIO(raw[len(_SNAPSHOT_MAGIC) :]), allow_pickle=False) as z:
            emb = z["emb"]
            ranker = cls(config, emb.shape[1])
            ranker.ids = [str(i) for i in z["ids"]]
            ranker.index = {item: k for k, item in enumerate(ranker.ids)}
            ranker._emb, ranker._pop, ranker._out = emb.astype(np.float32), z["pop"].copy(), z["out"].copy()
            ranker._pop_max = float(ranker._pop.max()) if len(ranker._pop) else 0.0
            indptr, cols, vals = z["indptr"], z["cols"].tolist(), z["vals"].tolist()
        ranker.successors = [dict(zip(cols[a:b], vals[a:b], strict=True))
                             for a, b in zip(indptr[:-1], indptr[1:], strict=True)]  # fmt: skip
        return ranker


class RecentItems:
    """Each user's last ``history_len`` item ids, as ``UserState.recent_items`` orders them (by event
    time, then item id): the ranker's query where no user state is at hand (the trainer)."""

    def __init__(self, history_len: int) -> None:
        self.history_len = history_len
        self.of: dict[str, list[tuple[float, str]]] = {}

    def items(self, user: str) -> list[str]:
        return [item for _, item in self.of.get(user, ())]

    def add(self, user: str, ts: float, item_id: str) -> None:
        """Interned: each event's id is a string of its own, parsed from its record, and a trainer holds
        ``history_len`` per user (1,276 bytes per user of 8 items uninterned, 857 interned, measured with
        tracemalloc over 100,000 users of a 9,000-item catalogue)."""
        kept = self.of.setdefault(user, [])
        bisect.insort_right(kept, (ts, sys.intern(item_id)))
        del kept[: -self.history_len]

    def dump(self, index: Mapping[str, int]) -> dict:
        """For a trainer's checkpoint: arrays, not a pickled tuple per item (``SequenceModel.dump_histories``
        says why); each item as its row in ``index`` (the ranker's, which holds every item learned)."""
        lists = self.of.values()
        lengths = lengths_of(lists)
        flat = list(itertools.chain.from_iterable(lists))
        ts = np.fromiter((t for t, _ in flat), np.float64, len(flat))
        rows = np.fromiter((index[item] for _, item in flat), np.int32, len(flat))
        return {"users": list(self.of), "lengths": lengths, "ts": ts, "rows": rows}

    def restore(self, saved: dict, ids: Sequence[str]) -> None:
        """What ``dump`` wrote, with ``ids`` the rows' item ids (the ranker's ``ids``)."""
        flat = list(zip(saved["ts"].tolist(), [ids[r] for r in saved["rows"].tolist()], strict=True))
        self.of = {u: flat[a:b] for u, (a, b) in zip(saved["users"], spans(saved["lengths"]), strict=True)}


class TextIndex:
    """Nearest items by text (inner product of unit vectors): an HNSW graph (hnswlib, chosen by
    ``benchmarks/ann.py``), extended as items join. One build thread and a fixed seed, so the same items
    give the same graph (evaluations repeat exactly)."""

    search_threads = 1
    """Threads of one batched search (``search_many``), at least ``QUERIES_PER_THREAD`` queries each. Every
    query is searched alone, so the results do not depend on it. A worker sets its snapshots' from
    ``INTEREST_SEARCH_THREADS``."""
    QUERIES_PER_THREAD = 8  # hnswlib starts its threads per call: fewer queries are not worth one

    def __init__(
        self, dim: int, connections: int = 16, build_expansion: int = 128, search_expansion: int = 128
    ):
        import hnswlib

        self.dim, self.size = dim, 0
        self.search_expansion = search_expansion
        # A worker extends the index of the snapshot in force from a loader thread while queries read it.
        self._lock = threading.Lock()
        self._index = hnswlib.Index(space="ip", dim=dim)
        self._index.init_index(
            max_elements=1024, ef_construction=build_expansion, M=connections, random_seed=0
        )
        self._index.set_num_threads(1)

    def sync(self, emb: np.ndarray, n: int) -> None:
        """Add rows ``size .. n`` of ``emb`` (the ranker's item matrix; rows never change)."""
        if n <= self.size:
            return
        with self._lock:
            if n > self._index.get_max_elements():
                self._index.resize_index(max(2 * self._index.get_max_elements(), n))
            self._index.add_items(emb[self.size : n], np.arange(self.size, n))
            self.size = n

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        return self.search_many(query[None, :], k)[0]

    def search_many(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """The ``k`` nearest items of each row of ``queries``. hnswlib searches each row on its own, so a
        row's result depends neither on the other rows nor on the number of threads."""
        k = min(k, self.size)
        if k == 0:
            return [np.zeros(0, np.int64) for _ in range(len(queries))]
        with self._lock:
            self._index.set_ef(max(self.search_expansion, k))
            threads = max(1, min(self.search_threads, len(queries) // self.QUERIES_PER_THREAD))
            labels = self._index.knn_query(np.asarray(queries, np.float32), k=k, num_threads=threads)[0]
        return list(labels.astype(np.int64))
