"""Fusion: one feature vector from interest, behaviour and environment.

Layout (``dim = d + 9 + H + C``; d = encoder dimension, H = ``context_hash_dim``, C =
``category_hash_dim``)::

    [0, d)          interest   the user's unit interest vector before this event (zeros: no history)
    d + 0..2        behaviour  log1p(decayed count) per event type: click, cart, order
    d + 3           behaviour  recency: log1p(hours since the newest earlier event) / 10
    d + 4           behaviour  log1p(events applied) / 10
    d + 5, d + 6    environment  sin, cos of the UTC hour of day (24 h cycle)
    d + 7, d + 8    environment  sin, cos of the UTC weekday (7 day cycle)
    [d + 9, +H)     environment  signed feature hashing of each "key=value" of the event context
    [d + 9 + H, +C) behaviour  the user's recent categories: log1p(share / 0.01) per hashed category

Cyclic encodings put 23:00 next to 00:00; hashing keeps the dimension fixed however many devices,
regions or free context keys producers send. The recent-category profile (``UserState.categories``)
lets the head learn "what this user is picking now" and correct it with the text and time features,
instead of reading genre taste out of a text vector. Log shares because the head is a softmax: logits
linear in log p reproduce the profile itself. The rows also keep each profile unhashed: the head's
prediction is blended with it by name (``head.blend_profiles``), which hashing collisions would blur,
with the profile's share for that row (``blends``: ``category_blend``, scaled by the profile's mass when
``category_blend_mass`` is set).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from models.config import InterestConfig
from models.interest import UserState, category_bucket, count_decay, profile_shares

N_BEHAVIOUR = 5
N_TIME = 4
PROFILE_FLOOR = 0.01  # a share this small counts as "not this user's category"


def feature_dim(embedding_dim: int, cfg: InterestConfig) -> int:
    return embedding_dim + N_BEHAVIOUR + N_TIME + cfg.context_hash_dim + cfg.category_hash_dim


@functools.lru_cache(maxsize=65_536)
def _bucket(token: str, buckets: int) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % buckets, (1.0 if (value >> 63) & 1 else -1.0)


def fuse(state: UserState, ts: float, context: dict[str, str], cfg: InterestConfig) -> np.ndarray:
    """Features describing the user *as of* time ``ts``, in the context of the event at ``ts``."""
    rows = FeatureRows(state.dim, cfg, 1)
    rows.add(state, ts, context)
    return rows.matrix()[0]


class FeatureRows:
    """Many ``fuse`` calls at once: ``add`` copies what a row needs from a state *as it is now* (the
    core moves the state on right after), ``matrix`` computes every row's features in a few array
    operations. The per-row work is a handful of copies, so a micro-batch costs little more than its
    largest array operation; ``fuse`` is this with one row, so the formula lives here only."""

    def __init__(self, dim: int, cfg: InterestConfig, capacity: int) -> None:
        self.dim, self.cfg, self.n = dim, cfg, 0
        self.vec = np.zeros((capacity, dim), np.float32)
        self.counts = np.zeros((capacity, 3), np.float32)
        self.categories = np.zeros((capacity, cfg.category_hash_dim), np.float32)
        self.context = np.zeros((capacity, cfg.context_hash_dim), np.float32)
        self.ts = np.zeros(capacity)
        self.t_ref = np.zeros(capacity)
        self.applied = np.zeros(capacity)
        self.profiles: list[dict[str, float]] = []  # per row: the recent-category shares, by name
        self.blends: list[float] = []  # per row: the profile's share in the served distribution

    def add(self, state: UserState, ts: float, context: dict[str, str]) -> int:
        """Capture row ``n`` (returned) for ``state`` at time ``ts``; ``matrix()`` has its features."""
        i = self.n
        self.n += 1
        self.vec[i] = state.vec
        self.counts[i] = state.counts
        profile = state.category_profile()
        self.profiles.append(profile)
        blend = self.cfg.category_blend
        if self.cfg.category_blend_mass and profile:
            mass = state.category_mass(ts, self.cfg)
            blend *= mass / (mass + self.cfg.category_blend_mass)
        self.blends.append(blend)
        if self.cfg.category_hash_dim:
            row, buckets = self.categories[i], self.cfg.category_hash_dim
            for category, share in profile.items():
                row[category_bucket(category, buckets)] += share
        self.ts[i] = ts
        self.t_ref[i] = state.t_ref if state.events_applied else ts
        self.applied[i] = state.events_applied
        if self.cfg.environment_features:
            row, buckets = self.context[i], self.cfg.context_hash_dim
            for key, value in context.items():
                idx, sign = _bucket(f"{key}={value}", buckets)
                row[idx] += sign
        return i

    def matrix(self) -> np.ndarray:
        n, d, cfg = self.n, self.dim, self.cfg
        x = np.zeros((n, feature_dim(d, cfg)), dtype=np.float32)
        vec = self.vec[:n]
        norms = np.sqrt(np.einsum("ij,ij->i", vec, vec))
        np.divide(vec, norms[:, None], out=x[:, :d], where=norms[:, None] > 0)
        ahead = np.maximum(self.ts[:n] - self.t_ref[:n], 0.0)
        b = d
        x[:, b : b + 3] = np.log1p(self.counts[:n] * count_decay(ahead, cfg)[:, None])
        x[:, b + 3] = np.where(self.applied[:n] > 0, np.log1p(ahead / 3600.0) / 10.0, 0.0)
        x[:, b + 4] = np.log1p(self.applied[:n]) / 10.0
        t = b + N_BEHAVIOUR
        if cfg.category_hash_dim:
            shares = profile_shares(self.categories[:n], 1.0 / PROFILE_FLOOR)
            x[:, -cfg.category_hash_dim :] = np.log1p(shares)
        if not cfg.environment_features:
            return x
        ts = self.ts[:n]
        hour = (ts % 86_400.0) / 3600.0
        weekday = ((ts // 86_400.0) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        x[:, t] = np.sin(2 * np.pi * hour / 24)
        x[:, t + 1] = np.cos(2 * np.pi * hour / 24)
        x[:, t + 2] = np.sin(2 * np.pi * weekday / 7)
        x[:, t + 3] = np.cos(2 * np.pi * weekday / 7)
        h = t + N_TIME
        x[:, h : h + cfg.context_hash_dim] = self.context[:n]
        return x
