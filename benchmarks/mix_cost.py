"""What mixing the sequence model into a served list costs: ms per top-10 list, ranker alone vs mixed.

    python benchmarks/mix_cost.py [--users 300] [--rounds 3]

The ranker learns the whole MovieLens sample (9,724 items) with seeded random unit text vectors (the cost
of a list does not depend on their values); the sequence model's part is a seeded random (items, 64)
matrix of item vectors and a random user vector per list, as ``ServedModel.recommend`` computes them
(``item_vectors @ u``, then ``NextItemRanker.recommend`` with ``sequence``). Both kinds of list are timed
over the same users, alternately, for ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.data import load_movielens  # noqa: E402
from models.config import InterestConfig  # noqa: E402
from models.ranker import NextItemRanker, RecentItems  # noqa: E402
from models.sources import MOVIELENS_SAMPLE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    log = load_movielens(MOVIELENS_SAMPLE)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(len(log.items), 384)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    config = InterestConfig()
    ranker = NextItemRanker(config, text.shape[1])
    ranker.add_items(zip(log.items, text, strict=True))
    recent = RecentItems(config.history_len)
    for event, _ in log.events:
        ranker.learn(recent.items(event.user_id), event.item_id, text[log.item_index[event.item_id]])
        recent.add(event.user_id, event.ts, event.item_id)
    ranker.prepare_index()
    item_vectors = rng.normal(size=(ranker.n_items, 64)).astype(np.float32)
    users = list(recent.of)[: args.users]

    def per_list(mixed: bool) -> float:
        start = time.perf_counter()
        for user in users:
            history = recent.items(user)
            interest = text[log.item_index[history[-1]]]
            sequence = item_vectors @ rng.normal(size=64).astype(np.float32) if mixed else None
            ranker.recommend(history, interest, 10, history, sequence)
        return (time.perf_counter() - start) / len(users) * 1e3

    for n in range(args.rounds):
        alone, mixed = per_list(False), per_list(True)
        share, n_items = config.sequence_mix, ranker.n_items
        print(f"round {n + 1}: ranker alone {alone:.2f} ms, mixed (share {share}) {mixed:.2f} ms "
              f"per top-10 list of {n_items:,} items ({mixed / alone:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
