"""The measures, each written once, with bootstrap intervals over users.

Ranking (next item): the target's rank among all catalogue items, items the user had before masked, as an
*expectation under random tie-breaking*: a model that scores everything the same gets Recall@10 =
10 / catalogue size, not 0 or 1. That is how the issue's reference numbers were computed too.

Classification (next category): the item's categories are the truth (a movie can be Comedy and Drama);
the prediction is a probability vector over the categories seen so far. acc@1 = the top category is one
of the truth; F1 counts, per category, a top-1 prediction of it as TP when it is true and FP when not, and
each true category not predicted as FN; AUC is one-vs-rest per category (macro over categories with both
outcomes); log-loss is the cross-entropy against the truth spread evenly, the head's own training target.

Intervals: users are resampled with replacement (the cluster bootstrap), because events of one user are
not independent; 95% percentile intervals from a fixed-seed generator, so a rerun gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RANK_METRICS = ("recall@10", "recall@20", "ndcg@10", "mrr")
CLASS_METRICS = ("acc@1", "hit@5", "macro_f1", "weighted_f1", "auc_macro", "log_loss")


def rank_metrics(scores: np.ndarray, target: int, masked: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Metrics of one ranked list; ``scores`` is not modified."""
    s = np.asarray(scores, dtype=np.float64)
    t = s[target]
    keep = np.ones(len(s), bool)
    keep[np.asarray(masked, dtype=np.int64)] = False
    keep[target] = True
    above = int(np.count_nonzero(keep & (s > t)))
    ties = int(np.count_nonzero(keep & (s == t))) - 1
    ranks = np.arange(above + 1, above + ties + 2, dtype=np.float64)  # equally likely positions
    return {
        "recall@10": float(np.mean(ranks <= 10)),
        "recall@20": float(np.mean(ranks <= 20)),
        "ndcg@10": float(np.mean(np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0))),
        "mrr": float(np.mean(1.0 / ranks)),
    }


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def as_list(self) -> list[float | None]:
        """[value, low, high], rounded; None where undefined (no data, or no resamples asked for)."""
        return [None if np.isnan(x) else round(x, 6) for x in (self.value, self.low, self.high)]


def _resamples(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_users) counts: how often each user appears in each resample."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [np.bincount(rng.integers(0, n_users, n_users), minlength=n_users) for _ in range(n_boot)]
    )


