"""The online sequence model's variants side by side on leave-one-out: validation picks, test is reported.

Runs ``evaluate``'s leave-one-out protocol on the MovieLens sample (optionally with new items,
``--new-items``, or on its dense variant, ``--dense``) for the counting ranker, the text baselines and
each named sequence-model variant, with its mixes, in one process, and prints validation and test
Recall@10, overall, on never-seen items, and on never-seen items ranked among the items nobody has
touched ("among new"). Each variant is a set of ``SequenceConfig`` changes, given as JSON:

    python benchmarks/sequence_variants.py --new-items 0.1 \\
        --variant 'base={}' --variant 'drop0.5={"id_needs_event": true, "id_dropout": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.data import DENSE_ITEMS, load_movielens
from evaluation.protocols import loo_split, run_loo
from evaluation.run import MIX_WEIGHTS, _embed_catalogue
from evaluation.scorers import CoreModel, Histories, LastItemText, Mix, OnlineSequence, Scorer
from models.sequence import SequenceConfig
from models.sources import MOVIELENS_SAMPLE
from streams.settings import Settings, build_core

REPO = Path(__file__).resolve().parent.parent


def _mean(rows: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return round(float(np.mean(values)), 4) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-items", type=float, default=0.0, help="share of the catalogue made new")
    ap.add_argument("--dense", action="store_true", help="the 1,500 most-rated movies instead of all")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="a sequence-model variant: SequenceConfig changes as JSON (repeatable)")  # fmt: skip
    ap.add_argument("--max-users", type=int, default=None, help="only the first N users (a quick look)")
    ap.add_argument("--batch-size", type=int, default=256, help="events per micro-batch")
    ap.add_argument("--state-dir", default=str(REPO / ".state" / "evaluate"), help="embedding cache")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"base": "{}"}
    log = load_movielens(MOVIELENS_SAMPLE, DENSE_ITEMS if args.dense else None)
    if args.max_users:
        log = log.first_users(args.max_users)
    core = build_core(replace(Settings.load(os.environ), state_dir=args.state_dir))
    item_emb, embeddings = _embed_catalogue(core, log)
    split = loo_split(log, args.new_items, seed=0)

    def make(hist: Histories) -> list[Scorer]:
        default = CoreModel("default", core, log.items, item_emb, embeddings, True)
        interest = CoreModel("interest_vector", core, log.items, item_emb, embeddings, False)
        scorers: list[Scorer] = [default, LastItemText(hist, item_emb), interest]
        for name, changes in variants.items():
            config = replace(SequenceConfig(), **json.loads(changes))
            seq = OnlineSequence(f"sequence {name}", log.items, item_emb, config)
            scorers += [seq] + [Mix(f"mix {w} {name}", seq, default, w) for w in MIX_WEIGHTS]
        return scorers

    result = run_loo(log, make, args.batch_size, split=split)
    cold = result.learned == 0
    print(f"train {len(split.train):,} (new items {len(split.new_items):,}, their training events dropped "
          f"{split.dropped:,}); never-seen test items {int(cold.sum())}")  # fmt: skip
    print(f"{'model':28s} {'val':>7s} {'test':>7s} {'test never-seen':>16s} {'val among new':>14s} "
          f"{'test among new':>15s}")  # fmt: skip
    for name, test in result.test.items():
        val = result.val[name]
        t = np.asarray([u["recall@10"] for u in test])
        never_seen = round(float(t[cold].mean()), 4) if cold.any() else None
        row = [_mean(val, "recall@10"), round(float(t.mean()), 4), never_seen,
               _mean(val, "new_items_recall@10"), _mean(test, "new_items_recall@10")]  # fmt: skip
        cells = (f"{'-' if v is None else v:>{w}}" for v, w in zip(row, (7, 7, 16, 14, 15), strict=True))
        print(f"{name:28s} " + " ".join(cells))


if __name__ == "__main__":
    main()
