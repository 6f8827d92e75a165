"""The core step as it was written first: one event at a time, every step spelled out.

Kept as the specification of ``InterestCore.apply`` and its batched parts (``FeatureRows``,
``SoftmaxHead.test_then_train_many``, ``top_k_many``): ``test_core.py`` replays long random streams
through both and requires the same states, predictions, updates and head to 1e-5. Not used by the
service; slow on purpose (every event touches the whole head).
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from models.config import EVENT_TYPES, InterestConfig
from models.core import BatchResult, InterestCore, InterestUpdate
from models.events import event_order
from models.fusion import N_BEHAVIOUR, N_TIME, PROFILE_FLOOR, _bucket, feature_dim
from models.head import SoftmaxHead, blend_profile, softmax
from models.interest import UserState, id_hash


def fuse(state: UserState, ts: float, context: dict[str, str], cfg: InterestConfig) -> np.ndarray:
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
    weekday = ((ts // 86_400.0) + 3) % 7
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


def profile_share(state: UserState, ts: float, cfg: InterestConfig) -> float:
    """The recent-category profile's share in what is served at ``ts``: ``category_blend``, times
    m / (m + ``category_blend_mass``) where m sums each profiled event's exp(-(ts - t_i) / tau)."""
    if not cfg.category_blend_mass or not state.categories:
        return cfg.category_blend
    fade = math.exp(-max(ts - state.category_origin, 0.0) / cfg.category_tau_s)
    mass = sum(state.categories.values()) * fade
    return cfg.category_blend * mass / (mass + cfg.category_blend_mass)


def predict_proba(head: SoftmaxHead, x: np.ndarray) -> np.ndarray:
    if not head.classes:
        return np.zeros(0, np.float32)
    return softmax(head.W @ x + head.b)


def top_k(
    head: SoftmaxHead, x: np.ndarray, k: int, state: UserState, blend: float
) -> list[tuple[str, float]]:
    p = blend_profile(predict_proba(head, x), head.index, state.category_profile(), blend)
    order = np.argsort(-p, kind="stable")[:k]
    return [(head.classes[i], float(p[i])) for i in order]


def predict_then_learn(
    head: SoftmaxHead, x: np.ndarray, categories: tuple[str, ...], profile: dict[str, float], blend: float
) -> np.ndarray:
    """Predict (the served blend, which is what is scored), then learn from the head's own softmax."""
    if not categories:
        return blend_profile(predict_proba(head, x), head.index, profile, blend)
    head.add_classes(categories)
    served = blend_profile(predict_proba(head, x), head.index, profile, blend)
    categories = tuple(c for c in categories if c in head._index)
    if not categories:
        head.unlearned += 1
        return served
    p = predict_proba(head, x)
    true = [head._index[c] for c in categories]
    ranked = np.argsort(-served, kind="stable")
    head.stats.n += 1
    head.stats.hit1 += int(ranked[0] in true)
    head.stats.hit5 += int(bool(set(ranked[:5].tolist()) & set(true)))
    head.stats.log_loss_sum += -float(np.mean(np.log(np.maximum(served[true], 1e-12))))
    y = np.zeros(len(head.classes), np.float32)
    y[true] = 1.0 / len(true)
    lr = np.float32(head.learning_rate)
    g = p - y
    if head.l2:
        head.W *= np.float32(1.0 - head.learning_rate * head.l2)
    head.W -= np.outer(lr * g, x)
    head.b -= lr * g
    return served


def add(state: UserState, event_id: str, ts: float, event_type: str, emb: np.ndarray, cfg: InterestConfig,
        item_id: str, offset: int | None, categories: tuple[str, ...]) -> None:  # fmt: skip
    h = id_hash(event_id)
    state.window = cfg.dedup_window
    state.mark_offset(event_type, offset)
    weight = cfg.weight(event_type)
    if ts >= state.t_ref:
        shrink = np.float32(math.exp(-(ts - state.t_ref) / cfg.tau_s)) if state.events_applied else 0
        state.vec *= shrink
        state.counts *= shrink
        state.t_ref = ts
        factor = weight
    else:
        factor = weight * math.exp(-(state.t_ref - ts) / cfg.tau_s)
    state.vec += np.float32(factor) * emb
    state.counts[EVENT_TYPES.index(event_type)] += np.float32(factor / weight)
    if categories and cfg.category_hash_dim:
        state._add_categories(ts, categories, cfg)
    state.recent_ids.append(h)
    del state.recent_ids[: -state.window]
    kept = list(zip(state.recent_ts, state.recent_items, strict=True))
    at = bisect.bisect_right(kept, (ts, item_id))
    state.recent_items.insert(at, item_id)
    state.recent_types.insert(at, EVENT_TYPES.index(event_type))
    state.recent_ts.insert(at, ts)
    state.recent_events.insert(at, event_id)
    for recent in (state.recent_items, state.recent_types, state.recent_ts, state.recent_events):
        del recent[: -cfg.items_kept]
    state.events_applied += 1


def apply(core: InterestCore, events, embeddings, states, head: SoftmaxHead) -> BatchResult:  # noqa: ANN001
    """``InterestCore.apply`` one event at a time (without a ranker)."""
    cfg = core.config
    loaded: dict[str, UserState] = {}
    applied_before: dict[str, np.ndarray] = {}
    moved: dict = {}
    confirmed: dict = {}
    result = BatchResult([], {}, 0, [], [])
    for event, item in sorted(events, key=lambda pair: event_order(pair[0])):
        user = event.user_id
        state = loaded.get(user)
        if state is None:
            state, rebased = core._load_state(states.get(user))
            result.rebased += rebased
            loaded[user] = state
            applied_before[user] = state.offsets.copy()
        if event.offset is not None and event.offset <= applied_before[user][EVENT_TYPES.index(event.type)]:
            result.redelivered += 1
            confirmed[user] = event
            continue
        if state.has_seen(event.event_id):
            result.duplicates += 1
            state.mark_offset(event.type, event.offset)
            result.states[user] = state
            continue
        emb = embeddings[item.encoder_text]
        x = fuse(state, event.ts, event.context, cfg)
        profile = state.category_profile()
        share = profile_share(state, event.ts, cfg)
        result.predictions.append(predict_then_learn(head, x, item.categories, profile, share))
        add(state, event.event_id, event.ts, event.type, emb, cfg, event.item_id, event.offset,
            item.categories)  # fmt: skip
        result.states[user] = state
        moved[user] = event
        result.applied.append((event, item))
    for user in moved:
        loaded[user].version += 1
    for user, newest in {**confirmed, **moved}.items():
        state = loaded[user]
        if state.events_applied == 0:
            continue
        result.states[user] = state
        x = fuse(state, newest.ts, newest.context, cfg)
        top = top_k(head, x, cfg.top_k, state, profile_share(state, newest.ts, cfg))
        result.updates.append(InterestUpdate(user, state.version, state.t_ref, state.embedding(), top,
                                             state.events_applied,
                                             core.encoder.name, newest))  # fmt: skip
    return result
