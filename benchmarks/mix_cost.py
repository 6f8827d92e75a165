"""What a served list costs: ms per top-10 list, ranker alone vs mixed, one user at a time vs a batch.

    python benchmarks/mix_cost.py [--users 300] [--rounds 3] [--batch 100]

The ranker learns the whole MovieLens sample (9,724 items) with seeded random unit text vectors (the cost
of a list does not depend on their values); the sequence model's part is a seeded random (items, 64)
matrix of item vectors and a random user vector per list, as ``ServedModel.recommend`` computes them
(``item_vectors @ u``, then ``NextItemRanker.recommend`` with ``sequence``). The batched row asks for
``--batch`` users' mixed lists at once, as a worker's micro-batch does (``ServedModel.recommend_many``:
one text-index search for all of them, ``NextItemRanker.text_hits_many``); its lists must be the
one-at-a-time mixed lists. All three are timed over the same users, in turn, for ``--rounds`` rounds.
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
    ap.add_argument("--batch", type=int, default=100, help="users per batched call")
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

    histories = [recent.items(user) for user in users]
    interests = [text[log.item_index[history[-1]]] for history in histories]
    user_vectors = rng.normal(size=(len(users), 64)).astype(np.float32)

    def per_list(mixed: bool, lists: list) -> float:
        start = time.perf_counter()
        for n, (history, interest) in enumerate(zip(histories, interests, strict=True)):
            sequence = item_vectors @ user_vectors[n] if mixed else None
            lists.append(ranker.recommend(history, interest, 10, history, sequence))
        return (time.perf_counter() - start) / len(users) * 1e3

    def per_list_batched(lists: list) -> float:
        start = time.perf_counter()
        for first in range(0, len(users), args.batch):
            rows = range(first, min(first + args.batch, len(users)))
            hits = ranker.text_hits_many([histories[n] for n in rows], [interests[n] for n in rows])
            for n, found in zip(rows, hits, strict=True):
                sequence = item_vectors @ user_vectors[n]
                lists.append(ranker.recommend(histories[n], interests[n], 10, histories[n], sequence, found))
        return (time.perf_counter() - start) / len(users) * 1e3

    for n in range(args.rounds):
        one, batched = [], []
        alone, mixed, many = per_list(False, []), per_list(True, one), per_list_batched(batched)
        share, n_items = config.sequence_mix, ranker.n_items
        print(f"round {n + 1}: ranker alone {alone:.2f} ms, mixed (share {share}) {mixed:.2f} ms "
              f"({mixed / alone:.2f}x), mixed in batches of {args.batch} {many:.2f} ms ({many / mixed:.2f}x "
              f"of one at a time; the same lists: {'yes' if one == batched else 'NO'}) per top-10 list of "
              f"{n_items:,} items")  # fmt: skip


if __name__ == "__main__":
    main()
