"""The interest-update rule: one user's state and how an event moves it.

    s(t) = sum_i  w_type(i) * exp(-(t - t_i) / tau) * e_i

The sum is kept relative to ``t_ref``, the newest event time seen: ``vec = s(t_ref)``. A newer event
rescales the sum to its own time before adding; an older (late) event is added with its decay already
applied. Either way the result is the same function of the *set* of events, so Kafka's out-of-order
delivery does not change it, and an ``event_id`` already in the recent-id window is ignored, so
at-least-once redelivery does not either. The per-type counts follow the same rule with e_i = 1.

Exactly once under redelivery: the state records, per event type (each type has its own input topic,
and all of a user's records sit in one partition of each), the highest input offset it has applied. A
record at or below that offset is a redelivery of something already in the sum: the driver skips it
without any bounded window (``InterestCore.apply``). The recent-id window remains for *producer-side*
duplicates, which arrive at new offsets.

The state also keeps the item ids of the user's last ``history_len`` events (in event-time order): the
query of the next-item ranker (``models/ranker.py``), and a 64-bit tag of the encoder that wrote the
vector, so a state from another model is recognised instead of being mixed into a different space.

The state also keeps, per recent item, its event type and time: the window of the sequential model
(``models/sequence.py``), so the state keeps ``items_kept = max(history_len, sequence_len)`` items.

And the user's recent-category profile: the same decayed sum with e_i = the item's categories (1/n
each), per category name, with its own, short time constant ``category_tau_s`` (two minutes: what the
user is browsing now). The head reads it hashed into ``category_hash_dim`` buckets as behaviour
features, and its prediction is blended with the profile itself (``models/head.py``, ``blend_profiles``),
the profile's share growing with its decayed mass (``category_mass``: how much of the session is recent).
Entries that have faded below a millionth of the largest are dropped, so it holds the categories of the
user's latest session only.

Stored size per user (``to_bytes``): 32-byte header + 8 (model tag) + 4*dim (vector) + 12 (counts) +
24 (offsets) + 8*window (id hashes) + 2 + per recent item 11 bytes + its id + 10 + per profile
category 6 bytes + its name + 2 + per recent item 2 bytes + its event id (float16 vectors: 2*dim + 4
instead of 4*dim); all-MiniLM (384-d), the default window of 256 and 50 recent MovieLens items (ids of
up to 6 digits): 3,662 + 10 + at most 850 bytes, plus the profile (a MovieLens genre costs 6 + 4 to 11
bytes) and the event ids (2 + 50 * (2 + id length): 702 bytes for 12-character ids). The event ids name
what ``contributions`` explains.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.config import EVENT_TYPES, InterestConfig

_HEADER = struct.Struct("<BBHIIIdQ")  # format, flags, dim, window, n_ids, events_applied, t_ref, version
_FLOAT16 = 1  # flags bit: the vector is stored as a float32 scale and float16 components
STATE_VECTORS = ("float32", "float16")
_FORMAT = 7  # 1: no recent items; 2: no model tag, no offsets; 3: recent items without type and time;
# 4: no category profile; 5: no event ids of the recent items; 6: a hashed category profile
NO_OFFSET = -1
PROFILE_KEEP = 1e-6  # a profile entry below this share of the largest has faded out: dropped
PROFILE_MAX = 64  # at most this many categories in a profile (the largest ones)


def id_hash(event_id: str) -> int:
    """64-bit hash of an event id: the dedup window stores these, not the (longer) ids."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=65_536)
def category_bucket(category: str, buckets: int) -> int:
    """Bucket of a category in the user's category profile (stable across processes and runs)."""
    return int.from_bytes(hashlib.blake2b(category.encode(), digest_size=8).digest(), "little") % buckets


def count_decay(ahead_s: np.ndarray, cfg: InterestConfig) -> np.ndarray:
    """float32 factor by which per-type counts shrink from ``t_ref`` to ``ahead_s`` seconds later (a
    negative gap, a late event, does not decay). Elementwise, so ``fusion.FeatureRows`` uses it for a
    whole batch."""
    return np.exp(-np.maximum(ahead_s, 0.0) / cfg.tau_s).astype(np.float32)


