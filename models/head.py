"""Softmax head: online multinomial logistic regression over the item categories seen so far.

Trained test-then-train (prequential): for each event it first predicts the event's categories from the
features before the event and records hit@1, hit@5 and log-loss, then takes one SGD step. An item with
several categories is a soft target spread evenly over them.

The class set grows online: a category gets a zero row the first time it appears (before the test step,
so the log-loss stays finite). ``merge`` averages replicas weighted by how many examples each has seen,
aligning classes by name: that is how several workers, each training a replica on its own partitions,
can share one head (see the README, "Scaling out the head").
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


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
        p = self.predict_proba(x)
        order = np.argsort(-p, kind="stable")[:k]
        return [(self.classes[i], float(p[i])) for i in order]

    def _step(self, x: np.ndarray, p: np.ndarray, y: np.ndarray) -> None:
        """W -= lr * ((p - y) x^T + l2 W), in place: the gradient of ``loss_and_grad``, without
        materialising it (this is the hot loop of the worker)."""
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
        if not categories:
            return self.predict_proba(x)
        self.add_classes(categories)
        categories = tuple(c for c in categories if c in self._index)
        if not categories:  # all past max_classes
            self.unlearned += 1
            return self.predict_proba(x)
        p = self.predict_proba(x)
        true = [self._index[c] for c in categories]
        ranked = np.argsort(-p, kind="stable")
        self.stats.n += 1
        self.stats.hit1 += int(ranked[0] in true)
        self.stats.hit5 += int(bool(set(ranked[:5].tolist()) & set(true)))
        self.stats.log_loss_sum += -float(np.mean(np.log(np.maximum(p[true], 1e-12))))
        self._step(x, p, self._target(categories))
        return p

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
