"""What the online sequence model costs to learn: events/s of ``SequenceModel.learn`` on the CPU and a GPU.

    python benchmarks/gpu_sequence.py --devices cpu,cuda [--batch-sizes 256,1024] [--seconds 30]

The stream: the dense MovieLens variant (the 1,500 most-rated movies, 71,523 events) in time order, cut
into micro-batches as ``evaluate`` and the trainer cut it (256 events). Item text vectors are seeded
random unit vectors of the encoder's width (384): the cost of a step does not depend on their values, and
this keeps the encoder out of the measurement. For each device and batch size: one fresh model
(``SequenceConfig()`` defaults, seed 0), two batches of warm-up, then batches until ``--seconds`` have
passed or the stream ends; events/s = events learned / seconds in ``learn``. Prints one JSON line per
run and appends them to ``--out`` (default ``benchmarks/results/gpu-sequence.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from evaluation.data import DENSE_ITEMS, EventLog, load_movielens  # noqa: E402
from models.sequence import SequenceConfig, SequenceModel  # noqa: E402
from models.sources import MOVIELENS_SAMPLE  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "gpu-sequence.jsonl"
TEXT_DIM = 384


def learn_rate(log: EventLog, device: str, batch_size: int, seconds: float) -> dict[str, Any]:
    """Events/s learned by a fresh model on ``device`` over ``log``'s events in order."""
    import torch

    rng = np.random.default_rng(0)
    text = rng.standard_normal((len(log.items), TEXT_DIM)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    model = SequenceModel(TEXT_DIM, SequenceConfig(), device=device)
    model.add_items(list(zip(log.items, text, strict=True)))
    batches = [log.events[i : i + batch_size] for i in range(0, len(log.events), batch_size)]
    for batch in batches[:2]:  # warm-up: kernels, allocator, first-touch of the weights
        model.learn(batch)
    learned, spent = 0, 0.0
    for batch in batches[2:]:
        start = time.perf_counter()
        loss = model.learn(batch)  # returns a Python float: the step has finished on the device
        spent += time.perf_counter() - start
        learned += len(batch)
        if spent > seconds:
            break
    on_gpu = device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name(0) if on_gpu else f"cpu ({platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "events": learned,
        "seconds": round(spent, 2),
        "events_per_s": round(learned / spent, 1),
        "last_loss": round(float(loss), 4),
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda")
    ap.add_argument("--batch-sizes", default="256")
    ap.add_argument("--seconds", type=float, default=30.0, help="learning time per run (after warm-up)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    import torch

    devices = args.devices.split(",")
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        sys.exit("gpu_sequence.py: a cuda device was asked for but torch sees no GPU")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = load_movielens(MOVIELENS_SAMPLE, DENSE_ITEMS)
    for device in devices:
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            row = learn_rate(log, device, batch_size, args.seconds)
            row["cpu_cores"] = os.cpu_count()
            row["command"] = " ".join(["python", "benchmarks/gpu_sequence.py", *sys.argv[1:]])
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
