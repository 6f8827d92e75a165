"""How far a mix with the counting ranker can go, and how large a lead leave-one-out intervals can show.

Issue 8 asks the served list to beat the counting ranker with non-overlapping 95% intervals. Leave-one-out
has one test event per user (610 on MovieLens), so this script answers two questions in one run:

1. **What lead would separate the intervals?** The smallest number of test hits whose interval (the same
   user bootstrap as ``evaluate``) starts above the ranker's: printed as Recall@10 and as a lift.
2. **What do strong mixes reach?** The ranker mixed with the online sequence model (what workers serve),
   and with an offline SASRec trained to convergence (``SASRecScorer``: early stopping on validation,
   then a refit on training + validation events). The offline model is the yardstick the issue names; a
   mix with it shows what an online model as good as it could add. Its refit has learned the validation
   events, so its validation figures are not a fair choice: the test rows are reported for all weights,
   and reading the best of them is a bound, not a choice.

    python benchmarks/mix_ceiling.py [--dense] [--budget 1200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation.data import DENSE_ITEMS, load_movielens  # noqa: E402
from evaluation.metrics import Interval, bootstrap_means  # noqa: E402
from evaluation.protocols import loo_split, run_loo  # noqa: E402
from evaluation.run import _embed_catalogue  # noqa: E402
from evaluation.scorers import CoreModel, Histories, Mix, OnlineSequence, SASRecScorer, Scorer  # noqa: E402
from models.sequence import SequenceConfig  # noqa: E402
from models.sources import MOVIELENS_SAMPLE  # noqa: E402
from streams.settings import Settings, build_core  # noqa: E402

N_BOOT = 1000


def separating_hits(n: int, above: float, n_boot: int = N_BOOT, seed: int = 0) -> int | None:
    """The fewest hits of ``n`` (one 0/1 per user) whose bootstrap interval's low end is above ``above``."""
    for k in range(n + 1):
        x = np.zeros(n)
        x[:k] = 1.0
        if bootstrap_means(x, n_boot, seed).low > above:
            return k
    return None


def _fmt(i: Interval) -> str:
    return f"{i.value:.3f} [{i.low:.3f}, {i.high:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", action="store_true", help="the 1,500 most-rated movies instead of all")
    ap.add_argument("--budget", type=float, default=1200.0, help="SASRec's seconds per phase (fit, refit)")
    ap.add_argument("--state-dir", default=str(REPO / ".state" / "evaluate"), help="embedding cache")
    args = ap.parse_args()
    log = load_movielens(MOVIELENS_SAMPLE, DENSE_ITEMS if args.dense else None)
    core = build_core(replace(Settings.load(os.environ), state_dir=args.state_dir))
    item_emb, embeddings = _embed_catalogue(core, log)
    split = loo_split(log)
    info: dict = {}

    def make(hist: Histories) -> list[Scorer]:
        ranker = CoreModel("default", core, log.items, item_emb, embeddings, True)
        seq = OnlineSequence("sequence", log.items, item_emb, SequenceConfig())
        sasrec = SASRecScorer(hist, args.budget, 500, 0, lambda m: print(m, flush=True), info)
        served = Mix("mix sequence 0.5 (served)", seq, ranker, 0.5)
        scorers: list[Scorer] = [ranker, seq, sasrec, served]
        scorers += [Mix(f"mix sasrec {w}", sasrec, ranker, w) for w in (0.25, 0.5, 0.75)]
        scorers += [Mix(f"mix sasrec {w} with the served mix", sasrec, served, w) for w in (0.25, 0.5)]
        return scorers

    t0 = time.perf_counter()
    result = run_loo(log, make, 256, split=split)
    hits = {name: np.asarray([m["recall@10"] for m in rows]) for name, rows in result.test.items()}
    base = hits["default"]
    data = "dense variant" if args.dense else "sample"
    print(f"\n{data}: {len(base)} test events; SASRec {info.get('epochs')} epochs (best "
          f"{info.get('best_epoch')}, stopped by {info.get('stopped_by')}), refit "
          f"{info.get('refit_epochs')}; {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print(f"{'model':40s} {'validation':>10s} {'test Recall@10':>22s} {'paired vs ranker':>24s}")
    for name, test in hits.items():
        val = np.mean([m["recall@10"] for m in result.val[name]])
        paired = "" if name == "default" else _fmt(bootstrap_means(test - base, N_BOOT, 0))
        print(f"{name:40s} {val:10.4f} {_fmt(bootstrap_means(test, N_BOOT, 0)):>22s} {paired:>24s}")
    ranker = bootstrap_means(base, N_BOOT, 0)
    need = separating_hits(len(base), ranker.high)
    if need is not None:
        print(f"\nthe ranker: {int(base.sum())} hits of {len(base)}, interval up to {ranker.high:.3f}; "
              f"an interval starting above it needs {need} hits ({need / len(base):.3f}, "
              f"{need / base.sum() - 1:+.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
