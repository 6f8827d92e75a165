"""The offline SASRec yardstick of ``evaluate``, trained until early stopping ends it, not a time budget.

``interest-stream evaluate`` gives SASRec 30 minutes of a 2-core CPU; on the dense variant that budget
stopped it while validation was still rising, so its score there is a floor. This script runs the same
recipe (``evaluation.scorers.SASRecScorer``: the leave-one-out split of ``evaluate``, early stopping on
validation Recall@10 with patience 10, then a refit from scratch on training + validation events for the
epoch count validation picks) with a budget you choose, on the device you choose, and prints validation and
test Recall@10 with the same 95% intervals as the report (users resampled, 1,000 resamples, seed 0):

    python benchmarks/sasrec_yardstick.py --dataset movielens-dense --device cuda --budget 600
    python benchmarks/sasrec_yardstick.py --dataset movielens --max-users 40 --budget 20   # a quick look

Needs only numpy and torch (no Kafka, no encoder: SASRec reads item ids alone). Results are appended as
one JSON line per run to ``--out`` (default ``benchmarks/results/sasrec-yardstick.jsonl``).
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

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read when CUDA starts

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from evaluation.data import DENSE_ITEMS, load_movielens  # noqa: E402
from evaluation.metrics import bootstrap_means  # noqa: E402
from evaluation.protocols import loo_split, run_loo  # noqa: E402
from evaluation.scorers import Histories, SASRecScorer, Scorer  # noqa: E402
from models.sources import MOVIELENS_SAMPLE  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "sasrec-yardstick.jsonl"


def run(dataset: str, device: str, budget_s: float, max_epochs: int, max_users: int | None) -> dict[str, Any]:
    """One SASRec fit and its leave-one-out scores; the result row."""
    import torch

    log = load_movielens(MOVIELENS_SAMPLE, DENSE_ITEMS if dataset == "movielens-dense" else None)
    if max_users:
        log = log.first_users(max_users)
    info: dict[str, Any] = {}

    def progress(line: str) -> None:
        print(f"  {dataset} {line}", flush=True)

    def make(hist: Histories) -> list[Scorer]:
        return [SASRecScorer(hist, budget_s, max_epochs, 0, progress, info, device=device)]

    began = time.perf_counter()
    result = run_loo(log, make, split=loo_split(log))
    per_user_test = np.asarray([u["recall@10"] for u in result.test["sasrec"]])
    on_gpu = device.startswith("cuda")
    cpu = f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return {
        "dataset": log.name,
        "events": len(log.events),
        "items": len(log.items),
        "users": len(per_user_test),
        "device": torch.cuda.get_device_name(0) if on_gpu else cpu,
        "torch": torch.__version__,
        "budget_s": budget_s,
        # the best epoch's, before the refit (the refit model has learned the validation events)
        "val_recall@10": round(float(info.get("best_val_recall10", float("nan"))), 4),
        "test_recall@10": bootstrap_means(per_user_test, 1000, 0).as_list(),
        "epochs": info.get("epochs"),
        "best_epoch": info.get("best_epoch"),
        "stopped_by": info.get("stopped_by"),
        "refit_epochs": info.get("refit_epochs"),
        "train_seconds": round(float(info.get("train_seconds", 0.0)), 1),
        "refit_seconds": round(float(info.get("refit_seconds", 0.0)), 1),
        "val_curve": [round(v, 4) for v in info.get("val_curve", [])],
        "seconds": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["movielens", "movielens-dense"], default="movielens-dense")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a machine with an NVIDIA GPU")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds before it is stopped")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--max-users", type=int, default=None, help="only the first N users (a quick look)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("sasrec_yardstick.py: --device cuda but torch sees no GPU")
    row = run(args.dataset, args.device, args.budget, args.max_epochs, args.max_users)
    row["command"] = " ".join(["python", "benchmarks/sasrec_yardstick.py", *sys.argv[1:]])
    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