def profile_shares(categories: np.ndarray, scale: float) -> np.ndarray:
    """Rows of category profiles as shares summing to ``scale`` (an empty profile stays zeros)."""
    total = categories.sum(axis=1)
    factor = np.divide(np.float32(scale), total, out=np.zeros(len(categories), np.float32), where=total > 0)
    return categories * factor.astype(np.float32)[:, None]


def model_tag(model_name: str) -> int:
    """64-bit tag of an encoder name (which carries its weights hash), stored with every state."""
    return id_hash(model_name)


@dataclass
class UserState:
    dim: int
    window: int
    vec: np.ndarray  # float32 (dim,): s(t_ref)
    counts: np.ndarray  # float32 (3,): decayed counts per event type at t_ref
    t_ref: float = -math.inf
    events_applied: int = 0
    version: int = 0
    recent_ids: list[int] = field(default_factory=list)  # oldest first, at most `window`
    recent_items: list[str] = field(default_factory=list)  # by (time, id), at most cfg.items_kept
    recent_types: list[int] = field(default_factory=list)  # per recent item: its event type's index
    recent_ts: list[float] = field(default_factory=list)  # per recent item: its event time
    recent_events: list[str] = field(default_factory=list)  # per recent item: its event id ("": unknown)
    offsets: np.ndarray = field(default_factory=lambda: np.full(len(EVENT_TYPES), NO_OFFSET, np.int64))
    """Per event type: the highest input offset applied (``NO_OFFSET``: none, or not from Kafka)."""
    model: int = 0
    """``model_tag`` of the encoder whose vectors are summed in ``vec`` (0: unknown, a format-2 state)."""
    categories: dict[str, float] = field(default_factory=dict)
    """The recent-category profile: category -> sum of its events' shares, each event weighted
    ``exp((t_i - origin) / category_tau_s)`` (empty: none yet). Only shares are read, and growing weights
    give the same shares as decaying ones without touching every entry at every event."""
    category_origin: float = 0.0

    @classmethod
    def empty(cls, dim: int, window: int, model: int = 0) -> UserState:
        state = cls(dim, window, np.zeros(dim, np.float32), np.zeros(len(EVENT_TYPES), np.float32))
        state.model = model
        return state

    def applied_offset(self, event_type: str) -> int:
        return int(self.offsets[EVENT_TYPES.index(event_type)])

    def mark_offset(self, event_type: str, offset: int | None) -> None:
        """Record that the input record at ``offset`` (of this type's topic) has been handled."""
        if offset is not None:
            i = EVENT_TYPES.index(event_type)
            self.offsets[i] = max(int(self.offsets[i]), offset)

    def rebase(self, dim: int, model: int) -> None:
        """Start the vector over in another encoder's space, keeping what identifies the events seen.

        Vectors of two encoders cannot be mixed (or, with another dimension, even added). The new model's
        sum starts empty; ``version``, ``events_applied``, offsets and the id window stay, so versions
        keep increasing and nothing already applied is applied again.
        """
        self.dim = dim
        self.model = model
        self.vec = np.zeros(dim, np.float32)
        self.counts = np.zeros(len(EVENT_TYPES), np.float32)

    def has_seen(self, event_id: str) -> bool:
        return id_hash(event_id) in self.recent_ids

    def add(
        self,
        event_id: str,
        ts: float,
        event_type: str,
        emb: np.ndarray,
        cfg: InterestConfig,
        item_id: str | None = None,
        offset: int | None = None,
        categories: Sequence[str] = (),
        event_hash: int | None = None,
    ) -> bool:
        """Apply one event; return False (and change nothing) if its id is in the recent window.
        ``event_hash``: ``id_hash(event_id)`` if the caller has it already."""
        h = id_hash(event_id) if event_hash is None else event_hash
        if h in self.recent_ids:
            return False
        self.window = cfg.dedup_window  # the configured window, also for states stored with another
        self.mark_offset(event_type, offset)
        weight = cfg.weight(event_type)
        if ts >= self.t_ref:
            # Move the reference time forward: decay what we had to the new event's time.
            shrink = np.float32(math.exp(-(ts - self.t_ref) / cfg.tau_s)) if self.events_applied else 0
            self.vec *= shrink
            self.counts *= shrink
            self.t_ref = ts
            factor = weight
        else:
            factor = weight * math.exp(-(self.t_ref - ts) / cfg.tau_s)
        self.vec += np.float32(factor) * emb
        self.counts[EVENT_TYPES.index(event_type)] += np.float32(factor / weight)
        if categories and cfg.category_hash_dim:
            self._add_categories(ts, categories, cfg)
        self.recent_ids.append(h)
        del self.recent_ids[: -self.window]
        if item_id is not None:
            # In (time, item id) order, not arrival order: a user's events come through three topics
            # (and late ones come late), and the window must not depend on how they interleave.
            if not self.recent_ts or (ts, item_id) >= (self.recent_ts[-1], self.recent_items[-1]):
                at = len(self.recent_ts)  # the usual case: the newest event
            else:
                kept = list(zip(self.recent_ts, self.recent_items, strict=True))
                at = bisect.bisect_right(kept, (ts, item_id))
            self.recent_items.insert(at, item_id)
            self.recent_types.insert(at, EVENT_TYPES.index(event_type))
            self.recent_ts.insert(at, ts)
            self.recent_events.insert(at, event_id)
            for recent in (self.recent_items, self.recent_types, self.recent_ts, self.recent_events):
                del recent[: -cfg.items_kept]
        self.events_applied += 1
        return True

    def _add_categories(self, ts: float, categories: Sequence[str], cfg: InterestConfig) -> None:
        if not self.categories:
            self.category_origin = ts
        growth = (ts - self.category_origin) / cfg.category_tau_s
        if growth > 20:  # keep the weights far from overflow: rescale everything to a new origin
            fade = math.exp(-growth)
            self.categories = {c: w * fade for c, w in self.categories.items()}
            self.category_origin, growth = ts, 0.0
        share = math.exp(growth) / len(categories)
        for category in categories:
            self.categories[category] = self.categories.get(category, 0.0) + share
        # Faded entries go (the profile is what the user is into *now*), and a bound holds whatever the
        # catalogue's categories: both drop only what weighs a millionth of the largest or is past 64.
        floor = max(self.categories.values()) * PROFILE_KEEP
        if len(self.categories) > PROFILE_MAX or min(self.categories.values()) < floor:
            kept = sorted(((w, c) for c, w in self.categories.items() if w >= floor), reverse=True)
            self.categories = {c: w for w, c in kept[:PROFILE_MAX]}

    def contributions(self, embeddings: Sequence[np.ndarray | None], cfg: InterestConfig) -> list[float]:
        """Each recent event's share of the interest vector: its weight after decay times its item's
        cosine to the vector, over the vector's norm. ``embeddings``: the recent items' unit text vectors
        (None: not at hand, share 0). The shares of *all* events ever applied sum to exactly 1 (the norm is
        the sum of their projections), so the recent ones sum to at most about 1."""
        norm = float(np.linalg.norm(self.vec))
        if norm == 0:
            return [0.0] * len(self.recent_items)
        direction = self.vec / np.float32(norm)
        out = []
        for kind, ts, emb in zip(self.recent_types, self.recent_ts, embeddings, strict=True):
            if emb is None:
                out.append(0.0)
                continue
            weight = cfg.weight(EVENT_TYPES[kind]) * math.exp(-max(self.t_ref - ts, 0.0) / cfg.tau_s)
            out.append(weight * float(np.dot(emb, direction)) / norm)
        return out

    def embedding(self) -> np.ndarray:
        """The published interest vector: s(t) direction, a unit vector in the item-text space."""
        norm = float(np.linalg.norm(self.vec))
        return self.vec / np.float32(norm) if norm > 0 else self.vec.copy()

    def counts_at(self, ts: float, cfg: InterestConfig) -> np.ndarray:
        """Decayed per-type counts as seen at time ``ts`` (no decay backwards for a late event)."""
        if self.events_applied == 0 or ts <= self.t_ref:
            return self.counts
        return self.counts * count_decay(np.float64(ts - self.t_ref), cfg)

    def category_profile(self) -> dict[str, float]:
        """The recent-category profile as shares summing to 1 (empty before any category). Shares need no
        time: decay to any later time scales every entry alike."""
        total = sum(self.categories.values())
        return {c: w / total for c, w in self.categories.items()} if total > 0 else {}

    def category_mass(self, ts: float, cfg: InterestConfig) -> float:
        """The recent-category profile's decayed weight at time ``ts``: each event counts
        ``exp(-(ts - t_i) / category_tau_s)``, 1 at its own time (a ``ts`` before the profile's time origin
        counts as at the origin). How much of the user's session is recent: the served
        distribution gives the profile a larger share the larger this is (``category_blend_mass``)."""
        if not self.categories:
            return 0.0
        ahead = max(ts - self.category_origin, 0.0) / cfg.category_tau_s
        return sum(self.categories.values()) * math.exp(-ahead)

    def category_shares(self, cfg: InterestConfig, scale: float = 1.0) -> np.ndarray:
        """The profile hashed into ``cfg.category_hash_dim`` buckets, as shares summing to ``scale``
        (zeros before any category): the head's features."""
        out = np.zeros(cfg.category_hash_dim, np.float32)
        for category, share in self.category_profile().items():
            out[category_bucket(category, cfg.category_hash_dim)] += np.float32(share * scale)
        return out

    def to_bytes(self, vector: str = "float32") -> bytes:
        """The stored form. ``vector="float16"`` keeps the interest vector as a float32 scale and float16
        components: 2 * dim + 4 bytes instead of 4 * dim (-764 bytes at 384-d), at a relative error of
        at most 5e-4 per component each time a changed state is stored (the direction is what is
        published; ``tests/test_interest.py`` measures the drift over 2,000 store-load cycles)."""
        if vector not in STATE_VECTORS:
            raise ValueError(f"vector must be one of {STATE_VECTORS}, not {vector!r}")
        ids = np.asarray(self.recent_ids, dtype=np.uint64)
        t_ref = self.t_ref if self.events_applied else -1.0
        flags = _FLOAT16 if vector == "float16" else 0
        header = _HEADER.pack(
            _FORMAT, flags, self.dim, self.window, len(ids), self.events_applied, t_ref, self.version
        )
        if flags & _FLOAT16:
            # Scaled by the largest |component| (so nothing overflows float16's 65,504, and a loaded state
            # stores back to the same bytes: its largest component is exactly the scale again).
            scale = np.float32(np.abs(self.vec).max()) if self.dim else np.float32(0)
            scaled = self.vec / scale if scale > 0 else self.vec
            stored_vec = struct.pack("<f", scale) + scaled.astype("<f2").tobytes()
        else:
            stored_vec = self.vec.tobytes()
        items = _strings(self.recent_items)[2:]
        return b"".join([header, struct.pack("<Q", self.model), stored_vec, self.counts.tobytes(),
                         self.offsets.astype(np.int64).tobytes(), ids.tobytes(),
                         struct.pack("<H", len(self.recent_items)), items,
                         np.asarray(self.recent_types, np.uint8).tobytes(),
                         np.asarray(self.recent_ts, np.float64).tobytes(),
                         _profile(self.categories, self.category_origin),
                         _strings(self.recent_events)])  # fmt: skip

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        fmt, flags, dim, window, n_ids, applied, t_ref, version = _HEADER.unpack_from(raw)
        if fmt not in (1, 2, 3, 4, 5, 6, _FORMAT):
            raise ValueError(f"unknown user-state format {fmt}")
        flags = flags if fmt >= 7 else 0  # a padding byte before format 7
        off = _HEADER.size
        model = 0
        if fmt >= 3:
            (model,) = struct.unpack_from("<Q", raw, off)
            off += 8
        if flags & _FLOAT16:
            (scale,) = struct.unpack_from("<f", raw, off)
            vec = np.frombuffer(raw, "<f2", dim, off + 4).astype(np.float32) * np.float32(scale)
            off += 4 + 2 * dim
        else:
            vec = np.frombuffer(raw, np.float32, dim, off).copy()
            off += 4 * dim
        counts = np.frombuffer(raw, np.float32, len(EVENT_TYPES), off).copy()
        off += 4 * len(EVENT_TYPES)
        offsets = np.full(len(EVENT_TYPES), NO_OFFSET, np.int64)
        if fmt >= 3:
            offsets = np.frombuffer(raw, np.int64, len(EVENT_TYPES), off).copy()
            off += 8 * len(EVENT_TYPES)
        ids = np.frombuffer(raw, np.uint64, n_ids, off).tolist()
        off += 8 * n_ids
        items: list[str] = []
        n_items = len(raw)  # formats 1-3: items up to the end
        if fmt >= 4:
            (n_items,) = struct.unpack_from("<H", raw, off)
            off += 2
        while off < len(raw) and len(items) < n_items:
            (n,) = struct.unpack_from("<H", raw, off)
            items.append(raw[off + 2 : off + 2 + n].decode())
            off += 2 + n
        state = cls(dim, window, vec, counts, t_ref if applied else -math.inf, applied, version, ids)
        state.recent_items = items
        if fmt >= 4:
            state.recent_types = np.frombuffer(raw, np.uint8, len(items), off).tolist()
            state.recent_ts = np.frombuffer(raw, np.float64, len(items), off + len(items)).tolist()
            off += 9 * len(items)
        else:  # not recorded then: the sequence model reads them as clicks at the state's time
            state.recent_types = [0] * len(items)
            state.recent_ts = [state.t_ref if applied else 0.0] * len(items)
        if fmt in (5, 6):  # a hashed profile (names unknown): the profile starts with the next event
            (n_buckets,) = struct.unpack_from("<H", raw, off)
            off += 10 + 4 * n_buckets
        elif fmt >= 7:  # before 5: no category profile; it starts with the next event
            state.categories, state.category_origin, off = _read_profile(raw, off)
        state.recent_events = [""] * len(items)  # before format 6: not recorded
        if fmt >= 6:
            state.recent_events, off = _read_strings(raw, off)
        state.offsets = offsets
        state.model = model
        return state


