"""Approximate nearest neighbours for the ranker's text candidates: which library, at what recall.

The bounded ranker (``models/ranker.py``) takes its text candidates from an ANN index over item
embeddings instead of a dense product with the whole catalogue. This script measures the maintained
libraries a user could pick (usearch, hnswlib, faiss HNSW) on the same vectors, in one process: build
time, query time (one query at a time, as the worker asks), recall@10 against exact search, memory.

Vectors: the MovieLens sample's item texts through the real encoder (9,742 items), and a 100,000-item
catalogue made from them (each copy moved by Gaussian noise and renormalised), since the sample has no
bigger real catalogue. Queries: 1,000 users' interest-like vectors (the normalised mean of their last 10
items' embeddings).

    python benchmarks/ann.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def movielens_vectors(state_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from evaluation.data import load_movielens
    from streams.settings import Settings, build_core

    log = load_movielens(REPO / "data" / "ml-latest-small")
    core = build_core(Settings.load({}, state_dir=str(state_dir)))
    items = [log.item_of[i] for i in log.items]
    vectors = core.embed(items)
    emb = np.stack([vectors[it.encoder_text] for it in items]).astype(np.float32)
    rng = np.random.default_rng(0)
    users = rng.choice(sorted(log.users), 1000, replace=len(log.users) < 1000)
    per_user: dict[str, list[int]] = {}
    for event, _ in log.events:
        per_user.setdefault(event.user_id, []).append(log.item_index[event.item_id])
    queries = np.stack([emb[per_user[u][-10:]].mean(axis=0) for u in users])
    return emb, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def scaled(emb: np.ndarray, n: int, noise: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(1)
    base = emb[rng.integers(0, len(emb), n)]
    out = base + noise * rng.normal(size=base.shape).astype(np.float32) / np.sqrt(emb.shape[1])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def exact_top(emb: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ emb.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


EFS = (64, 128, 256)
"""Search expansions (candidates kept while walking the graph): recall against query time."""


def run_library(name: str, emb: np.ndarray, queries: np.ndarray, k: int) -> list[dict]:
    """Build once, then search with each expansion in ``EFS`` (one row each)."""
    before = rss_mb()
    t0 = time.perf_counter()
    if name == "usearch":
        from usearch.index import Index

        index = Index(ndim=emb.shape[1], metric="ip", dtype="f32", connectivity=16, expansion_add=128)
        index.add(np.arange(len(emb)), emb, threads=1)

        def search(q: np.ndarray, ef: int) -> np.ndarray:
            index.expansion_search = ef
            return index.search(q, k).keys
    elif name == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=emb.shape[1])
        index.init_index(max_elements=len(emb), ef_construction=128, M=16, random_seed=0)
        index.set_num_threads(1)
        index.add_items(emb, np.arange(len(emb)))

        def search(q: np.ndarray, ef: int) -> np.ndarray:
            index.set_ef(ef)
            return index.knn_query(q[None, :], k=k)[0][0]
    elif name == "faiss":
        import faiss

        faiss.omp_set_num_threads(1)
        index = faiss.IndexHNSWFlat(emb.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 128
        index.add(emb)

        def search(q: np.ndarray, ef: int) -> np.ndarray:
            index.hnsw.efSearch = ef
            return index.search(q[None, :], k)[1][0]
    elif name == "exact":

        def search(q: np.ndarray, ef: int) -> np.ndarray:
            s = emb @ q
            top = np.argpartition(-s, k - 1)[:k]
            return top[np.argsort(-s[top])]
    else:
        raise ValueError(name)
    build = time.perf_counter() - t0
    memory = rss_mb() - before
    truth = exact_top(emb, queries, k)
    rows = []
    for ef in EFS if name != "exact" else (0,):
        t0 = time.perf_counter()
        found = [search(q, ef) for q in queries]
        per_query = (time.perf_counter() - t0) / len(queries)
        hits = [len(set(map(int, f)) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]
        rows.append({"library": name, "items": len(emb), "ef": ef, "build_s": round(build, 3),
                     "query_ms": round(per_query * 1e3, 4), "recall@10": round(float(np.mean(hits)), 4),
                     "memory_mb": round(memory, 1)})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--state-dir", type=Path, default=REPO / ".state" / "bench-ann")
    parser.add_argument("--libraries", default="exact,usearch,hnswlib,faiss")
    args = parser.parse_args()
    emb, queries = movielens_vectors(args.state_dir)
    rows = []
    for catalogue in (emb, scaled(emb, 100_000)):
        for lib in args.libraries.split(","):
            for row in run_library(lib, catalogue, queries, 10):
                rows.append(row)
                print(json.dumps(row), flush=True)
    facts = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
             "threads": 1, "command": "python benchmarks/ann.py"}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ann.json").write_text(json.dumps({"facts": facts, "rows": rows}, indent=1) + "\n")
    (args.out / "ann.md").write_text(markdown(rows, facts))
    print(markdown(rows, facts))


def markdown(rows: list[dict], facts: dict) -> str:
    lines = [
        f"`{facts['command']}` ({facts['cpus']} CPUs, one search thread)",
        "",
        "| items | library | search expansion | build s | query ms | recall@10 vs exact | memory MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['items']:,} | {r['library']} | {r['ef'] or '-'} | {r['build_s']} | {r['query_ms']} | "
              f"{r['recall@10']} | {r['memory_mb']} |" for r in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
