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
    [d + 9 + H, +C) behaviour  the user's category profile: log1p(share / 0.01) per hashed category

Cyclic encodings put 23:00 next to 00:00; hashing keeps the dimension fixed however many devices,
regions or free context keys producers send. The category profile lets the head learn "what this user
usually picks" (the strongest single predictor of the next category) and correct it with the text and
time features, instead of reading genre taste out of a text vector. Log shares because the head is a
softmax: logits linear in log p reproduce the profile itself, so "most frequent category" is a
point the head can reach, and learn away from.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from models.config import InterestConfig
from models.interest import UserState

N_BEHAVIOUR = 5
N_TIME = 4
PROFILE_FLOOR = 0.01  # a share this small counts as "not this user's category"


def feature_dim(embedding_dim: int, cfg: InterestConfig) -> int:
    return embedding_dim + N_BEHAVIOUR + N_TIME + cfg.context_hash_dim + cfg.category_hash_dim


def _bucket(token: str, buckets: int) -> tuple[int, float]:
    digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % buckets, (1.0 if (value >> 63) & 1 else -1.0)


def fuse(state: UserState, ts: float, context: dict[str, str], cfg: InterestConfig) -> np.ndarray:
    """Features describing the user *as of* time ``ts``, in the context of the event at ``ts``."""
    d = state.dim
    x = np.zeros(feature_dim(d, cfg), dtype=np.float32)
    x[:d] = state.embedding()
    b = d
    x[b : b + 3] = np.log1p(state.counts_at(ts, cfg))
    if state.events_applied:
        x[b + 3] = math.log1p(max(ts - state.t_ref, 0.0) / 3600.0) / 10.0
    x[b + 4] = math.log1p(state.events_applied) / 10.0
    t = b + N_BEHAVIOUR
    if cfg.category_hash_dim:
        x[-cfg.category_hash_dim :] = np.log1p(state.category_shares(cfg, 1.0 / PROFILE_FLOOR))
    if not cfg.environment_features:
        return x
    hour = (ts % 86_400.0) / 3600.0
    weekday = ((ts // 86_400.0) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    x[t : t + 4] = (
        math.sin(2 * math.pi * hour / 24),
        math.cos(2 * math.pi * hour / 24),
        math.sin(2 * math.pi * weekday / 7),
        math.cos(2 * math.pi * weekday / 7),
    )
    h = t + N_TIME
    for key, value in context.items():
        idx, sign = _bucket(f"{key}={value}", cfg.context_hash_dim)
        x[h + idx] += sign
    return x
