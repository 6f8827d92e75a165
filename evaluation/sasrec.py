"""SASRec (Kang & McAuley, 2018) as an offline baseline for the leave-one-out harness.

The live service builds interest embeddings from text; to know whether that is any good we need a strong,
well-understood sequential recommender scored on exactly the same split. SASRec is that reference: a causal
transformer over the item history that predicts the next item. This implementation is self-contained
(torch + numpy only), deterministic for a given seed, and trains with full cross-entropy over the whole
catalogue, which is the setting in which SASRec's published numbers are usually reported.

Item ids seen by callers are ``0..n_items-1``. Internally every id is shifted by one so that ``0`` can be
the padding token; callers never see the shift.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from models.sequence import CausalBlock, causal_mask

__all__ = ["SASRec", "SASRecConfig", "SASRecFit", "fit_sasrec", "mask_seen", "target_ranks"]

_PAD = 0
# Feed-forward width as a multiple of ``dim``; 4x is the usual transformer ratio (RecBole uses 256 for 64).
_FFN_MULT = 4
# Histories scored per forward pass in ``score``: bounds the (batch, n_items) score matrix in memory.
_SCORE_BATCH = 256


@dataclass(frozen=True)
class SASRecConfig:
    """Hyper-parameters. Defaults are the ones tuned on MovieLens ml-latest-small on a 2-core CPU."""

    max_len: int = 200  # last N items of a history fed to the model
    dim: int = 64
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    # Tuned on ml-latest-small under a 10-minute CPU budget: (lr 1e-3, 128 windows) gives only ~8 steps per
    # epoch and learns too slowly; (5e-3, 8) is the best tried; lr 1e-2 is worse (noisier, stops early).
    lr: float = 5e-3
    batch_size: int = 8  # training windows (sub-sequences of <= max_len items, ~800 targets) per Adam step
    max_epochs: int = 200
    patience: int = 5  # epochs without validation improvement before stopping
    time_budget_s: float = 600  # stop training after this wall time (report that it was capped)
    smooth_epochs: int = 5  # the epoch count for a refit: the best centred mean of this many epochs' scores
    seed: int = 0
    # "cuda" trains and scores on a GPU (``benchmarks/sasrec_yardstick.py``: the same recipe with no time
    # budget, to see where the budget-capped CPU run would have ended); results differ from the CPU's in
    # the last bits, and determinism there needs CUBLAS_WORKSPACE_CONFIG set before CUDA starts.
    device: str = "cpu"


@dataclass
class SASRecFit:
    """How training went; the harness prints it next to the metrics so a capped run is never mistaken
    for a converged one."""

    epochs: int
    best_epoch: int  # 1-based epoch whose weights the returned model carries
    best_val_recall10: float
    train_seconds: float
    stopped_by: str  # "patience" | "time_budget" | "max_epochs"
    refit_epochs: int = 0  # > 0: the returned model was retrained from scratch on training + validation
    refit_seconds: float = 0.0
    val_curve: list[float] = field(default_factory=list)  # validation Recall@10 after each epoch


class _Net(nn.Module):
    """Item + position embeddings, causal blocks, final LN; output is scored against the item table (tied)."""

    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.max_len = cfg.max_len
        self.item_emb = nn.Embedding(n_items + 1, cfg.dim, padding_idx=_PAD)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        blocks = (CausalBlock(cfg.dim, cfg.n_heads, cfg.dropout, _FFN_MULT) for _ in range(cfg.n_blocks))
        self.blocks = nn.ModuleList(blocks)
        self.ln = nn.LayerNorm(cfg.dim)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # Small normal init (as in BERT/RecBole): with tied output embeddings, large initial item vectors make
        # the first full-softmax steps very peaked and slow training down.
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: (B, T) shifted ids, left-padded with 0, T <= max_len. Returns hidden states (B, T, dim).

        Positions are counted so that the most recent item always sits at ``max_len - 1``; a batch padded to
        its own longest row therefore sees the same positions as if padded to ``max_len``.
        """
        b, t = seq.shape
        real = seq != _PAD
        pos = torch.arange(self.max_len - t, self.max_len, device=seq.device)
        x = (self.item_emb(seq) + self.pos_emb(pos)) * real.unsqueeze(-1)
        x = self.drop(x)
        allowed = causal_mask(real)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln(x)

    def item_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every real item (padding column dropped) for hidden states ``h`` (..., dim)."""
        return h @ self.item_emb.weight[1:].T


def _left_pad(rows: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    width = width if width is not None else max(len(r) for r in rows)
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            out[i, width - len(r) :] = r
    return out


class SASRec:
    """A trained SASRec. Stateless scoring: each call encodes the given histories from scratch."""

    def __init__(self, net: _Net, n_items: int, max_len: int) -> None:
        self._net = net
        self.device = next(net.parameters()).device
        self.n_items = n_items
        self.max_len = max_len

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores (float32, ``(len(histories), n_items)``) for the item that follows each history.

        Only the last ``max_len`` items of a history are read, because that is what the model was trained on.
        An empty history is scored from the padding token alone (a history-independent guess, not an error).
        Seen items are *not* masked here: whether to exclude them is the evaluation protocol's decision, see
        ``mask_seen``.
        """
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        was_training = self._net.training
        self._net.eval()
        try:
            with torch.no_grad():
                for lo in range(0, len(histories), _SCORE_BATCH):
                    chunk = histories[lo : lo + _SCORE_BATCH]
                    rows = [np.asarray(h[-self.max_len :], dtype=np.int64) + 1 for h in chunk]
                    seq = torch.from_numpy(_left_pad(rows, max(1, max(len(r) for r in rows))))
                    h = self._net(seq.to(self.device))[:, -1]
                    out[lo : lo + len(chunk)] = self._net.item_logits(h).cpu().numpy()
        finally:
            self._net.train(was_training)
        return out


