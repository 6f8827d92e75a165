"""The core's batch step under redelivery, bad events and a changed encoder."""

from __future__ import annotations

import numpy as np
import pytest

from models.cache import CachedEncoder
from models.config import InterestConfig
from models.core import InterestCore
from models.events import Event, Item
from models.interest import UserState


@pytest.fixture(scope="module")
def core(encoder) -> InterestCore:
    return InterestCore(InterestConfig(), CachedEncoder(encoder))


def batch(n: int, start: int = 0) -> list[tuple[Event, Item]]:
    items = [Item("Toy Story (1995)", categories=("Animation",)), Item("Heat (1995)", categories=("Crime",))]
    return [
        (
            Event(
                f"e{k}", f"u{k % 3}", f"i{k % 2}", 1_700_000_000 + 60 * k, ("click", "cart")[k % 2], offset=k
            ),
            items[k % 2],
        )  # fmt: skip
        for k in range(start, start + n)
    ]


def run(core: InterestCore, events, states: dict, head=None):
    head = head or core.new_head()
    result = core.apply(events, core.embed([i for _, i in events]), states, head)
    states.update(result.states)
    return result, head


def test_redelivered_offsets_change_nothing_but_republish_the_same_versions(core):
    states: dict[str, UserState] = {}
    first, head = run(core, batch(12), states)
    assert len(first.applied) == 12 and {u.version for u in first.updates} == {1}
    before = {u: (s.events_applied, s.version, s.vec.copy()) for u, s in states.items()}
    n_head = head.stats.n
    again, _ = run(core, batch(12), states, head)  # Kafka redelivers the same records, same offsets
    assert again.redelivered == 12 and not again.applied and again.duplicates == 0
    assert head.stats.n == n_head  # the head does not learn them twice either
    for user, (applied, version, vec) in before.items():
        assert states[user].events_applied == applied and states[user].version == version
        np.testing.assert_array_equal(states[user].vec, vec)
    # ... but each user's state and update come out again (the first writes may have died with the
    # worker), with the same version and content.
    assert set(again.states) == set(before)
    assert {(u.user_id, u.version, u.events_applied) for u in again.updates} == {
        (u.user_id, u.version, u.events_applied) for u in first.updates
    }


def test_redelivery_mixed_with_new_events_applies_only_the_new(core):
    states: dict[str, UserState] = {}
    run(core, batch(6), states)
    mixed, _ = run(core, batch(6) + batch(6, start=6), states)
    assert mixed.redelivered == 6 and len(mixed.applied) == 6
    assert sum(s.events_applied for s in states.values()) == 12
    assert all(u.version == 2 for u in mixed.updates)


def test_producer_duplicates_at_new_offsets_are_caught_by_the_id_window(core):
    states: dict[str, UserState] = {}
    run(core, batch(6), states)
    resent = [(Event(e.event_id, e.user_id, e.item_id, e.ts, e.type, offset=e.offset + 100), i)
              for e, i in batch(6)]  # fmt: skip
    result, _ = run(core, resent, states)
    assert result.duplicates == 6 and not result.applied and not result.updates
    assert sum(s.events_applied for s in states.values()) == 6


def test_an_event_the_core_cannot_apply_fails_alone(core):
    events = batch(5)
    embeddings = core.embed([i for _, i in events])
    embeddings[events[1][1].encoder_text] = np.zeros(7, np.float32)  # an embedding of the wrong shape
    result = core.apply(events, embeddings, {}, core.new_head())
    failed_items = {e.item_id for e, _ in result.failed}
    assert failed_items == {"i1"} and len(result.failed) == 2  # events 1 and 3 name that item
    assert len(result.applied) == 3


def test_a_state_from_another_encoder_restarts_in_this_ones_space(core):
    old = UserState.empty(8, 256, model=99)
    old.add("x", 1_600_000_000, "click", np.ones(8, np.float32) / np.sqrt(8), core.config)
    old.version, old.events_applied = 4, 1
    result, _ = run(core, batch(1), {"u0": old})
    state = result.states["u0"]
    assert result.rebased == 1 and state.dim == core.dim and state.model == core.model_tag
    assert state.version == 5 and state.events_applied == 2
    np.testing.assert_allclose(np.linalg.norm(state.embedding()), 1.0, rtol=1e-5)


def test_a_stored_head_trains_on_with_this_runs_settings_and_one_for_other_features_restarts(core):
    _, head = run(core, batch(6), {})
    slow = InterestCore(InterestConfig(learning_rate=0.001, l2=0.0, max_classes=7), core.encoder)
    loaded = slow.load_head(head.to_bytes())
    assert (loaded.learning_rate, loaded.l2, loaded.max_classes) == (0.001, 0.0, 7)
    np.testing.assert_array_equal(loaded.W, head.W)  # the weights and classes are the replica's own
    assert loaded.classes == head.classes
    # The category profile changes the feature count: a replica built without it is not reused.
    without = InterestCore(InterestConfig(category_hash_dim=0), core.encoder)
    fresh = core.load_head(without.new_head().to_bytes())
    assert fresh.n_features == core.n_features and fresh.classes == []


