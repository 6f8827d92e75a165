"""Next-item models in the evaluation harness: ours (the core) and the baselines, one interface.

Each scorer ``learn``s from event batches in event-time order and ``scores`` the whole catalogue for a
user (a float array over ``EventLog.items``). The harness keeps one ``Histories`` for everyone, so a
baseline sees exactly the events our model saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from models.core import InterestCore
from models.events import Event, Item
from models.interest import UserState
from models.ranker import NextItemRanker, mix

Batch = Sequence[tuple[Event, Item]]


class Histories:
    """What every scorer may know: each user's items so far (catalogue indices, in learned order)."""

    def __init__(self, item_index: dict[str, int], n_items: int) -> None:
        self.item_index = item_index
        self.n_items = n_items
        self.of: dict[str, list[int]] = {}
        self.counts = np.zeros(n_items, np.float64)
        self._matrix: sp.csr_matrix | None = None
        self._users: dict[str, int] = {}

    def learn(self, batch: Batch) -> None:
        for event, _ in batch:
            i = self.item_index[event.item_id]
            self.of.setdefault(event.user_id, []).append(i)
            self.counts[i] += 1
        self._matrix = None

    def matrix(self) -> tuple[sp.csr_matrix, dict[str, int]]:
        """Binary user x item matrix of everything learned so far (rebuilt only after new events)."""
        if self._matrix is None:
            users = list(self.of)
            self._users = {u: k for k, u in enumerate(users)}
            rows = np.concatenate([np.full(len(self.of[u]), k) for k, u in enumerate(users)])
            cols = np.concatenate([np.asarray(self.of[u]) for u in users])
            m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), self.n_items))
            m.data[:] = 1.0  # repeated (user, item) pairs count once
            self._matrix = m
        return self._matrix, self._users


class Scorer(Protocol):
    name: str

    def learn(self, batch: Batch) -> None: ...

    def scores(self, user: str) -> np.ndarray: ...


class _FromHistories:
    """A baseline computed from the shared ``Histories`` at scoring time: nothing of its own to learn."""

    def __init__(self, hist: Histories, item_emb: np.ndarray | None = None) -> None:
        self.hist = hist
        self.emb = item_emb if item_emb is not None else np.zeros((hist.n_items, 0), np.float32)

    def learn(self, batch: Batch) -> None:
        pass


class Popularity(_FromHistories):
    """How often each item was acted on so far (all users)."""

    name = "popularity"

    def scores(self, user: str) -> np.ndarray:
        return self.hist.counts.copy()


class LastItemText(_FromHistories):
    """Text nearest neighbours of the user's last item (cosine of encoder embeddings)."""

    name = "last_item"

    def scores(self, user: str) -> np.ndarray:
        seen = self.hist.of.get(user)
        return self.emb @ self.emb[seen[-1]] if seen else np.zeros(len(self.emb), np.float32)


class StaticMean(_FromHistories):
    """Cosine to the plain mean of the user's item embeddings: no decay, no event-type weights."""

    name = "static_mean"

    def scores(self, user: str) -> np.ndarray:
        seen = self.hist.of.get(user)
        if not seen:
            return np.zeros(len(self.emb), np.float32)
        mean = self.emb[seen].mean(axis=0)
        return self.emb @ (mean / max(float(np.linalg.norm(mean)), 1e-12))


class ItemKNN(_FromHistories):
    """Item-item co-occurrence kNN on ids only: score(j) = sum over the user's items i of cos(i, j),
    cosine of the items' user columns. Two sparse products, so no items x items matrix is built."""

    name = "item_knn"

    def scores(self, user: str) -> np.ndarray:
        m, users = self.hist.matrix()
        n = np.asarray(m.sum(axis=0)).ravel()
        inv = np.divide(1.0, np.sqrt(n), out=np.zeros_like(n), where=n > 0)
        k = users.get(user)
        if k is None:
            return np.zeros(self.hist.n_items)
        x = m.getrow(k).multiply(inv).tocsr()  # the user's items, 1/sqrt(n_i)
        a = m @ x.T  # per other user: sum over shared items
        return np.asarray((m.T @ a).todense()).ravel() * inv


class CoreModel:
    """The product's model: the same ``InterestCore.apply`` the worker runs, plus its next-item ranker.

    ``use_ranker=False`` scores by the interest vector alone (cosine to item text): the article's method
    taken literally, kept as a baseline."""

    def __init__(
        self,
        name: str,
        core: InterestCore,
        items: list[str],
        item_emb: np.ndarray,
        embeddings: dict[str, np.ndarray],
        use_ranker: bool = True,
    ) -> None:
        self.name = name
        self.core = core
        self.item_emb = item_emb
        self.embeddings = embeddings
        self.states: dict[str, UserState] = {}
        self.head = core.new_head()
        self.ranker = NextItemRanker(core.config, core.dim) if use_ranker else None
        if self.ranker is not None:
            self.ranker.add_items(zip(items, item_emb, strict=True))

    def learn(self, batch: Batch) -> None:
        out = self.core.apply(batch, self.embeddings, self.states, self.head, self.ranker)
        self.states.update(out.states)

    def _state(self, user: str) -> UserState:
        state = self.states.get(user)
        return state if state is not None else self.core.new_state()

    def scores(self, user: str) -> np.ndarray:
        """The list as a worker serves it: the ranker's scores, the user's recent items left out, the
        fresh places filled (``NextItemRanker.ranked``)."""
        state = self._state(user)
        if self.ranker is None:
            return self.item_emb @ state.embedding()
        return self.ranker.scores(state.recent_items, state.embedding(), exclude=state.recent_items)

    def mix_scores(self, user: str) -> np.ndarray:
        """The ranker's own scores, before the list is made (what ``Mix`` mixes)."""
        state = self._state(user)
        if self.ranker is None:
            return self.item_emb @ state.embedding()
        items, values = self.ranker.candidates(state.recent_items, state.embedding())
        out = np.full(self.ranker.n_items, -np.inf)
        out[items] = values
        return out

    def place_fresh(self, user: str, scores: np.ndarray) -> np.ndarray:
        """``scores`` over the catalogue made into a served list the way ``scores`` is (the fresh places)."""
        if self.ranker is None:
            return scores
        recent = self._state(user).recent_items
        return self.ranker.place_fresh(np.arange(len(scores)), scores, recent, exclude=recent)[1]


