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
