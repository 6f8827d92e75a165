"""Softmax head: online multinomial logistic regression over the item categories seen so far.

Trained test-then-train (prequential): for each event it first predicts the event's categories from the
features before the event and records hit@1, hit@5 and log-loss, then takes one SGD step. An item with
several categories is a soft target spread evenly over them.

What a user is served (``top_interests``, and what ``evaluate`` scores) is the head's softmax blended
with the user's own recent categories (``blend_profiles``): the head learns across users, the profile
knows this user's session, and its share grows with how much of that session is recent
(``InterestConfig.category_blend_mass``, computed with the features in ``fusion.FeatureRows``).

The class set grows online: a category gets a zero row the first time it appears (before the test step,
so the log-loss stays finite). ``merge`` averages replicas weighted by how many examples each has seen,
aligning classes by name: that is how several workers, each training a replica on its own partitions,
can share one head (see the README, "Scaling out the head").
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def blend_profiles(
    P: np.ndarray,
    known: Sequence[int],
    index: Mapping[str, int],
    profiles: Sequence[Mapping[str, float]],
    weight: float | Sequence[float],
) -> np.ndarray:
    """``(1 - weight) * P + weight * Q`` row by row (``weight``: one for all rows, or one per row): the
    head's probabilities ``P`` (row i over its first ``known[i]`` classes, zeros after; ``index``: class
    name -> column) blended with ``Q``, each row's user's recent-category shares
    (``UserState.category_profile``) over the same classes. A row whose profile has none of them (no
    history yet) stays the head's.

    Why: a global head trained by SGD predicts a user's next category well only while the user's own
    events are the latest it learned from. Where many users interleave, its weights cannot track one
    user's session, and the user's own recent categories carry that (``evaluate`` scores the head with
    lagged weights to show it). The head keeps what it learns across users: which categories follow,
    and at what time of day."""
    if not np.any(weight) or not any(profiles) or not P.size:
        return P
    Q = np.zeros(P.shape)
    for i, profile in enumerate(profiles):  # a handful of entries per row, however many classes
        for category, share in profile.items():
            j = index.get(category)
            if j is not None and j < known[i]:
                Q[i, j] = share
    total = Q.sum(axis=1)
    has = total > 0
    out = P.astype(np.float64)
    w = np.broadcast_to(np.asarray(weight, np.float64), (len(P),))[has][:, None]  # one, or one per row
    out[has] = (1.0 - w) * out[has] + (w / total[has][:, None]) * Q[has]
    return out


def blend_profile(
    p: np.ndarray, index: Mapping[str, int], profile: Mapping[str, float], weight: float
) -> np.ndarray:
    """``blend_profiles`` of one prediction over its ``len(p)`` classes."""
    return blend_profiles(p[None, :], [len(p)], index, [profile], weight)[0]


def softmax_rows(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``softmax(W x + b)`` for each row ``x`` of ``X``, in one matrix product."""
    Z = X @ W.T + b
    Z -= Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    P /= P.sum(axis=1, keepdims=True)
    return P