def _strings(values: Sequence[str]) -> bytes:
    """A count, then each string as its UTF-8 length and bytes."""
    return struct.pack("<H", len(values)) + b"".join(
        struct.pack("<H", len(r)) + r for r in (v.encode() for v in values)
    )


def _profile(categories: dict[str, float], origin: float) -> bytes:
    """A count and the time origin, then each category (sorted, so equal profiles write equal bytes) as
    its UTF-8 length, bytes and float32 weight."""
    out = [struct.pack("<Hd", len(categories), origin)]
    for name in sorted(categories):
        raw = name.encode()
        out.append(struct.pack("<H", len(raw)) + raw + struct.pack("<f", categories[name]))
    return b"".join(out)


def _read_profile(raw: bytes, off: int) -> tuple[dict[str, float], float, int]:
    n, origin = struct.unpack_from("<Hd", raw, off)
    off += 10
    out = {}
    for _ in range(n):
        (size,) = struct.unpack_from("<H", raw, off)
        (out[raw[off + 2 : off + 2 + size].decode()],) = struct.unpack_from("<f", raw, off + 2 + size)
        off += 6 + size
    return out, origin, off


def _read_strings(raw: bytes, off: int) -> tuple[list[str], int]:
    (n,) = struct.unpack_from("<H", raw, off)
    off += 2
    out = []
    for _ in range(n):
        (size,) = struct.unpack_from("<H", raw, off)
        out.append(raw[off + 2 : off + 2 + size].decode())
        off += 2 + size
    return out, off
