import numpy as np
import pytest

from models.head import SoftmaxHead, blend_profile, loss_and_grad


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    C, D, l2 = 5, 7, 0.01
    W, b, x = rng.normal(size=(C, D)), rng.normal(size=C), rng.normal(size=D)
    y = np.array([0.5, 0, 0.5, 0, 0])
    _, gW, gb = loss_and_grad(W, b, x, y, l2)
    eps = 1e-6
    num_W = np.zeros_like(W)
    for i in range(C):
        for j in range(D):
            Wp, Wm = W.copy(), W.copy()
            Wp[i, j] += eps
            Wm[i, j] -= eps
            num_W[i, j] = (loss_and_grad(Wp, b, x, y, l2)[0] - loss_and_grad(Wm, b, x, y, l2)[0]) / (2 * eps)
    num_b = np.zeros_like(b)
    for i in range(C):
        bp, bm = b.copy(), b.copy()
        bp[i] += eps
        bm[i] -= eps
        num_b[i] = (loss_and_grad(W, bp, x, y, l2)[0] - loss_and_grad(W, bm, x, y, l2)[0]) / (2 * eps)
    np.testing.assert_allclose(gW, num_W, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb, num_b, rtol=1e-5, atol=1e-7)


def test_class_set_grows_and_keeps_what_was_learned():
    head = SoftmaxHead(3)
    x, z = np.array([1, 0, 0], np.float32), np.array([0, 1, 0], np.float32)
    for _ in range(50):
        head.learn_one(x, ["Drama"])
        head.learn_one(z, ["Comedy"])
    assert head.classes == ["Drama", "Comedy"] and head.W.shape == (2, 3)
    head.add_classes(["Horror", "Drama"])
    assert head.classes == ["Drama", "Comedy", "Horror"]
    assert head.top_k(x, 1)[0][0] == "Drama" and head.top_k(z, 1)[0][0] == "Comedy"
    p = head.predict_proba(x)
    assert p.dtype == np.float32 and abs(p.sum() - 1) < 1e-5


def test_test_then_train_scores_before_learning():
    head = SoftmaxHead(2, learning_rate=0.5)
    x = np.array([1, 0], np.float32)
    head.test_then_train(x, ("A",))  # only class: a hit, but loss counted before any step
    head.test_then_train(x, ("B",))  # B is new: its row is zero, A was learned -> a miss at 1
    assert head.stats.n == 2 and head.stats.hit1 == 1 and head.stats.hit5 == 2
    assert head.stats.log_loss_sum > np.log(2)


def test_online_head_learns_a_separable_problem():
    rng = np.random.default_rng(1)
    head = SoftmaxHead(4, learning_rate=0.2)
    centers = {"a": np.array([3, 0, 0, 0.0]), "b": np.array([0, 3, 0, 0.0]), "c": np.array([0, 0, 3, 0.0])}
    for _ in range(600):
        label = rng.choice(list(centers))
        head.test_then_train((centers[label] + rng.normal(size=4)).astype(np.float32), (label,))
    late_hits = head.stats.hit1 / head.stats.n
    assert late_hits > 0.8


def test_round_trip_and_merge_align_classes_by_name():
    a, b = SoftmaxHead(2), SoftmaxHead(2)
    a.add_classes(["x", "y"])
    b.add_classes(["y", "z"])
    a.W[:] = [[1, 1], [2, 2]]
    b.W[:] = [[4, 4], [6, 6]]
    a.stats.n, b.stats.n = 1, 3
    back = SoftmaxHead.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(back.W, a.W)
    assert back.classes == a.classes and back.stats.n == 1
    m = SoftmaxHead.merge([a, b])
    assert m.classes == ["x", "y", "z"]
    # y is in both replicas (weights 1:3); x and z are each in one, so that one replica decides their row
    # alone instead of being pulled toward the zero row the other never had.
    np.testing.assert_allclose(m.W[:, 0], [1, 0.25 * 2 + 0.75 * 4, 6])
    assert m.stats.n == 4