def random_stream(rng: np.random.Generator, n: int, dim: int) -> tuple[list[tuple[Event, Item]], dict]:
    """Events over 400 users and 300 items: random times (some late), contexts, several categories per
    item (some none), producer duplicates at new offsets and redeliveries of old offsets."""
    pool = [f"c{k}" for k in range(40)]
    items = []
    for k in range(300):
        cats = tuple(rng.choice(pool, size=int(rng.integers(0, 4)), replace=False).tolist())
        items.append(Item(f"item {k}", categories=cats))
    vectors = rng.normal(size=(300, dim)).astype(np.float32)
    embeddings = {it.encoder_text: v / np.linalg.norm(v) for it, v in zip(items, vectors, strict=True)}
    offsets = {t: 0 for t in ("click", "cart", "order")}
    events = []
    for k in range(n):
        kind = ("click", "cart", "order")[int(rng.integers(0, 3))]
        user, item = f"u{rng.integers(0, 400)}", int(rng.zipf(1.3) % 300)
        ts = 1_700_000_000 + 30 * k - (int(rng.integers(0, 20_000)) if rng.random() < 0.1 else 0)
        event_id = f"e{k}" if rng.random() > 0.03 or k == 0 else f"e{int(rng.integers(0, k))}"
        context = {"device": str(rng.choice(["web", "ios", "android"]))} if rng.random() < 0.7 else {}
        offset = offsets[kind] if rng.random() > 0.02 else max(offsets[kind] - 5, 0)  # some redelivered
        offsets[kind] += 1
        event = Event(event_id, user, f"i{item}", float(ts), kind, None, context, offset)
        events.append((event, items[item]))
    return events, embeddings


@pytest.mark.parametrize("seed, blend_mass", [(0, InterestConfig.category_blend_mass), (1, 0.0)])
def test_the_batched_core_computes_what_one_event_at_a_time_computes(encoder, seed, blend_mass):
    """The fast path (features, head steps and top-k batched) against ``reference_core``, the per-event
    code it replaced, on 6,000 random events in batches of random size: the same states, predictions,
    updates, statistics and weights, to 1e-5 (the profile's share in what is served growing with its
    mass, as by default, and fixed)."""
    import reference_core

    # classes past the limit, strong L2
    cfg = InterestConfig(max_classes=30, l2=1e-3, learning_rate=0.05, category_blend_mass=blend_mass)
    core = InterestCore(cfg, CachedEncoder(encoder))
    rng = np.random.default_rng(seed)
    events, embeddings = random_stream(rng, 6_000, core.dim)
    fast_states: dict = {}
    ref_states: dict = {}
    fast_head, ref_head = core.new_head(), core.new_head()
    at = 0
    while at < len(events):
        size = int(rng.integers(1, 300))
        chunk = events[at : at + size]
        at += size
        fast = core.apply(chunk, embeddings, fast_states, fast_head)
        ref = reference_core.apply(core, chunk, embeddings, ref_states, ref_head)
        fast_states.update({u: UserState.from_bytes(s.to_bytes()) for u, s in fast.states.items()})
        ref_states.update({u: UserState.from_bytes(s.to_bytes()) for u, s in ref.states.items()})
        assert (fast.duplicates, fast.redelivered, len(fast.applied)) == (
            ref.duplicates, ref.redelivered, len(ref.applied))  # fmt: skip
        assert len(fast.predictions) == len(ref.predictions)
        for p, q in zip(fast.predictions, ref.predictions, strict=True):
            np.testing.assert_allclose(p, q, atol=1e-5)
        assert [u.user_id for u in fast.updates] == [u.user_id for u in ref.updates]
        for u, v in zip(fast.updates, ref.updates, strict=True):
            assert (u.version, u.events_applied, u.event_ts, u.last_event) == (
                v.version, v.events_applied, v.event_ts, v.last_event)  # fmt: skip
            np.testing.assert_allclose(u.embedding, v.embedding, atol=1e-5)
            assert [c for c, _ in u.top_interests] == [c for c, _ in v.top_interests]
            np.testing.assert_allclose([p for _, p in u.top_interests], [p for _, p in v.top_interests],
                                       atol=1e-5)  # fmt: skip
    assert fast_states.keys() == ref_states.keys()
    for user, state in fast_states.items():
        other = ref_states[user]
        assert state.recent_items == other.recent_items and state.recent_ids == other.recent_ids
        assert state.recent_events == other.recent_events and state.offsets.tolist() == other.offsets.tolist()
        np.testing.assert_allclose(state.vec, other.vec, atol=1e-5)
        np.testing.assert_allclose(state.counts, other.counts, atol=1e-5)
        assert state.categories.keys() == other.categories.keys()
        assert state.category_profile() == pytest.approx(other.category_profile(), rel=1e-5)
    assert fast_head.classes == ref_head.classes and fast_head.unlearned == ref_head.unlearned > 0
    assert (fast_head.stats.n, fast_head.stats.hit1, fast_head.stats.hit5) == (
        ref_head.stats.n, ref_head.stats.hit1, ref_head.stats.hit5)  # fmt: skip
    assert fast_head.stats.log_loss_sum == pytest.approx(ref_head.stats.log_loss_sum, rel=1e-5)
    np.testing.assert_allclose(fast_head.W, ref_head.W, atol=1e-5)
    np.testing.assert_allclose(fast_head.b, ref_head.b, atol=1e-5)