def top_indices(p: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest entries of ``p``, largest first, ties by index: ``argsort(-p, kind="stable")[:k]``
    without sorting all of ``p`` (argpartition finds the k-th value; only entries at or above it are
    sorted, so ties at the boundary resolve exactly as the full stable sort does)."""
    if k >= len(p):
        return np.argsort(-p, kind="stable")
    kth = np.partition(p, len(p) - k)[len(p) - k]
    above = np.flatnonzero(p >= kth)
    return above[np.lexsort((above, -p[above]))][:k]


def loss_and_grad(
    W: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Cross-entropy of softmax(Wx + b) against the target distribution y, plus (l2/2)·||W||².

    Returns (loss, dL/dW, dL/db). Works in the dtype it is given, so a test can check it in float64.
    """
    p = softmax(W @ x + b)
    loss = -float(np.sum(y * np.log(np.maximum(p, 1e-12)))) + 0.5 * l2 * float(np.sum(W * W))
    g = p - y
    return loss, np.outer(g, x) + l2 * W, g


@dataclass
class PrequentialStats:
    n: int = 0
    hit1: int = 0
    hit5: int = 0
    log_loss_sum: float = 0.0

    def __add__(self, other: PrequentialStats) -> PrequentialStats:
        return PrequentialStats(self.n + other.n, self.hit1 + other.hit1, self.hit5 + other.hit5,
                                self.log_loss_sum + other.log_loss_sum)  # fmt: skip

    def __sub__(self, other: PrequentialStats) -> PrequentialStats:
        return PrequentialStats(self.n - other.n, self.hit1 - other.hit1, self.hit5 - other.hit5,
                                self.log_loss_sum - other.log_loss_sum)  # fmt: skip

    def as_dict(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {
            "n": self.n,
            "hit@1": self.hit1 / n,
            "hit@5": self.hit5 / n,
            "log_loss": self.log_loss_sum / n,
        }


class SoftmaxHead:
    def __init__(
        self, n_features: int, learning_rate: float = 0.05, l2: float = 1e-5, max_classes: int = 256
    ) -> None:
        self.n_features = n_features
        self.learning_rate = learning_rate
        self.l2 = l2
        self.max_classes = max_classes
        """Categories past this many are not learned: the head's record (4 bytes x features per class)
        must stay well below Kafka's 1 MB default record limit, and its cost per event grows with it."""
        self.unlearned = 0  # events skipped because every category of theirs was past max_classes
        self.classes: list[str] = []
        self._index: dict[str, int] = {}
        self.W = np.zeros((0, n_features), np.float32)
        self.b = np.zeros(0, np.float32)
        self.stats = PrequentialStats()

    @property
    def index(self) -> Mapping[str, int]:
        """Class name -> its position in ``classes`` (and in every prediction that covers it)."""
        return self._index

    # -- class set -------------------------------------------------------------------------------
    def add_classes(self, categories: tuple[str, ...] | list[str]) -> None:
        """Add unseen categories, up to ``max_classes`` in all; later ones are left out."""
        new = [c for c in dict.fromkeys(categories) if c not in self._index]
        new = new[: max(self.max_classes - len(self.classes), 0)]
        if not new:
            return
        for c in new:
            self._index[c] = len(self.classes)
            self.classes.append(c)
        self.W = np.vstack([self.W, np.zeros((len(new), self.n_features), np.float32)])
        self.b = np.concatenate([self.b, np.zeros(len(new), np.float32)])

    def _target(self, categories: tuple[str, ...] | list[str]) -> np.ndarray:
        y = np.zeros(len(self.classes), np.float32)
        idx = [self._index[c] for c in categories]
        y[idx] = 1.0 / len(idx)
        return y

    # -- estimator API ---------------------------------------------------------------------------
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        if not self.classes:
            return np.zeros(0, np.float32)
        return softmax(self.W @ x + self.b)

    def top_k(self, x: np.ndarray, k: int) -> list[tuple[str, float]]:
        return self.top_k_many(x[None, :], k)[0]

    def top_k_many(
        self,
        X: np.ndarray,
        k: int,
        profiles: Sequence[Mapping[str, float]] = (),
        blend: float | Sequence[float] = 0.0,
    ) -> list[list[tuple[str, float]]]:
        """``top_k`` of each row of ``X``: one matrix product for all rows, ``top_indices`` per row; with
        ``profiles`` (one per row), of each row's ``blend_profiles``."""
        if not self.classes:
            return [[] for _ in range(len(X))]
        P = softmax_rows(X, self.W, self.b)
        P = blend_profiles(P, [len(self.classes)] * len(P), self._index, profiles, blend)
        return [[(self.classes[i], float(p[i])) for i in top_indices(p, k)] for p in P]

    def _step(self, x: np.ndarray, p: np.ndarray, y: np.ndarray) -> None:
        """W -= lr * ((p - y) x^T + l2 W): the gradient of ``loss_and_grad``, one example."""
        lr = np.float32(self.learning_rate)
        g = p - y
        if self.l2:
            self.W *= np.float32(1.0 - self.learning_rate * self.l2)
        self.W -= np.outer(lr * g, x)
        self.b -= lr * g

    def learn_one(self, x: np.ndarray, categories: tuple[str, ...] | list[str]) -> float:
        """One SGD step on (x, categories); returns the cross-entropy before the step."""
        self.add_classes(categories)
        categories = [c for c in categories if c in self._index]
        if not categories:
            self.unlearned += 1
            return 0.0
        p = self.predict_proba(x)
        y = self._target(categories)
        self._step(x, p, y)
        return -float(np.sum(y * np.log(np.maximum(p, 1e-12))))

    def test_then_train(self, x: np.ndarray, categories: tuple[str, ...]) -> np.ndarray:
        """Score the prediction for this example (prequential metrics), then learn from it.

        Returns the prediction made before learning (probabilities over ``classes`` as they were then;
        the class list only grows, so it stays aligned with the prefix of later lists)."""
        return self.test_then_train_many(x[None, :], [categories])[0]

    def test_then_train_many(
        self,
        X: np.ndarray,
        categories: Sequence[tuple[str, ...] | list[str]],
        profiles: Sequence[Mapping[str, float]] = (),
        blend: float | Sequence[float] = 0.0,
    ) -> list[np.ndarray]:
        """``test_then_train`` on each row of ``X`` in order, exactly as one call per row would: the
        worker's hot loop, so each row costs one product with the weights, a softmax and a rank-one step,
        and nothing else touches the whole matrix. The L2 shrink of every step is a running factor
        (W = scale * V), applied once at the end; the classes first seen at row i get their (zero) rows
        up front and rows before i leave them out, which is what a class list growing row by row means.
        Weights stay float32 as in ``_step``; the logits and the softmax are float64.

        With ``profiles`` (one per row), what each row returns and is scored on (``stats``) is the served
        prediction, ``blend_profiles``; the head learns from its own softmax either way.
        """
        n = len(X)
        known = []  # per row: how many classes exist when it is predicted
        targets: list[list[int] | None] = []  # per row: class indices learned, None: predicted only
        for cats in categories:
            if cats:
                self.add_classes(cats)
                true = [self._index[c] for c in cats if c in self._index]
                if not true:
                    self.unlearned += 1
                targets.append(true or None)
            else:
                targets.append(None)
            known.append(len(self.classes))
        if not self.classes:
            return [np.zeros(0, np.float32) for _ in range(n)]
        X = np.ascontiguousarray(X, dtype=np.float32)
        # The constants as ``_step`` has always used them (float32): over thousands of steps the rounded
        # shrink factor drifts measurably from the exact one, and a replica must not change with the path.
        lr = float(np.float32(self.learning_rate))
        d = float(np.float32(1.0 - self.learning_rate * self.l2)) if self.l2 else 1.0
        V = self.W.copy()  # W = scale * V: the L2 shrink moves ``scale``, not the matrix
        b = self.b.astype(np.float64)
        K = len(self.classes)
        P = np.zeros((n, K))  # row i: the prediction for row i (zeros past the classes it knew)
        Y = np.zeros((n, K))  # row i: its target (zeros: predicted only)
        for i, true in enumerate(targets):
            if true is not None:
                Y[i, true] = 1.0 / len(true)
        scale = 1.0
        for i in range(n):
            m = known[i]
            if m == 0:  # no class yet (and so nothing to learn either)
                continue
            x = X[i]
            z = (V[:m] @ x) * scale + b[:m]
            p = P[i, :m]
            np.exp(z - z.max(), out=p)
            p /= p.sum()
            if targets[i] is None:
                continue
            g = p - Y[i, :m]
            scale *= d
            V[:m] -= np.outer((g * (lr / scale)).astype(np.float32), x)
            b[:m] -= lr * g
        self.W = V * np.float32(scale)
        self.b = b.astype(np.float32)
        P32 = blend_profiles(P, known, self._index, profiles, blend).astype(np.float32)
        out = [P32[i, :m] for i, m in enumerate(known)]
        scored = np.flatnonzero([t is not None for t in targets])
        if len(scored):
            # Prequential scores of the whole batch at once: top 5 by a stable descending sort (the classes
            # a row did not know yet are zeros at the end, after every real probability).
            top5 = np.argsort(-P32[scored], axis=1, kind="stable")[:, :5]
            truth = Y[scored] > 0
            rows = np.arange(len(scored))[:, None]
            self.stats.n += len(scored)
            self.stats.hit1 += int(truth[rows[:, 0], top5[:, 0]].sum())
            self.stats.hit5 += int(truth[rows, top5].any(axis=1).sum())
            logs = np.log(np.maximum(P32[scored], np.float32(1e-12)))
            self.stats.log_loss_sum += -float(((logs * truth).sum(axis=1) / truth.sum(axis=1)).sum())
        return out

    # -- replicas --------------------------------------------------------------------------------
    @classmethod
    def merge(cls, heads: list[SoftmaxHead]) -> SoftmaxHead:
        """Average replicas (weights by examples seen), aligning classes by name.

        Each class row is averaged over the replicas that have that class, with their weights
        renormalised for that row: a class one replica has not met yet is not pulled toward zero.
        """
        if not heads:
            raise ValueError("nothing to merge")
        first = heads[0]
        out = cls(first.n_features, first.learning_rate, first.l2, first.max_classes)
        for h in heads:
            out.add_classes(h.classes)
        row_weight = np.zeros(len(out.classes), np.float64)
        for h in heads:
            w = max(h.stats.n, 1)
            rows = [out._index[c] for c in h.classes if c in out._index]
            kept = [i for i, c in enumerate(h.classes) if c in out._index]
            out.W[rows] += np.float32(w) * h.W[kept]
            out.b[rows] += np.float32(w) * h.b[kept]
            row_weight[rows] += w
            out.stats += h.stats
        scale = (1.0 / np.maximum(row_weight, 1e-12)).astype(np.float32)
        out.W *= scale[:, None]
        out.b *= scale
        return out

    def fold_in(self, others: list[SoftmaxHead]) -> None:
        """Take the example-weighted average of this replica and ``others`` as this replica's weights.

        The replica keeps its own class order (others' new classes are appended) and its own statistics,
        so it goes on training from the shared model while the weights stay counted once: federated
        averaging, the way partition replicas on several workers share one head.
        """
        if not others:
            return
        merged = SoftmaxHead.merge([self, *others])
        self.classes = merged.classes
        self._index = merged._index
        self.W, self.b = merged.W, merged.b

    # -- persistence -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = {
            "n_features": self.n_features,
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "max_classes": self.max_classes,
            "unlearned": self.unlearned,
            "classes": self.classes,
            "stats": self.stats.__dict__,
        }
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), W=self.W, b=self.b)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SoftmaxHead:
        with np.load(io.BytesIO(raw)) as z:
            meta = json.loads(z["meta"].tobytes())
            head = cls(meta["n_features"], meta["learning_rate"], meta["l2"], meta.get("max_classes", 256))
            head.unlearned = meta.get("unlearned", 0)
            head.classes = list(meta["classes"])
            head._index = {c: i for i, c in enumerate(head.classes)}
            head.W = z["W"].astype(np.float32)
            head.b = z["b"].astype(np.float32)
            head.stats = PrequentialStats(**meta["stats"])
        return head