def test_class_set_is_bounded_and_past_the_bound_nothing_is_learned():
    head = SoftmaxHead(3, max_classes=2)
    x = np.ones(3, np.float32)
    head.test_then_train(x, ("a",))
    head.test_then_train(x, ("b", "c"))  # c does not fit: trained on b alone
    p = head.test_then_train(x, ("d",))  # nothing fits: predicted, not learned
    assert head.classes == ["a", "b"] and head.W.shape == (2, 3)
    assert head.stats.n == 2 and head.unlearned == 1 and p.shape == (2,)
    back = SoftmaxHead.from_bytes(head.to_bytes())
    assert back.max_classes == 2 and back.unlearned == 1


def test_sgd_step_is_the_checked_gradient():
    rng = np.random.default_rng(2)
    head = SoftmaxHead(6, learning_rate=0.3, l2=0.01)
    head.add_classes(["a", "b", "c"])
    head.W[:] = rng.normal(size=(3, 6))
    head.b[:] = rng.normal(size=3)
    W0, b0 = head.W.astype(np.float64), head.b.astype(np.float64)
    x = rng.normal(size=6).astype(np.float32)
    loss = head.learn_one(x, ["a", "c"])
    y = np.array([0.5, 0, 0.5])
    ref_loss, gW, gb = loss_and_grad(W0, b0, x.astype(np.float64), y, 0.01)
    np.testing.assert_allclose(head.W, W0 - 0.3 * gW, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.b, b0 - 0.3 * gb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss + 0.5 * 0.01 * np.sum(W0 * W0), ref_loss, rtol=1e-5)


def test_fold_in_shares_weights_but_keeps_own_class_order_and_counts():
    a, b = SoftmaxHead(2), SoftmaxHead(2)
    a.add_classes(["y", "x"])
    b.add_classes(["x", "z"])
    a.W[:] = [[2, 2], [1, 1]]
    b.W[:] = [[3, 3], [6, 6]]
    a.stats.n, b.stats.n = 3, 1
    a.fold_in([b])
    assert a.classes == ["y", "x", "z"] and a.stats.n == 3  # its own order first, its own count
    np.testing.assert_allclose(a.W[:, 0], [2, 0.75 * 1 + 0.25 * 3, 6])
    assert b.classes == ["x", "z"]  # the others are read, not changed


def test_blend_profile_mixes_in_the_users_recent_categories_by_name():
    p = np.array([0.5, 0.3, 0.2])
    classes = {"Drama": 0, "Comedy": 1, "Horror": 2, "War": 3}  # War: learned after p was made
    out = blend_profile(p, classes, {"Horror": 0.6, "War": 0.3, "Sci-Fi": 0.1}, 0.75)
    # q over p's classes holds Horror alone (War and Sci-Fi are not among them), renormalised to 1.
    np.testing.assert_allclose(out, 0.25 * p + 0.75 * np.array([0.0, 0.0, 1.0]))
    assert out.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(blend_profile(p, classes, {}, 0.75), p)  # no history: the head's own
    np.testing.assert_array_equal(blend_profile(p, classes, {"War": 1.0}, 0.75), p)  # none of p's classes
    np.testing.assert_array_equal(blend_profile(p, classes, {"Comedy": 1.0}, 0.0), p)
    np.testing.assert_allclose(blend_profile(p, classes, {"Comedy": 0.2, "Drama": 0.6}, 1.0), [0.75, 0.25, 0])


def test_blend_profiles_takes_one_weight_per_row():
    from models.head import blend_profiles

    P = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    classes = {"Drama": 0, "Comedy": 1, "Horror": 2}
    rows = [{"Horror": 1.0}] * 3
    out = blend_profiles(P, [3, 3, 3], classes, rows, [0.0, 0.25, 1.0])
    for row, w in zip(out, (0.0, 0.25, 1.0), strict=True):  # each row as that one weight blends it
        np.testing.assert_allclose(row, blend_profile(P[0], classes, rows[0], w))
    np.testing.assert_allclose(out[2], [0, 0, 1])
