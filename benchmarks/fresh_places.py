"""How many fresh places (``InterestConfig.fresh_slots``): validation Recall@10 against the places given.

Runs ``evaluate``'s leave-one-out protocol on the MovieLens sample, plainly and with a share of the
catalogue made new (``--new-items``), optionally on the dense variant (``--dense``), for the default model
with 0 to 3 fresh places, and prints validation Recall@10 overall and on validation items no model has an
event for, with each setting's ratio to none. The default is the largest setting whose validation
Recall@10 stays within 2% of none. ``--test`` also prints the test split's figures (95% bootstrap
intervals over users), to report what was chosen, never to choose.

    python benchmarks/fresh_places.py --new-items 0 --new-items 0.1 [--dense] [--test]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.data import DENSE_ITEMS, load_movielens
from evaluation.metrics import bootstrap_means
from evaluation.protocols import loo_split, run_loo
from evaluation.run import _embed_catalogue
from evaluation.scorers import CoreModel, Histories, Scorer, with_config
from models.sources import MOVIELENS_SAMPLE
from streams.settings import Settings, build_core

REPO = Path(__file__).resolve().parent.parent
PLACES = (0, 1, 2, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-items", type=float, action="append", default=[], help="shares to run (repeatable)")
    ap.add_argument("--dense", action="store_true", help="the 1,500 most-rated movies instead of all")
    ap.add_argument("--test", action="store_true", help="also print the test split's figures")
    ap.add_argument("--state-dir", default=str(REPO / ".state" / "evaluate"), help="embedding cache")
    args = ap.parse_args()
    log = load_movielens(MOVIELENS_SAMPLE, DENSE_ITEMS if args.dense else None)
    core = build_core(replace(Settings.load(os.environ), state_dir=args.state_dir))
    item_emb, embeddings = _embed_catalogue(core, log)
    for share in args.new_items or [0.0]:
        split = loo_split(log, share, seed=0)

        def make(hist: Histories) -> list[Scorer]:
            return [CoreModel(f"{n} fresh places", with_config(core, fresh_slots=n), log.items, item_emb,
                              embeddings) for n in PLACES]  # fmt: skip

        result = run_loo(log, make, split=split)
        trained = {e.item_id for e, _ in split.train}
        unseen = np.asarray([e.item_id not in trained for e, _ in split.val])
        print(f"\n{log.name}, new items {share:.0%}: {len(split.val)} validation items, "
              f"{int(unseen.sum())} never seen in training")  # fmt: skip
        none = np.mean([u["recall@10"] for u in result.val[f"{PLACES[0]} fresh places"]])
        for n in PLACES:
            r = np.asarray([u["recall@10"] for u in result.val[f"{n} fresh places"]])
            cold = f"{r[unseen].mean():.4f}" if unseen.any() else "-"
            print(f"  {n} fresh places: val Recall@10 {r.mean():.4f} ({r.mean() / none:.3f} of none), "
                  f"never-seen {cold}")  # fmt: skip
        if args.test:
            learned = {e.item_id for e, _ in split.train} | {e.item_id for e, _ in split.val}
            fresh = np.asarray([e.item_id not in learned for e, _ in split.test])
            print(f"  test ({len(split.test)} items, {int(fresh.sum())} never seen before the test):")
            for n in PLACES:
                r = np.asarray([u["recall@10"] for u in result.test[f"{n} fresh places"]])
                overall, cold = bootstrap_means(r, 1000, 0), bootstrap_means(r[fresh], 1000, 0)
                print(f"  {n} fresh places: test Recall@10 {overall.as_list()}, never-seen {cold.as_list()}")


if __name__ == "__main__":
    main()
