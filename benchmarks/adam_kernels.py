"""The sequential model's Adam, three ways, learning the same stream in one process.

    python benchmarks/adam_kernels.py [--events 6000] [--rounds 2] [--threads 2]

torch's Adam updates each parameter with a dozen tensor operations per step (``foreach=False``, its
default on a CPU), a list-wise version of them (``foreach=True``), or one fused kernel (``fused=True``,
what ``SequenceModel`` uses). The model learns ``--events`` MovieLens ratings in micro-batches of 256,
with random unit text vectors (a step's cost does not depend on them); printed: seconds per round for
each, the best round's speed-up over the default, and the largest weight difference to the default after
the stream (the same update up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.events import parse_event  # noqa: E402
from models.sources import movielens_events, movielens_items  # noqa: E402

KINDS = {
    "default (foreach=False)": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from models.sequence import SequenceModel

    torch.set_num_threads(args.threads)
    items = movielens_items()
    stream = []
    for etype, e in movielens_events(limit=args.events):
        event = parse_event(json.dumps(e).encode(), etype, e["user_id"].encode())
        stream.append((event, items[event.item_id]))
    rng = np.random.default_rng(0)
    ids = sorted({event.item_id for event, _ in stream})
    text = rng.standard_normal((len(ids), 384)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    def learn(options: dict) -> tuple[float, SequenceModel]:
        model = SequenceModel(384)
        model.opt = torch.optim.Adam(model.net.parameters(), lr=model.config.lr, **options)
        model.add_items(zip(ids, text, strict=True))
        t = time.perf_counter()
        for start in range(0, len(stream), 256):
            model.learn(stream[start : start + 256])
        return time.perf_counter() - t, model

    seconds: dict[str, list[float]] = {k: [] for k in KINDS}
    weights: dict[str, dict] = {}
    for _ in range(args.rounds):  # round-robin, so a busy moment of the machine hits every kind alike
        for kind, options in KINDS.items():
            s, model = learn(options)
            seconds[kind].append(s)
            weights[kind] = {n: p.detach().clone() for n, p in model.net.named_parameters()}
    base = next(iter(KINDS))
    print(f"{len(stream):,} events, micro-batches of 256, {args.threads} threads, torch {torch.__version__}")
    for kind in KINDS:
        diff = max(float((weights[base][n] - w).abs().max()) for n, w in weights[kind].items())
        print(f"{kind:24s} s per round {' / '.join(f'{s:.2f}' for s in seconds[kind])}; "
              f"{min(seconds[base]) / min(seconds[kind]):.2f}x the default; "
              f"largest weight difference to it {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