def bootstrap_means(per_user: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Interval:
    """Mean over users of a per-user value, with a 95% percentile interval."""
    per_user = np.asarray(per_user, dtype=np.float64)
    if len(per_user) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    w = _resamples(len(per_user), n_boot, seed)
    boots = (w @ per_user) / len(per_user)
    low, high = np.percentile(boots, [2.5, 97.5])
    return Interval(float(per_user.mean()), float(low), float(high))


@dataclass
class CategoryPredictions:
    """Per-event next-category predictions of one model, for the classification metrics.

    ``proba`` is (n_events, n_classes) over ``classes``; ``truth`` the same shape, 1 where the category is
    one of the item's; ``user`` the user index of each event (for the bootstrap)."""

    classes: list[str]
    proba: np.ndarray
    truth: np.ndarray
    user: np.ndarray


def _f1_counts(top1: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, k = truth.shape
    pred = np.zeros((n, k), bool)
    pred[np.arange(n), top1] = True
    t = truth.astype(bool)
    return pred & t, pred & ~t, ~pred & t


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[float, float]:
    """(macro, weighted) F1 from per-class counts; weights = support (tp + fn)."""
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    support = tp + fn
    present = support > 0
    macro = float(f1[present].mean()) if present.any() else float("nan")
    weighted = float((f1 * support).sum() / support.sum()) if support.sum() else float("nan")
    return macro, weighted


def _weighted_auc(score: np.ndarray, label: np.ndarray, weight: np.ndarray, order: np.ndarray) -> float:
    """Mann-Whitney AUC with per-example weights (bootstrap counts); ties count one half.
    ``order`` sorts ``score`` ascending (computed once, reused by every resample)."""
    s, y, w = score[order], label[order], weight[order]
    # group equal scores
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(w * y, starts)
    neg = np.add.reduceat(w * (1 - y), starts)
    neg_below = np.cumsum(neg) - neg
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    return float((pos * (neg_below + 0.5 * neg)).sum() / (total_pos * total_neg))


class _Sorted:
    """Sort orders of one prediction set, computed once and shared by all bootstrap resamples."""

    def __init__(self, pred: CategoryPredictions) -> None:
        self.ranked = np.argsort(-pred.proba, axis=1, kind="stable")
        self.by_class = [np.argsort(pred.proba[:, c], kind="stable") for c in range(pred.proba.shape[1])]


def classification_metrics(
    pred: CategoryPredictions, weight: np.ndarray | None = None, _sorted: _Sorted | None = None
) -> dict[str, float]:
    """All classification metrics; ``weight`` (per event) lets the bootstrap reuse this function."""
    p, truth = pred.proba, pred.truth
    w = np.ones(len(p)) if weight is None else np.asarray(weight, dtype=np.float64)
    if len(p) == 0 or w.sum() == 0:
        return dict.fromkeys(CLASS_METRICS, float("nan"))
    srt = _sorted or _Sorted(pred)
    order = srt.ranked
    top1 = order[:, 0]
    hit1 = truth[np.arange(len(p)), top1] > 0
    hit5 = (np.take_along_axis(truth, order[:, :5], axis=1) > 0).any(axis=1)
    tp, fp, fn = (np.asarray(m, np.float64).T @ w for m in _f1_counts(top1, truth))
    macro, weighted = _f1(tp, fp, fn)
    aucs = [_weighted_auc(p[:, c], truth[:, c], w, srt.by_class[c]) for c in range(truth.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    y = truth / np.maximum(truth.sum(axis=1, keepdims=True), 1)
    ll = -(y * np.log(np.maximum(p, 1e-12))).sum(axis=1)
    return {
        "acc@1": float((hit1 * w).sum() / w.sum()),
        "hit@5": float((hit5 * w).sum() / w.sum()),
        "macro_f1": macro,
        "weighted_f1": weighted,
        "auc_macro": float(np.mean(aucs)) if aucs else float("nan"),
        "log_loss": float((ll * w).sum() / w.sum()),
    }


def bootstrap_classification(
    pred: CategoryPredictions, n_users: int, n_boot: int = 200, seed: int = 0
) -> dict[str, Interval]:
    srt = _Sorted(pred)
    point = classification_metrics(pred, None, srt)
    if n_boot == 0:
        return {k: Interval(point[k], float("nan"), float("nan")) for k in CLASS_METRICS}
    boots: dict[str, list[float]] = {k: [] for k in CLASS_METRICS}
    for counts in _resamples(n_users, n_boot, seed):
        m = classification_metrics(pred, counts[pred.user].astype(np.float64), srt)
        for k in CLASS_METRICS:
            boots[k].append(m[k])
    out = {}
    for k in CLASS_METRICS:
        low, high = np.nanpercentile(boots[k], [2.5, 97.5])
        out[k] = Interval(point[k], float(low), float(high))
    return out


def top1_hits(pred: CategoryPredictions) -> np.ndarray:
    """Per event: whether the top-1 category is one of the item's (what acc@1 averages)."""
    top = np.argmax(pred.proba, axis=1)
    return pred.truth[np.arange(len(top)), top] > 0


def paired_accuracy_difference(
    a: CategoryPredictions, b: CategoryPredictions, n_users: int, n_boot: int = 1000, seed: int = 0
) -> Interval:
    """acc@1 of ``a`` minus acc@1 of ``b`` on the same events, with a 95% interval from resampling
    users (both models' events of a resampled user go in together, so what they share cancels out)."""
    diff = top1_hits(a).astype(np.float64) - top1_hits(b)
    if len(diff) == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    per_user = np.bincount(a.user, weights=diff, minlength=n_users)
    events = np.bincount(a.user, minlength=n_users).astype(np.float64)
    w = _resamples(n_users, n_boot, seed)
    boots = (w @ per_user) / np.maximum(w @ events, 1.0)
    low, high = np.percentile(boots, [2.5, 97.5])
    return Interval(float(diff.mean()), float(low), float(high))


def reliability(pred: CategoryPredictions, bins: int = 10) -> dict[str, object]:
    """Calibration of the top-1 prediction: events binned by its probability; per bin the mean
    probability, the mean share of the event's categories that the top category holds, the share of
    events where it was one of them, and the count.

    A probability here is a category's expected *share* of the next item's categories (an item with n
    categories gives each 1/n: what the profile counts, what the head is trained on and what log-loss
    scores), so ``ece``, the count-weighted mean gap between probability and share, is the calibration
    error. ``ece_hit`` compares the probability with being one of them instead: with items of several
    categories a calibrated share sits below that, so it is reported beside ``ece``, not as it."""
    if len(pred.proba) == 0:
        return {"bins": [], "ece": float("nan"), "ece_hit": float("nan")}
    top = np.argmax(pred.proba, axis=1)
    conf = pred.proba[np.arange(len(top)), top]
    hit = top1_hits(pred)
    share = pred.truth[np.arange(len(top)), top] / np.maximum(pred.truth.sum(axis=1), 1)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows, ece, ece_hit = [], 0.0, 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            c, s, h = float(conf[m].mean()), float(share[m].mean()), float(hit[m].mean())
            rows.append([round(c, 6), round(s, 6), round(h, 6), int(m.sum())])
            ece += m.sum() / len(conf) * abs(c - s)
            ece_hit += m.sum() / len(conf) * abs(c - h)
    return {"bins": rows, "ece": round(float(ece), 6), "ece_hit": round(float(ece_hit), 6)}
