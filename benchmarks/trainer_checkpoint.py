"""What a trainer's users' windows cost as users grow: memory (``Window``'s arrays against the deque of
tuples before) and the checkpoint (arrays against a pickled tuple per step before), in one process.

The trainer writes its checkpoint every ``INTEREST_MODEL_SYNC_S`` on its event loop; the users' windows
(the sequential model's and the ranker's recent items) are what grows with users. Builds both for
``--users`` users with ``--events`` events each over 5,000 items, then times writing (dump + torch.save)
and reading (torch.load + restore) each format, in memory, alternating, best of ``--rounds``. First,
the memory of ``--memory-users`` full windows (``max_len + 1`` steps) each way (tracemalloc):

    python benchmarks/trainer_checkpoint.py [--users 10000,100000] [--events 20]      # ~1 min here
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
import tracemalloc
from collections import deque
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.config import InterestConfig  # noqa: E402
from models.ranker import NextItemRanker, RecentItems  # noqa: E402
from models.sequence import SequenceModel, Window  # noqa: E402

ITEMS = 5000


def build(users: int, events: int) -> tuple[SequenceModel, RecentItems, NextItemRanker]:
    config = InterestConfig()
    rng = random.Random(0)
    vectors = np.random.default_rng(0).random((ITEMS, 384), dtype=np.float32)
    model, ranker = SequenceModel(384), NextItemRanker(config, 384)
    model.add_items([(f"i{k}", vectors[k]) for k in range(ITEMS)])
    ranker.add_items((f"i{k}", vectors[k]) for k in range(ITEMS))
    recent = RecentItems(config.history_len)
    for u in range(users):
        user, window = f"u{u}", Window(model.config.max_len + 1)
        for k in range(events):
            row, ts = rng.randrange(ITEMS), 1.7e9 + 60.0 * k
            window.append((row, rng.randrange(3), ts))
            recent.add(user, ts, f"i{row}")
        model.history[user] = window
        model._seen_users.append(user)
    return model, recent, ranker


def write_before(model: SequenceModel, recent: RecentItems, ranker: NextItemRanker) -> bytes:
    """The checkpoint's windows as the version before wrote them."""
    rest = model.dump_histories()
    del rest["users"], rest["lengths"], rest["steps"]
    rest["history"] = {u: list(h) for u, h in model.history.items()}
    rest["seen_users"] = list(model._seen_users)
    buf = io.BytesIO()
    torch.save({"histories": rest, "recent": recent.of}, buf)
    return buf.getvalue()


def read_before(raw: bytes, model: SequenceModel, recent: RecentItems, ranker: NextItemRanker) -> None:
    saved = torch.load(io.BytesIO(raw), weights_only=False)
    model.restore_histories(saved["histories"])
    recent.of = {u: [tuple(e) for e in h] for u, h in saved["recent"].items()}


def write_now(model: SequenceModel, recent: RecentItems, ranker: NextItemRanker) -> bytes:
    buf = io.BytesIO()
    torch.save({"histories": model.dump_histories(), "recent_items": recent.dump(ranker.index)}, buf)
    return buf.getvalue()


def read_now(raw: bytes, model: SequenceModel, recent: RecentItems, ranker: NextItemRanker) -> None:
    saved = torch.load(io.BytesIO(raw), weights_only=False)
    model.restore_histories(saved["histories"])
    recent.restore(saved["recent_items"], ranker.ids)


def memory_per_user(users: int, make) -> float:  # noqa: ANN001
    """Bytes per user of ``users`` full windows built by ``make(maxlen)`` (``append``-ed step by step)."""
    maxlen, rng = SequenceModel(8).config.max_len + 1, random.Random(1)
    tracemalloc.start()
    held = []
    for _ in range(users):
        window = make(maxlen)
        for k in range(maxlen):
            window.append((rng.randrange(60_000), rng.randrange(3), 1.7e9 + 60.0 * k))
        held.append(window)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size / users


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", default="10000,100000")
    ap.add_argument("--events", type=int, default=20, help="events per user")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory-users", type=int, default=20_000)
    args = ap.parse_args()
    before = memory_per_user(args.memory_users, lambda n: deque(maxlen=n))
    now = memory_per_user(args.memory_users, Window)
    steps = SequenceModel(8).config.max_len + 1
    print(f"memory of a full window ({steps} steps), {args.memory_users:,} users: "
          f"{before:,.0f} bytes per user as a deque of tuples (before), {now:,.0f} as a Window "
          f"({before / now:.1f}x less)\n")  # fmt: skip
    print(f"| users ({args.events} events each) | format | write s | read s | MB | write: before / now |")
    print("| --- | --- | --- | --- | --- | --- |")
    for users in (int(u) for u in args.users.split(",")):
        model, recent, ranker = build(users, args.events)
        expected = ({u: list(h) for u, h in model.history.items()}, dict(recent.of))
        best: dict[str, list[float]] = {"before": [1e9, 1e9], "now": [1e9, 1e9]}
        size = {}
        for _ in range(args.rounds):
            for name, write, read in (("before", write_before, read_before), ("now", write_now, read_now)):
                t = time.perf_counter()
                raw = write(model, recent, ranker)
                t1 = time.perf_counter()
                model.history, recent.of = {}, {}
                read(raw, model, recent, ranker)
                t2 = time.perf_counter()
                if ({u: list(h) for u, h in model.history.items()}, recent.of) != expected:
                    raise SystemExit(f"{name}: the windows did not come back as they were")
                best[name] = [min(best[name][0], t1 - t), min(best[name][1], t2 - t1)]
                size[name] = len(raw) / 1e6
        ratio = best["before"][0] / best["now"][0]
        for name in ("before", "now"):
            w, r = best[name]
            extra = f"{ratio:.1f}x" if name == "now" else ""
            print(f"| {users:,} | {name} | {w:.2f} | {r:.2f} | {size[name]:.1f} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
