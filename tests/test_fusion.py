import math

import numpy as np
import pytest

from models.config import InterestConfig
from models.fusion import PROFILE_FLOOR, feature_dim, fuse
from models.interest import UserState, category_bucket

CFG = InterestConfig(context_hash_dim=16)
D = 4


def test_layout_and_dimension():
    s = UserState.empty(D, 8)
    v = np.array([3, 4, 0, 0], np.float32) / 5
    s.add("a", 0.0, "order", v, CFG)
    ts = 3600.0 * 30  # Friday 1970-01-02 06:00 UTC
    x = fuse(s, ts, {"device": "ios", "geo": "DE"}, CFG)
    assert x.shape == (feature_dim(D, CFG),) == (D + 9 + 16 + CFG.category_hash_dim,)
    np.testing.assert_allclose(x[:D], v, atol=1e-6)  # interest
    decay = math.exp(-ts / CFG.tau_s)
    np.testing.assert_allclose(x[D : D + 3], [0, 0, math.log1p(decay)], rtol=1e-5)  # counts
    np.testing.assert_allclose(x[D + 3], math.log1p(30) / 10, rtol=1e-5)  # recency, hours
    np.testing.assert_allclose(x[D + 4], math.log1p(1) / 10, rtol=1e-5)
    hour, weekday = 6, 4  # Friday = 4 with Monday = 0
    np.testing.assert_allclose(x[D + 5 : D + 9], [
        math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24),
        math.sin(2 * math.pi * weekday / 7), math.cos(2 * math.pi * weekday / 7),
    ], atol=1e-6)  # fmt: skip
    hashed = x[D + 9 : D + 9 + 16]
    assert np.abs(hashed).sum() == 2  # two context keys, one signed bucket each (or cancelling)
    other = fuse(s, ts, {"device": "android", "geo": "DE"}, CFG)[D + 9 : D + 9 + 16]
    assert not np.array_equal(hashed, other)
    assert not x[D + 9 + 16 :].any()  # no categories given: an empty profile


def test_category_profile_is_log_shares_of_the_hashed_categories():
    s = UserState.empty(D, 8)
    v = np.array([1, 0, 0, 0], np.float32)
    s.add("a", 0.0, "click", v, CFG, "i1", categories=("Drama", "Comedy"))
    s.add("b", 10.0, "order", v, CFG, "i2", categories=("Drama",))
    s.add("c", 5.0, "click", v, CFG, "i3", categories=())  # an item without categories adds nothing
    x = fuse(s, 20.0, {}, CFG)[-CFG.category_hash_dim :]
    drama, comedy = (category_bucket(c, CFG.category_hash_dim) for c in ("Drama", "Comedy"))
    assert drama != comedy  # so the shares below are not summed in one bucket
    expected = np.zeros(CFG.category_hash_dim)
    later = math.exp(10.0 / CFG.category_tau_s)  # the second event's weight: 10 s newer
    expected[drama], expected[comedy] = (0.5 + later) / (1 + later), 0.5 / (1 + later)
    np.testing.assert_allclose(x, np.log1p(expected / PROFILE_FLOOR), rtol=1e-5)
    assert s.category_profile() == pytest.approx({"Drama": expected[drama], "Comedy": expected[comedy]})
    # A taste fades with category_tau_s: one tau later, a new genre weighs e times the old one.
    t = UserState.empty(D, 8)
    t.add("a", 0.0, "click", v, CFG, "i1", categories=("Drama",))
    t.add("b", CFG.category_tau_s, "click", v, CFG, "i2", categories=("Comedy",))
    shares = t.category_shares(CFG)
    np.testing.assert_allclose(shares[comedy] / shares[drama], math.e, rtol=1e-5)
    # Years later the weights are rescaled to a new origin (float32 would overflow); shares stay.
    u = UserState.empty(D, 8)
    u.add("a", 0.0, "click", v, CFG, "i1", categories=("Drama",))
    u.add("b", 1.0, "click", v, CFG, "i2", categories=("Comedy",))
    later = 30 * CFG.category_tau_s
    u.add("c", later, "click", v, CFG, "i3", categories=("Drama",))
    assert u.category_origin == later and np.isfinite(list(u.categories.values())).all()
    np.testing.assert_allclose(u.category_shares(CFG)[drama], 1.0, rtol=1e-6)  # the old ones faded out
    assert u.category_profile() == {"Drama": 1.0}  # ... and are gone from the state
    # Turned off: no block at all.
    off = InterestConfig(context_hash_dim=16, category_hash_dim=0)
    assert fuse(s, 20.0, {}, off).shape == (D + 9 + 16,)


def test_empty_user_has_zero_interest_and_behaviour():
    x = fuse(UserState.empty(D, 8), 0.0, {}, CFG)
    assert not x[: D + 5].any()
    assert not x[D + 9 :].any()
