import math

import numpy as np

from models.config import InterestConfig
from models.fusion import feature_dim, fuse
from models.interest import UserState

CFG = InterestConfig(context_hash_dim=16)
D = 4


def test_layout_and_dimension():
    s = UserState.empty(D, 8)
    v = np.array([3, 4, 0, 0], np.float32) / 5
    s.add("a", 0.0, "order", v, CFG)
    ts = 3600.0 * 30  # Friday 1970-01-02 06:00 UTC
    x = fuse(s, ts, {"device": "ios", "geo": "DE"}, CFG)
    assert x.shape == (feature_dim(D, CFG),) == (D + 9 + 16,)
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
    hashed = x[D + 9 :]
    assert np.abs(hashed).sum() == 2  # two context keys, one signed bucket each (or cancelling)
    other = fuse(s, ts, {"device": "android", "geo": "DE"}, CFG)[D + 9 :]
    assert not np.array_equal(hashed, other)


def test_empty_user_has_zero_interest_and_behaviour():
    x = fuse(UserState.empty(D, 8), 0.0, {}, CFG)
    assert not x[: D + 5].any()
    assert not x[D + 9 :].any()