def mask_seen(scores: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """Set (in place) the score of every item already in a history to -inf and return ``scores``.

    This is the standard leave-one-out protocol: a recommender is not credited for re-suggesting what the user
    already consumed.
    """
    for i, h in enumerate(histories):
        if len(h):
            scores[i, np.asarray(h, dtype=np.int64)] = -np.inf
    return scores


def target_ranks(scores: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """0-based rank of each target among all items (number of items scored strictly higher).

    Counting strictly-higher items means ties are resolved in the target's favour; with float scores from a
    trained model ties are practically absent, so this does not inflate the metrics.
    """
    t = np.asarray(targets, dtype=np.int64)
    own = scores[np.arange(len(t)), t]
    return (scores > own[:, None]).sum(axis=1)


def _windows(
    seqs: Sequence[np.ndarray], max_len: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut every training sequence into (input, target) windows of at most ``max_len`` positions.

    Every next-item target of every sequence is trained exactly once per epoch, and each target sees up to
    ``max_len`` items of context: a window ending at target ``b`` takes the ``max_len`` inputs before it, but
    only the targets after the previous cut carry loss (others are set to padding = ignored). The cut points
    move by a random offset each epoch so a target is not always at the same distance from a cut.
    """
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for s in seqs:
        m = len(s) - 1  # number of (input, target) pairs
        if m < 1:
            continue
        if m <= max_len:
            ends = [0, m]
        else:
            r = int(rng.integers(0, max_len))
            ends = sorted({0, m, *range(m - r, 0, -max_len)})
        for a, b in zip(ends[:-1], ends[1:], strict=True):
            lo = max(0, b - max_len)
            inp = s[lo:b] + 1
            tgt = s[lo + 1 : b + 1] + 1
            tgt[: a - lo] = _PAD  # context only: these targets were (or will be) trained in another window
            out.append((inp, tgt))
    return out


def _batches(
    windows: list[tuple[np.ndarray, np.ndarray]], batch_size: int, rng: np.random.Generator, device: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = rng.permutation(len(windows))
    for lo in range(0, len(order), batch_size):
        picked = [windows[i] for i in order[lo : lo + batch_size]]
        inp = _left_pad([w[0] for w in picked])
        tgt = _left_pad([w[1] for w in picked])
        yield torch.from_numpy(inp).to(device), torch.from_numpy(tgt).to(device)


def _val_recall10(model: SASRec, histories: Sequence[Sequence[int]], targets: Sequence[int]) -> float:
    if not len(targets):
        return 0.0
    ranks = target_ranks(mask_seen(model.score(histories), histories), targets)
    return float((ranks < 10).mean())


def fit_sasrec(
    train_seqs: Sequence[Sequence[int]],
    n_items: int,
    val_histories: Sequence[Sequence[int]],
    val_targets: Sequence[int],
    config: SASRecConfig = SASRecConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    progress: Callable[[str], None] | None = None,
    refit_seqs: Sequence[Sequence[int]] | None = None,
) -> tuple[SASRec, SASRecFit]:
    """Train SASRec on ``train_seqs`` (chronological item ids per user); return the best-on-validation model.

    Loss: next-item cross-entropy over the full catalogue at every position of every training sequence.
    After each epoch, validation Recall@10 (full ranking, history items masked) picks the weights to keep and
    drives early stopping. Deterministic for a given input and ``config.seed``: global RNG state, the
    deterministic-algorithms flag and the thread count are set only for the duration of the call and restored.

    ``refit_seqs`` (the training sequences with each user's validation event appended): then a fresh model
    is trained on them for the epoch count validation chose, and returned instead. Why: in leave-one-out
    the validation event is the user's most recent one before the test; a model that never trained on it
    sees, at test time, a history ending in an item at a position it never learned from. Every online
    model learns the validation events before the test; this gives the offline model the same information.
    The count is the best *smoothed* validation score (``smooth_epochs``), because the single best epoch of
    a noisy curve is a biased pick; validation scores the refit model cannot have (it saw those events).
    """
    if len(val_histories) != len(val_targets):
        raise ValueError("val_histories and val_targets differ in length")
    seqs = [np.asarray(s, dtype=np.int64) for s in train_seqs]
    for s in seqs:
        if len(s) and (s.min() < 0 or s.max() >= n_items):
            raise ValueError(f"item id out of range 0..{n_items - 1}")

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(2)
    # On a GPU a few kernels have no deterministic variant: warn there rather than stop the run.
    torch.use_deterministic_algorithms(True, warn_only=config.device != "cpu")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model, fit = _train(seqs, n_items, val_histories, val_targets, config, progress)
        if refit_seqs is None:
            return model, fit
        epochs = _smoothed_best_epoch(fit.val_curve, config.smooth_epochs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            t0 = time.perf_counter()
            again = [np.asarray(s, dtype=np.int64) for s in refit_seqs]
            fixed = replace(config, max_epochs=epochs, time_budget_s=math.inf, patience=epochs + 1)
            model, _ = _train(again, n_items, [], [], fixed, progress, prefix="refit ")
        fit.refit_epochs, fit.refit_seconds = epochs, time.perf_counter() - t0
        return model, fit
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_det_warn)
        torch.set_num_threads(prev_threads)


def _smoothed_best_epoch(curve: Sequence[float], window: int) -> int:
    """1-based epoch with the best mean validation score over a centred window of ``window`` epochs
    (shrunk at the ends of the curve); the earliest on ties."""
    half = window // 2
    means = [float(np.mean(curve[max(0, k - half) : k + half + 1])) for k in range(len(curve))]
    return int(np.argmax(means)) + 1 if means else 1


def _train(
    seqs: list[np.ndarray],
    n_items: int,
    val_histories: Sequence[Sequence[int]],
    val_targets: Sequence[int],
    cfg: SASRecConfig,
    progress: Callable[[str], None] | None,
    prefix: str = "",
) -> tuple[SASRec, SASRecFit]:
    """Epochs until patience, the time budget or ``max_epochs``; with no validation targets, exactly
    ``max_epochs`` and the last epoch's weights."""
    rng = np.random.default_rng(cfg.seed)
    net = _Net(n_items, cfg).to(cfg.device)
    model = SASRec(net, n_items, cfg.max_len)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)

    start = time.perf_counter()
    best_state = copy.deepcopy(net.state_dict())
    best_recall, best_epoch, since_best = -1.0, 0, 0
    stopped_by, epoch = "max_epochs", 0
    curve: list[float] = []
    while epoch < cfg.max_epochs:
        epoch += 1
        t0 = time.perf_counter()
        net.train()
        loss_sum, n_targets, out_of_time = 0.0, 0, False
        for inp, tgt in _batches(_windows(seqs, cfg.max_len, rng), cfg.batch_size, rng, cfg.device):
            keep = tgt != _PAD
            # Score only positions that carry a target: the (positions x n_items) logit matrix dominates
            # memory and time, and padded / context-only positions would be thrown away anyway.
            logits = net.item_logits(net(inp)[keep])
            loss = nnf.cross_entropy(logits, tgt[keep] - 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            k = int(keep.sum())
            loss_sum += float(loss.detach()) * k
            n_targets += k
            if time.perf_counter() - start > cfg.time_budget_s:
                out_of_time = True
                break
        recall = _val_recall10(model, val_histories, val_targets)
        curve.append(recall)
        secs = time.perf_counter() - t0
        if progress is not None:
            progress(
                f"{prefix}epoch {epoch:3d}  loss {loss_sum / max(n_targets, 1):.4f}  "
                f"val_recall@10 {recall:.4f}  {secs:.1f}s"
                + ("  (partial: time budget)" if out_of_time else "")
            )
        if recall > best_recall or not len(val_targets):
            best_recall, best_epoch, since_best = recall, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            since_best += 1
        if out_of_time:
            stopped_by = "time_budget"
            break
        if since_best >= cfg.patience:
            stopped_by = "patience"
            break
        if math.isnan(loss_sum):
            raise FloatingPointError(f"training loss became NaN in epoch {epoch}")

    net.load_state_dict(best_state)
    net.eval()
    fit = SASRecFit(
        epochs=epoch,
        best_epoch=best_epoch,
        best_val_recall10=max(best_recall, 0.0),
        train_seconds=time.perf_counter() - start,
        stopped_by=stopped_by,
        val_curve=curve,
    )
    return model, fit
