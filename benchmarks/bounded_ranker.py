"""The bounded next-item ranker against the unbounded one: Recall@10, query cost, memory.

A query of the unbounded ranker scores the whole catalogue (its cost grows with it); the bounded one
scores candidates only (the recent items' successors, the interest vector's nearest items from an HNSW
index, the most popular items) and prunes successor lists (``models/ranker.py``). This script runs
``evaluate``'s leave-one-out protocol on the MovieLens sample for the unbounded default and bounded
settings in one process (validation picks; test reported), then times queries at the sample's 9,742
items and at 100,000 (the sample's catalogue padded with text-only items, as a big catalogue with a long
tail), and measures the successor lists' memory with tracemalloc.

    python benchmarks/bounded_ranker.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.data import load_movielens
from evaluation.metrics import bootstrap_means
from evaluation.protocols import loo_split, run_loo
from evaluation.scorers import CoreModel, with_config
from models.ranker import NextItemRanker, RecentItems
from streams.settings import Settings, build_core

REPO = Path(__file__).resolve().parent.parent
BOUNDED = {"text_candidates": 100, "popular_candidates": 100}
SETTINGS = {
    "unbounded (before)": {"text_candidates": 0, "successors_kept": 0},
    "candidates only": {**BOUNDED, "successors_kept": 0},
    "candidates, 50 successors kept": {**BOUNDED, "successors_kept": 50},
    "candidates, 100 successors kept": {**BOUNDED, "successors_kept": 100},
    "candidates, 200 successors kept": {**BOUNDED, "successors_kept": 200},
}


def recall(per_user: list[dict[str, float]]) -> np.ndarray:
    return np.asarray([u["recall@10"] for u in per_user])


def learned_ranker(core, log, emb: np.ndarray, changes: dict) -> NextItemRanker:  # noqa: ANN001
    ranker = NextItemRanker(replace(core.config, **changes), core.dim)
    ranker.add_items(zip(log.items, emb, strict=True))
    recent = RecentItems(core.config.history_len)
    for event, _ in log.events:
        ranker.learn(recent.items(event.user_id), event.item_id, emb[log.item_index[event.item_id]])
        recent.add(event.user_id, event.ts, event.item_id)
    return ranker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--state-dir", type=Path, default=REPO / ".state" / "bench-ann")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    log = load_movielens(REPO / "data" / "ml-latest-small")
    core = build_core(Settings.load({}, state_dir=str(args.state_dir)))
    items = [log.item_of[i] for i in log.items]
    vectors = core.embed(items)
    emb = np.stack([vectors[it.encoder_text] for it in items])

    # 1. Recall@10, leave-one-out, every setting learning the same stream in one run.
    def scorers(hist):  # noqa: ANN001, ANN202
        return [
            CoreModel(name, with_config(core, **ch), log.items, emb, vectors) for name, ch in SETTINGS.items()
        ]

    t0 = time.perf_counter()
    result = run_loo(log, scorers, split=loo_split(log))
    print(f"leave-one-out: {time.perf_counter() - t0:.0f}s", flush=True)
    base = recall(result.test["unbounded (before)"])
    quality = {}
    for name in SETTINGS:
        test = recall(result.test[name])
        quality[name] = {
            "val_recall@10": round(float(recall(result.val[name]).mean()), 4),
            "recall@10": bootstrap_means(test, args.n_boot).as_list(),
            "minus_unbounded": bootstrap_means(test - base, args.n_boot).as_list(),
            "relative": round(float(test.mean() / base.mean()), 4),
        }
        print(name, json.dumps(quality[name]), flush=True)

    # 2. Memory of the successor lists (tracemalloc: what learning them allocates) and query cost.
    cost = {}
    users = sorted(log.users)[:200]
    for name in ("unbounded (before)", "candidates, 200 successors kept"):
        tracemalloc.start()
        ranker = learned_ranker(core, log, emb, SETTINGS[name])
        used, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        pairs = sum(len(r) for r in ranker.successors)
        matrices = ranker._emb.nbytes + 2 * ranker._pop.nbytes
        histories = {u: [e.item_id for e, _ in log.events if e.user_id == u][-8:] for u in users}
        for n_items in (len(log.items), 100_000):
            if n_items > ranker.n_items:  # a long tail of items nobody acted on yet, known by their text
                rng = np.random.default_rng(0)
                extra = emb[rng.integers(0, len(emb), n_items - ranker.n_items)]
                extra = extra + 0.35 * rng.normal(size=extra.shape).astype(np.float32) / np.sqrt(emb.shape[1])
                extra /= np.linalg.norm(extra, axis=1, keepdims=True)
                ranker.add_items((f"tail-{k}", v) for k, v in enumerate(extra))
            interest = {u: emb[[log.item_index[i] for i in h]].mean(axis=0) for u, h in histories.items()}
            ranker.recommend(histories[users[0]], interest[users[0]], 10)  # builds the HNSW index
            t0 = time.perf_counter()
            for u in users:
                ranker.recommend(histories[u], interest[u], 10, exclude=histories[u])
            per_query_ms = (time.perf_counter() - t0) / len(users) * 1e3
            cost[f"{name} @ {n_items:,} items"] = {"query_ms": round(per_query_ms, 3)}
            print(f"{name} @ {n_items:,} items: {per_query_ms:.3f} ms per query", flush=True)
        cost[name] = {"successor_pairs": pairs, "bytes_per_pair": round((used - matrices) / max(pairs, 1), 1),
                      "max_row": max(len(r) for r in ranker.successors[: len(log.items)])}  # fmt: skip
        print(name, json.dumps(cost[name]), flush=True)

    facts = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "command": "python benchmarks/bounded_ranker.py",
        "users": len(log.users),
        "items": len(log.items),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    body = {"facts": facts, "quality": quality, "cost": cost}
    (args.out / "bounded-ranker.json").write_text(json.dumps(body, indent=1) + "\n")


if __name__ == "__main__":
    main()