def test_update_messages_carry_vectors_as_json_numbers_or_base64_float32_and_match_the_schema():
    import base64
    import json
    from pathlib import Path

    import jsonschema

    from models.core import InterestUpdate, decode_vector

    schema_file = Path(__file__).parent.parent / "schemas" / "interest-update.schema.json"
    schema = json.loads(schema_file.read_text())
    rng = np.random.default_rng(3)
    vector = rng.normal(size=384).astype(np.float32)
    seq = rng.normal(size=64).astype(np.float32)
    update = InterestUpdate("u1", 2, 1.0, vector, [("Drama", 0.5)], 2, "m@x",
                            Event("e1", "u1", "i1", 1.0, "click"), (seq, 3, 10), [("i2", 0.25)])  # fmt: skip
    plain = json.loads(update.to_bytes())
    packed = json.loads(update.to_bytes("base64"))
    jsonschema.validate(plain, schema)
    jsonschema.validate(packed, schema)
    assert "vector_encoding" not in plain and packed["vector_encoding"] == "float32-le-base64"
    assert plain["embedding"] == np.round(vector.astype(np.float64), 7).tolist()  # as json.dumps wrote it
    assert base64.b64decode(packed["embedding"]) == vector.astype("<f4").tobytes()
    np.testing.assert_array_equal(decode_vector(packed["embedding"]), vector)
    np.testing.assert_array_equal(decode_vector(packed["sequence"]["vector"]), seq)
    np.testing.assert_allclose(decode_vector(plain["embedding"]), vector, atol=1e-7)
    assert {k: v for k, v in plain.items() if k not in ("embedding", "sequence")} == {
        k: v for k, v in packed.items() if k not in ("embedding", "sequence", "vector_encoding")
    }
    assert len(update.to_bytes("base64")) < 0.6 * len(update.to_bytes())


@pytest.mark.parametrize(
    "blend, mass, gap_s, animation",
    [
        (1.0, 2.0, 10, True),  # the default, the session going on: a mass of 2.7, a share of 0.58
        (1.0, 2.0, 3600, False),  # the default, the session gone quiet: the head speaks
        (0.75, 0.0, 3600, True),  # a fixed share: the profile, however old
        (0.0, 2.0, 10, False),  # no blend: the head alone
    ],
)
def test_top_interests_follow_the_users_recent_categories(core, blend, mass, gap_s, animation):
    """A head trained on one user's crime films still tells another user, who has just been watching
    animation, that animation comes next: the served distribution blends in their own recent
    categories (``category_blend``), with a share that grows with how many of them are recent
    (``category_blend_mass``); an hour later, the head's crime films win again. With the blend off it
    is the head's alone."""
    cfg = InterestConfig(category_blend=blend, category_blend_mass=mass)
    model = InterestCore(cfg, core.encoder)
    toy, heat = (
        Item("Toy Story (1995)", categories=("Animation",)),
        Item("Heat (1995)", categories=("Crime",)),
    )
    first = [(Event(f"t{k}", "kid", "i0", 1_700_000_000 + k, "click", offset=k), toy) for k in range(3)]
    first += [
        (Event(f"h{k}", "heavy", "i1", 1_700_000_003 + k, "click", offset=3 + k), heat) for k in range(200)
    ]
    later = [(Event("t9", "kid", "i0", 1_700_000_002 + gap_s, "click", offset=203), toy)]
    states: dict = {}
    head = model.new_head()
    embeddings = model.embed([toy, heat])
    states.update(model.apply(first, embeddings, states, head).states)
    result = model.apply(later, embeddings, states, head)
    # The kid's fourth event is predicted from the state after their first three and a head that has
    # learned 200 crime films since.
    (served,) = result.predictions
    assert (served.argmax() == head.classes.index("Animation")) == animation
    if not mass:
        assert served[head.classes.index("Animation")] >= blend
    (update,) = result.updates
    if gap_s < 3600:  # (an hour on, the update after the new event has that one event in the profile)
        assert update.top_interests[0][0] == ("Animation" if animation else "Crime")
    # What the query API serves for the user (``InterestCore.top_interests``) is what the update carried.
    served = model.top_interests(head, result.states["kid"], update.last_event.ts, update.last_event.context)
    assert served == update.top_interests
