"""The two protocols: prequential (how the live system is judged) and leave-one-out by time.

Prequential: every event, in event-time order, is first predicted from the state before it and then
learned, through ``InterestCore.apply`` in micro-batches exactly as the worker calls it. Category
baselines see the same events in the same order.

Leave-one-out: per user, events in ``event_order`` (time, then event id); the last is the test item,
the one before the validation item, the rest training (users with fewer than 3 events are training
only). Online models learn the training events once, in event-time order; the offline SASRec trains on
the same training sequences. Then every model ranks each user's validation item, all models learn the
validation events, and every model ranks each user's test item. Items the user had before the target
are masked.

Leave-one-out with new items (``new_items`` > 0): the same, but a random share of the catalogue is new:
none of its training events is learned (they are dropped), while the items stay in the catalogue with
their text, as an item published but not yet touched is. Test events on them measure what a model makes
of an item it has never seen. MovieLens's own never-seen test items cannot: its catalogue is the rated
movies, so an item seen only at test time has one rating in the whole log.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluation.data import EventLog, held_out
from evaluation.metrics import CategoryPredictions, rank_metrics
from evaluation.scorers import Batch, Histories, Scorer
from models.core import InterestCore
from models.events import Event, Item, event_order
from models.head import SoftmaxHead, blend_profiles, softmax_rows
from models.sharding import partition_for

Progress = Callable[[int], None]  # called with the number of events just processed


def batches(events: Sequence[tuple[Event, Item]], size: int) -> Iterator[Batch]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


# -- prequential ---------------------------------------------------------------------------------
@dataclass
class PrequentialResult:
    models: dict[str, CategoryPredictions]
    cold: np.ndarray  # per scored event: the item's first interaction in the log
    n_users: int


def _category_baselines(applied: list[tuple[Event, Item]], classes: list[str]) -> dict[str, np.ndarray]:
    """Popularity (all users), the user's most frequent and the user's last category, test-then-train."""
    col = {c: k for k, c in enumerate(classes)}
    k = len(classes)
    out = {name: np.zeros((len(applied), k)) for name in ("popularity", "most_frequent", "last_category")}
    glob = np.zeros(k)
    per_user: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(k))
    last: dict[str, np.ndarray] = {}
    uniform = np.full(k, 1.0 / k)

    def dist(v: np.ndarray) -> np.ndarray:
        # A small share of the global prior breaks ties and keeps log-loss finite for unseen categories.
        total = v.sum()
        g = glob / glob.sum() if glob.sum() else uniform
        return 0.99 * (v / total) + 0.01 * g if total else g

    for n, (event, item) in enumerate(applied):
        y = np.zeros(k)
        y[[col[c] for c in item.categories]] = 1.0 / len(item.categories)
        out["popularity"][n] = dist(glob)
        out["most_frequent"][n] = dist(per_user[event.user_id])
        out["last_category"][n] = dist(last.get(event.user_id, np.zeros(k)))
        glob += y
        per_user[event.user_id] += y
        last[event.user_id] = y
    return out


def replay_partitioned(
    core: InterestCore,
    events: list[tuple[Event, Item]],
    embeddings: dict[str, np.ndarray],
    partitions: int,
    sync_every: int,
    batch_size: int = 256,
) -> tuple[dict[str, np.ndarray], list[SoftmaxHead]]:
    """The head as the worker trains it: one replica per partition (users split by Kafka's partitioner),
    each micro-batch applied partition by partition, and every ``sync_every`` events (0: never) each
    replica folds in the others (``SoftmaxHead.fold_in``, as ``streams/replicas.py`` does on a timer).

    Returns each applied event's prediction before it, by event id, as (classes of its replica at that
    time, probabilities), and the replicas."""
    heads = [core.new_head() for _ in range(partitions)]
    states: dict = {}
    predictions: dict[str, tuple[list[str], np.ndarray]] = {}
    since_sync = 0
    for batch in batches(events, batch_size):
        groups: dict[int, list[tuple[Event, Item]]] = defaultdict(list)
        for event, item in batch:
            groups[partition_for(event.user_id.encode(), partitions)].append((event, item))
        for p, group in groups.items():
            out = core.apply(group, embeddings, states, heads[p])
            states.update(out.states)
            for (event, _), pred in zip(out.applied, out.predictions, strict=True):
                predictions[event.event_id] = (heads[p].classes[: len(pred)], pred)
        since_sync += len(batch)
        if sync_every and since_sync >= sync_every:
            published = [SoftmaxHead.from_bytes(h.to_bytes()) for h in heads]  # what each one last wrote
            for p, head in enumerate(heads):
                head.fold_in([h for q, h in enumerate(published) if q != p])
            since_sync = 0
    return predictions, heads


class LaggedHead(SoftmaxHead):
    """A head that learns from every event but predicts with its weights as they were at the last
    multiple of ``lag`` events.

    The MovieLens replay is one user's burst after another (95% of consecutive events are the same
    user's), so a head that has just learned from a user's previous events predicts their next one from
    weights tuned to that very user. A worker of a busy service sees a user's events thousands of other
    users' events apart; scoring with weights ``lag`` events old takes the replay's order out of the
    figure."""

    def __init__(self, head: SoftmaxHead, lag: int) -> None:
        super().__init__(head.n_features, head.learning_rate, head.l2, head.max_classes)
        self.lag = lag
        self._seen = 0
        self._snapshot = (self.W.copy(), self.b.copy())

    def test_then_train_many(
        self,
        X: np.ndarray,
        categories: Sequence[tuple[str, ...] | list[str]],
        profiles: Sequence[Mapping[str, float]] = (),
        blend: float | Sequence[float] = 0.0,
    ) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        start = 0
        while start < len(X):
            if self._seen % self.lag == 0:
                self._snapshot = (self.W.copy(), self.b.copy())
            end = min(len(X), start + self.lag - self._seen % self.lag)
            W, b = self._snapshot
            part = blend if np.isscalar(blend) else blend[start:end]  # one share, or one per row
            if len(W):
                P = softmax_rows(X[start:end], W, b)
                rows = profiles[start:end] if profiles else ()
                out += list(blend_profiles(P, [len(W)] * len(P), self.index, rows, part))
            else:
                out += [np.zeros(0, np.float32)] * (end - start)
            super().test_then_train_many(X[start:end], categories[start:end], profiles[start:end], part)
            self._seen += end - start
            start = end
        return out


def run_prequential(
    log: EventLog,
    cores: dict[str, InterestCore],
    embeddings: dict[str, np.ndarray],
    batch_size: int = 256,
    progress: Progress | None = None,
    deployed: dict[str, tuple[int, int]] | None = None,
    lagged: dict[str, tuple[InterestCore, int]] | None = None,
) -> PrequentialResult:
    """``cores``: named configurations of the core; the first is the default model. ``deployed``: more
    rows for the default core trained as the worker trains it, name -> (partitions, sync_every events):
    ``replay_partitioned``. ``lagged``: more rows, name -> (core, lag): the core with a ``LaggedHead``."""
    classes = sorted({c for _, item in log.events for c in item.categories})
    col = {c: k for k, c in enumerate(classes)}
    users = {u: k for k, u in enumerate(log.users)}
    seen: set[str] = set()
    models: dict[str, CategoryPredictions] = {}
    applied_ref: list[tuple[Event, Item]] | None = None
    runs = [(name, core, core.new_head()) for name, core in cores.items()]
    runs += [(name, core, LaggedHead(core.new_head(), lag)) for name, (core, lag) in (lagged or {}).items()]
    for name, core, head in runs:
        states: dict = {}
        applied: list[tuple[Event, Item]] = []
        preds: list[np.ndarray] = []
        for batch in batches(log.events, batch_size):
            out = core.apply(batch, embeddings, states, head)
            states.update(out.states)
            applied += out.applied
            preds += out.predictions
            if progress is not None:
                progress(len(batch))
        keep = [n for n, (_, item) in enumerate(applied) if item.categories]
        proba = np.zeros((len(keep), len(classes)))
        head_cols = np.asarray([col[c] for c in head.classes], dtype=np.int64)
        for row, n in enumerate(keep):
            p = preds[n]
            proba[row, head_cols[: len(p)]] = p
        if applied_ref is None:
            applied_ref = [applied[n] for n in keep]
        models[name] = CategoryPredictions(classes, proba, np.zeros(0), np.zeros(0, np.int64))
    assert applied_ref is not None
    default = next(iter(cores.values()))
    for name, (partitions, sync_every) in (deployed or {}).items():
        by_id, _ = replay_partitioned(default, log.events, embeddings, partitions, sync_every, batch_size)
        proba = np.zeros((len(applied_ref), len(classes)))
        for row, (event, _) in enumerate(applied_ref):
            names, p = by_id[event.event_id]
            proba[row, [col[c] for c in names]] = p
        models[name] = CategoryPredictions(classes, proba, np.zeros(0), np.zeros(0, np.int64))
        if progress is not None:
            progress(len(log.events))
    truth = np.zeros((len(applied_ref), len(classes)))
    cold = np.zeros(len(applied_ref), bool)
    for row, (event, item) in enumerate(applied_ref):
        truth[row, [col[c] for c in item.categories]] = 1.0
        cold[row] = event.item_id not in seen
        seen.add(event.item_id)
    user = np.asarray([users[e.user_id] for e, _ in applied_ref], dtype=np.int64)
    for pred in models.values():
        pred.truth, pred.user = truth, user
    for name, proba in _category_baselines(applied_ref, classes).items():
        models[name] = CategoryPredictions(classes, proba, truth, user)
    return PrequentialResult(models, cold, len(users))


# -- leave-one-out -------------------------------------------------------------------------------
@dataclass
class LooSplit:
    train: list[tuple[Event, Item]]  # event-time order
    val: list[tuple[Event, Item]]  # one per user with >= 3 events, event-time order
    test: list[tuple[Event, Item]]
    new_items: frozenset[str] = frozenset()  # items none of whose training events is learned
    dropped: int = 0  # training events left out because their item is new


def loo_split(log: EventLog, new_items: float = 0.0, seed: int = 0) -> LooSplit:
    """``new_items``: the share of the catalogue (drawn with ``seed``) whose training events are dropped."""
    if not 0.0 <= new_items < 1.0:
        raise ValueError(f"new_items is a share of the catalogue in [0, 1), not {new_items}")
    pairs = held_out(log.events)
    held = {id(p) for two in pairs for p in two}
    new = frozenset(random.Random(seed).sample(log.items, round(new_items * len(log.items))))
    train = [p for p in log.events if id(p) not in held]
    kept = [p for p in train if p[0].item_id not in new]
    by_time = lambda p: event_order(p[0])  # noqa: E731
    val = sorted((v for v, _ in pairs), key=by_time)
    return LooSplit(kept, val, sorted((t for _, t in pairs), key=by_time), new, len(train) - len(kept))


def tied_test_events(split: LooSplit) -> int:
    """Test events with the same timestamp as the user's validation event: their order (and so which
    one is the test item) comes from the tie-break (``event_order``), not from time."""
    val_ts = {e.user_id: e.ts for e, _ in split.val}
    return sum(e.ts == val_ts[e.user_id] for e, _ in split.test)


@dataclass
class LooResult:
    val: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # model -> per-user (val order)
    test: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # model -> per-user (test order)
    learned: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per test event: events
    # on its item that the models learned before the test (0: a cold item, never seen)

    curve: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)  # model -> per training
    # batch: (events learned before it, events scored, sum of their Recall@10): learning speed

    @property
    def cold(self) -> np.ndarray:
        return self.learned == 0


def never_learned(hist: Histories) -> np.ndarray:
    """(n_items,) True for the catalogue items no learned event has touched yet."""
    return hist.counts == 0


def _rank_all(
    scorers: Sequence[Scorer],
    targets: Sequence[tuple[Event, Item]],
    hist: Histories,
    pool: np.ndarray | None = None,
) -> dict[str, list[dict[str, float]]]:
    """Rank metrics per target. ``pool``: items never learned; a target among them is also ranked among
    them alone (``new_items_recall@10``): how well a model orders the items it has no events for, apart
    from whether it dares to put one above the items it knows."""
    out: dict[str, list[dict[str, float]]] = {s.name: [] for s in scorers}
    others = None if pool is None else np.flatnonzero(~pool)
    for event, _ in targets:
        target = hist.item_index[event.item_id]
        masked = hist.of.get(event.user_id, [])
        new = others is not None and pool[target]
        for s in scorers:
            scores = s.scores(event.user_id)
            m = rank_metrics(scores, target, masked)
            if new:
                m["new_items_recall@10"] = rank_metrics(scores, target, others)["recall@10"]
            out[s.name].append(m)
    return out


def run_loo(
    log: EventLog,
    make_scorers: Callable[[Histories], list[Scorer]],
    batch_size: int = 256,
    progress: Progress | None = None,
    split: LooSplit | None = None,
    curve_models: Sequence[str] = (),
    curve_sample: int = 16,
) -> LooResult:
    """``curve_models``: online models whose learning curve to record while they learn the training
    events: before each batch is learned, its first ``curve_sample`` events of users with a history are
    ranked (test-then-train, full ranking, the user's earlier items masked)."""
    split = split or loo_split(log)
    if not split.test:
        raise ValueError("leave-one-out needs users with at least 3 events; this log has none")
    hist = Histories(log.item_index, len(log.items))
    scorers = make_scorers(hist)
    # A scorer with ``fit(hist, val)`` is offline (SASRec): trained once, on the training split.
    online = [s for s in scorers if not hasattr(s, "fit")]
    result = LooResult()
    traced = [s for s in online if s.name in curve_models]
    learned_so_far = 0
    for batch in batches(split.train, batch_size):
        if traced:
            probe = [pair for pair in batch if pair[0].user_id in hist.of][:curve_sample]
            for s in traced:
                got = _rank_all([s], probe, hist)[s.name]
                result.curve.setdefault(s.name, []).append(
                    (learned_so_far, len(got), sum(m["recall@10"] for m in got))
                )
        learned_so_far += len(batch)
        hist.learn(batch)
        for s in online:
            s.learn(batch)
        if progress is not None:
            progress(len(batch))
    for s in scorers:
        if hasattr(s, "fit"):
            s.fit(hist, split.val)
    result.val = _rank_all(scorers, split.val, hist, never_learned(hist))
    for batch in batches(split.val, batch_size):
        hist.learn(batch)
        for s in online:
            s.learn(batch)
    result.test = _rank_all(scorers, split.test, hist, never_learned(hist))
    test_items = [hist.item_index[e.item_id] for e, _ in split.test]
    result.learned = hist.counts[test_items].astype(np.int64)
    return result
