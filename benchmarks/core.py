"""The core step alone, batched against the per-event reference it replaced, in one process.

    python benchmarks/core.py [--events N] [--users U] [--classes K]

Both replay the same generated stream (``benchmarks/synthetic.py``) in micro-batches of 256 over states
kept as bytes (as the worker keeps them: every touched state is read and written once per batch), with
random unit vectors as item embeddings (the encoder is measured by ``benchmarks/encoder.py``). The two
run interleaved batch by batch, so a busy machine slows both alike and the ratio holds. ``--classes``
gives every item one of K synthetic categories instead of its MovieLens genres (20): the head's cost
grows with K.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from benchmarks.synthetic import zipf_stream  # noqa: E402
from models.config import InterestConfig  # noqa: E402
from models.core import InterestCore  # noqa: E402
from models.events import Item, parse_event  # noqa: E402
from models.interest import UserState  # noqa: E402
from models.sources import movielens_items  # noqa: E402


class _Encoder:
    """Only what the core reads from an encoder: its size and name."""

    dim = 384
    name = "random@bench"


def run(events: int = 20_000, users: int = 10_000, classes: int = 0, batch: int = 256) -> dict:
    import json

    import reference_core

    items = movielens_items()
    records = list(zipf_stream(events, users))
    rng = np.random.default_rng(0)
    catalogue: dict[str, Item] = {}
    for _, e in records:
        item = items[e["item_id"]]
        if classes:
            item = Item(item.title, item.text, (f"k{rng.integers(0, classes)}",))
        catalogue[e["item_id"]] = item
    vectors = rng.normal(size=(len(catalogue), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = {it.encoder_text: v for it, v in zip(catalogue.values(), vectors, strict=True)}
    parsed = [parse_event(json.dumps(e).encode(), t) for t, e in records]
    core = InterestCore(InterestConfig(), _Encoder())
    timings = {"batched": 0.0, "reference": 0.0}
    stores: dict[str, dict[str, bytes]] = {"batched": {}, "reference": {}}
    heads = {"batched": core.new_head(), "reference": core.new_head()}
    for start in range(0, len(parsed), batch):
        chunk = [(e, catalogue[e.item_id]) for e in parsed[start : start + batch]]
        for name in ("batched", "reference"):
            store = stores[name]
            t = time.perf_counter()
            present = {e.user_id for e, _ in chunk if e.user_id in store}
            states = {u: UserState.from_bytes(store[u]) for u in present}
            if name == "batched":
                result = core.apply(chunk, embeddings, states, heads[name])
            else:
                result = reference_core.apply(core, chunk, embeddings, states, heads[name])
            for user, state in result.states.items():
                store[user] = state.to_bytes()
            timings[name] += time.perf_counter() - t
    out = {
        "events": events,
        "users": users,
        "classes": len(heads["batched"].classes),
        "batched_events_per_s": events / timings["batched"],
        "reference_events_per_s": events / timings["reference"],
    }
    out["speedup"] = out["batched_events_per_s"] / out["reference_events_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=0)
    ap.add_argument("--blas-threads", type=int, default=1, help="as the worker's INTEREST_BLAS_THREADS")
    args = ap.parse_args()
    from streams.cli import limit_blas_threads

    limit_blas_threads(args.blas_threads)
    r = run(args.events, args.users, args.classes)
    print(f"core, {r['events']:,} events over {r['users']:,} users, {r['classes']} classes: batched "
          f"{r['batched_events_per_s']:,.0f} events/s, per-event reference "
          f"{r['reference_events_per_s']:,.0f} events/s: {r['speedup']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
