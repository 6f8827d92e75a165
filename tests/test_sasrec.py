"""SASRec baseline: it must learn a real sequential signal, be reproducible, and score any history length."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from evaluation.sasrec import (
    SASRec,
    SASRecConfig,
    SASRecFit,
    _smoothed_best_epoch,
    _windows,
    fit_sasrec,
    mask_seen,
    target_ranks,
)

N_ITEMS = 100
# Small model and short windows: the synthetic task needs only the last couple of items, and the whole module
# must train in a few seconds on two cores.
CFG = SASRecConfig(max_len=12, dim=32, n_blocks=2, n_heads=2, dropout=0.1, lr=5e-3, batch_size=32,
                   max_epochs=15, patience=2, time_budget_s=60, seed=3)  # fmt: skip


def _cycle_users(n_users: int, seed: int) -> tuple[list[list[int]], list[int], list[int]]:
    """Users walk one fixed random cycle over all items from a random start; ~10% of steps are a random detour
    after which the walk resumes. The next item is thus a function of the last one or two items, which
    popularity cannot see. Returns (train sequences, validation targets, test targets); the last two steps
    of every walk are clean so the held-out targets are always predictable from the history.

    Walks are shorter than the cycle, so a held-out item is (rare detours aside) not already in the history,
    where it would be masked.
    """
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(N_ITEMS)
    succ = np.empty(N_ITEMS, dtype=np.int64)
    succ[cycle] = np.roll(cycle, -1)
    train, val, test = [], [], []
    for _ in range(n_users):
        length = int(rng.integers(10, 30))
        cur = int(rng.integers(N_ITEMS))
        seq = [cur]
        while len(seq) < length - 2:
            if rng.random() < 0.1:
                seq.append(int(rng.integers(N_ITEMS)))  # detour; the walk continues from ``cur``
            cur = int(succ[cur])
            seq.append(cur)
        val_item = int(succ[cur])
        train.append(seq)
        val.append(val_item)
        test.append(int(succ[val_item]))
    return train, val, test


@pytest.fixture(scope="module")
def cycle_data() -> tuple[list[list[int]], list[int], list[int]]:
    return _cycle_users(400, seed=11)


@pytest.fixture(scope="module")
def fitted(cycle_data: tuple[list[list[int]], list[int], list[int]]) -> tuple[SASRec, SASRecFit, list[str]]:
    train, val, _ = cycle_data
    lines: list[str] = []
    model, fit = fit_sasrec(train, N_ITEMS, train, val, CFG, progress=lines.append)
    return model, fit, lines


def _recall10(scores: np.ndarray, histories: list[list[int]], targets: list[int]) -> float:
    return float((target_ranks(mask_seen(scores, histories), targets) < 10).mean())


def test_learns_next_item_far_above_popularity(cycle_data, fitted) -> None:
    train, val, test = cycle_data
    model, fit, lines = fitted
    hist = [s + [v] for s, v in zip(train, val, strict=True)]

    recall = _recall10(model.score(hist), hist, test)

    counts = np.bincount(np.concatenate(train), minlength=N_ITEMS).astype(np.float32)
    pop_recall = _recall10(np.tile(counts, (len(hist), 1)), hist, test)
    assert recall >= 0.9, (recall, fit, lines)
    assert recall > pop_recall + 0.5, (recall, pop_recall)
    assert fit.best_val_recall10 >= 0.9
    assert 1 <= fit.best_epoch <= fit.epochs <= CFG.max_epochs
    assert fit.stopped_by in {"patience", "max_epochs"}
    assert len(lines) == fit.epochs and "val_recall@10" in lines[0]


def test_same_seed_gives_identical_scores(cycle_data) -> None:
    train, val, _ = cycle_data
    small = replace(CFG, max_epochs=2, patience=10)
    det_before, threads_before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    a, fa = fit_sasrec(train[:150], N_ITEMS, train[:50], val[:50], small)
    b, fb = fit_sasrec(train[:150], N_ITEMS, train[:50], val[:50], small)
    np.testing.assert_array_equal(a.score(train[:60]), b.score(train[:60]))
    assert (fa.best_epoch, fa.best_val_recall10) == (fb.best_epoch, fb.best_val_recall10)
    c, _ = fit_sasrec(train[:150], N_ITEMS, train[:50], val[:50], replace(small, seed=small.seed + 1))
    assert not np.array_equal(a.score(train[:60]), c.score(train[:60]))
    # Process-wide torch settings are restored after training.
    assert torch.are_deterministic_algorithms_enabled() == det_before
    assert torch.get_num_threads() == threads_before


def test_windows_train_every_target_once_with_full_context() -> None:
    rng = np.random.default_rng(0)
    seqs = [np.arange(n, dtype=np.int64) for n in (1, 2, 5, 9, 10, 23, 40)]
    for _ in range(5):  # cut points move every epoch
        seen: list[int] = []
        for inp, tgt in _windows(seqs, 6, rng):
            assert len(inp) == len(tgt) <= 6
            trained = tgt != 0
            # Loss sits on a suffix of the window (the prefix is context only), and every trained target is
            # the input at the next position.
            assert trained[-1] and np.all(np.diff(trained.astype(int)) >= 0)
            np.testing.assert_array_equal(inp[1:][trained[:-1]], tgt[:-1][trained[:-1]])
            assert len(inp) == 6 or inp[0] == 1  # full context unless the window starts the sequence
            seen += [int(t) - 1 for t in tgt if t]
        expected = [t for s in seqs for t in s[1:].tolist()]
        assert sorted(seen) == sorted(expected)


def test_scores_long_and_short_histories(fitted) -> None:
    model, _, _ = fitted
    rng = np.random.default_rng(0)
    histories = [
        [5],
        rng.integers(0, N_ITEMS, size=CFG.max_len * 5).tolist(),  # longer than max_len: only the tail is read
        [],
        [7, 8],
    ]
    scores = model.score(histories)
    assert scores.shape == (len(histories), N_ITEMS) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    # Items before the last max_len are ignored, so prepending to a long history changes nothing.
    np.testing.assert_allclose(model.score([[1, 2, 3, *histories[1]]])[0], scores[1], rtol=1e-5, atol=1e-5)


def test_time_budget_stops_training(cycle_data) -> None:
    train, val, _ = cycle_data
    capped = replace(CFG, time_budget_s=0.0)
    model, fit = fit_sasrec(train, N_ITEMS, train, val, capped)
    assert fit.stopped_by == "time_budget" and fit.epochs == 1
    assert model.score([[1, 2]]).shape == (1, N_ITEMS)


def test_refit_epochs_follow_the_smoothed_validation_curve_not_its_spike() -> None:
    curve = [0.1, 0.5, 0.1, 0.3, 0.35, 0.4, 0.38, 0.37]  # epoch 2 is a lucky spike
    assert _smoothed_best_epoch(curve, 3) == 7
    assert _smoothed_best_epoch(curve, 1) == 2
    assert _smoothed_best_epoch([0.2], 5) == 1


def test_refit_returns_a_model_trained_from_scratch_on_the_refit_sequences(cycle_data) -> None:
    train, val, _ = cycle_data
    # Refit sequences that teach the opposite order: the returned model must follow them, which a model
    # merely continued from (or chosen among) the first run's epochs would not.
    backwards = [s[::-1] for s in train]
    lines: list[str] = []
    model, fit = fit_sasrec(train, N_ITEMS, train, val, CFG, progress=lines.append, refit_seqs=backwards)
    assert fit.refit_epochs == _smoothed_best_epoch(fit.val_curve, CFG.smooth_epochs) >= 1
    assert len(fit.val_curve) == fit.epochs and fit.refit_seconds > 0
    assert sum(line.startswith("refit epoch") for line in lines) == fit.refit_epochs
    hist = [s[:-1] for s in backwards]
    learned = _recall10(model.score(hist), hist, [s[-1] for s in backwards])
    forward = [s[:-1] for s in train]
    other = _recall10(model.score(forward), forward, [s[-1] for s in train])
    assert learned >= 0.8 and other < learned - 0.3, (learned, other)  # the first run's model: >= 0.9