def with_config(core: InterestCore, **changes: object) -> InterestCore:
    """A core sharing the encoder (and its cache) but with some hyperparameters changed."""
    return InterestCore(replace(core.config, **changes), core.encoder)


class SASRecScorer:
    """Offline SASRec (``evaluation.sasrec``), trained once on the training split: the strong reference.

    Validation picks the epoch count (early stopping on validation Recall@10, smoothed), then it is
    retrained from scratch on training + validation events for that many epochs; the test history
    includes the validation item, as for every other model."""

    name = "sasrec"

    def __init__(
        self,
        hist: Histories,
        budget_s: float,
        max_epochs: int,
        seed: int,
        log: Callable[[str], None],
        info: dict[str, Any],
        device: str = "cpu",
    ) -> None:
        self.hist = hist
        self.budget_s, self.max_epochs, self.seed, self.device = budget_s, max_epochs, seed, device
        self.log, self.info = log, info
        self.model: Any = None

    def fit(self, hist: Histories, val: Batch) -> None:
        from evaluation.sasrec import SASRecConfig, fit_sasrec

        users = list(hist.of)
        # patience 10: the loss is still falling when 5 epochs without a better validation score stop it
        config = SASRecConfig(
            time_budget_s=self.budget_s,
            max_epochs=self.max_epochs,
            patience=10,
            seed=self.seed,
            device=self.device,
        )
        val_users = [e.user_id for e, _ in val]
        val_items = [hist.item_index[e.item_id] for e, _ in val]
        # Then retrained on training + validation events (as many epochs as validation chose): the
        # online models have learned the validation events before the test, so it gets them too.
        appended = dict(zip(val_users, val_items, strict=True))
        refit = [hist.of[u] + ([appended[u]] if u in appended else []) for u in users]
        self.model, fit = fit_sasrec(
            [hist.of[u] for u in users],
            hist.n_items,
            [hist.of.get(u, []) for u in val_users],
            val_items,
            config,
            progress=self.log,
            refit_seqs=refit,
        )
        self.info.update(asdict(fit), config=asdict(config))

    def learn(self, batch: Batch) -> None:  # never called: offline, its parameters stay as fitted
        pass

    def scores(self, user: str) -> np.ndarray:
        return self.model.score([self.hist.of.get(user, [])])[0]


class OnlineSequence:
    """The sequential model of ``models.sequence``, learned online from the same batches as the core."""

    def __init__(
        self, name: str, items: list[str], item_emb: np.ndarray, config: Any = None, sync_every: int = 0
    ) -> None:
        """``sync_every`` > 0: score with a copy of the weights refreshed every that many learned events
        (and the users' current windows), as a worker serves the trainer's snapshots."""
        from models.sequence import SequenceModel

        self.name = name
        self.model = SequenceModel(item_emb.shape[1], config)
        self.model.add_items(list(zip(items, item_emb, strict=True)))  # rows in catalogue order
        self.sync_every = sync_every
        self.served = self.model.served_copy() if sync_every else self.model
        self._since_sync = 0
        self.learn_seconds = 0.0  # training cost (wall time in ``learn``), for the report

    def learn(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        self.model.learn(batch)
        self.learn_seconds += time.perf_counter() - t0
        self._since_sync += len(batch)
        if self.sync_every and self._since_sync >= self.sync_every:
            self.served, self._since_sync = self.model.served_copy(), 0

    def scores(self, user: str) -> np.ndarray:
        return self.served.scores(user)


class Mix:
    """A weighted sum of two scorers' standardised scores (each z-scored over the catalogue per user, so
    their scales do not matter): ``models.ranker.mix``, the formula a worker serves with ``a`` the
    sequential model and ``b`` the ranker. The parts learn on their own (they are scorers in the same
    run)."""

    def __init__(self, name: str, a: Scorer, b: Scorer, weight_a: float) -> None:
        self.name, self.a, self.b, self.weight_a = name, a, b, weight_a

    def learn(self, batch: Batch) -> None:
        pass

    @staticmethod
    def _scores(s: Scorer, user: str) -> np.ndarray:
        mix_scores = getattr(s, "mix_scores", None)
        return mix_scores(user) if mix_scores is not None else s.scores(user)

    def scores(self, user: str) -> np.ndarray:
        """The mixed scores, made into a list as the product's ranker makes its own (its fresh places), so
        a mix and the default are judged on the same kind of list."""
        b = self._scores(self.b, user)
        ranked = np.flatnonzero(np.isfinite(b))
        mixed = mix(ranked, b[ranked], self._scores(self.a, user), self.weight_a)[1]
        for part in (self.a, self.b):
            if isinstance(part, CoreModel) and part.ranker is not None:
                return part.place_fresh(user, mixed)
        return mixed
