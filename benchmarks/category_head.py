"""How the next-category defaults were chosen: validation acc@1 with the head's weights lagged.

Replays the MovieLens sample prequentially (``evaluate``'s protocol, the same ``InterestCore.apply``) for
the default configuration and for each setting of ``category_tau_s``, ``category_blend``,
``category_blend_mass`` and ``learning_rate`` changed alone, plus the previous default (a 365-day
profile, learning rate 0.01, no blend). Each is scored as a busy worker would serve it: the head
predicts with its weights as they were at the last multiple of ``--lag`` events (``LaggedHead``), because
in the replay one user's events follow each other and a head that has just learned from them predicts
the next one from weights tuned to that user.
Prints acc@1 on the first half of the events (validation: the defaults are the best row) and the second
half (reported, not used to choose), with the default and the previous default also unlagged.

    python benchmarks/category_head.py [--lag 2560]      # ~2 min here on 2026-12-01 (12 on a slower day)
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.data import load_movielens
from evaluation.metrics import CategoryPredictions, top1_hits
from evaluation.protocols import run_prequential
from evaluation.scorers import with_config
from models.config import DAY_S
from models.sources import MOVIELENS_SAMPLE
from streams.settings import Settings, build_core

REPO = Path(__file__).resolve().parent.parent
PREVIOUS = {"category_tau_s": 365 * DAY_S, "learning_rate": 0.01, "category_blend": 0.0}
GRID: list[dict[str, float]] = [
    {"category_tau_s": 60.0},
    {"category_tau_s": 300.0},
    {"category_tau_s": 600.0},
    {"category_tau_s": 3600.0},
    {"category_blend_mass": 1.0},
    {"category_blend_mass": 4.0},
    {"category_blend": 0.5},
    {"category_blend": 0.75},
    {"category_blend": 0.9},
    {"category_blend": 0.0},
    {"category_blend_mass": 0.0},
    {"category_blend_mass": 0.0, "category_blend": 0.75},
    {"learning_rate": 0.001},
    {"learning_rate": 0.003},
    {"learning_rate": 0.005},
    {"learning_rate": 0.01},
]


def _halves(pred: CategoryPredictions) -> tuple[float, float]:
    hits = top1_hits(pred)
    half = len(hits) // 2
    return float(hits[:half].mean()), float(hits[half:].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lag", type=int, default=2560, help="events between the head's snapshots")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "category-head.json"))
    args = parser.parse_args()
    log = load_movielens(MOVIELENS_SAMPLE)
    state_dir = os.environ.get("INTEREST_STATE_DIR") or str(REPO / ".state" / "evaluate")
    core = build_core(replace(Settings.load(dict(os.environ)), state_dir=state_dir))
    embeddings = core.embed([log.item_of[i] for i in log.items])
    settings = [{}, *GRID, PREVIOUS]
    names = ["default", *(", ".join(f"{k} {v:g}" for k, v in s.items()) for s in GRID), "previous default"]
    lagged = {name: (with_config(core, **s), args.lag) for name, s in zip(names, settings, strict=True)}
    unlagged = {"default, unlagged": core, "previous default, unlagged": with_config(core, **PREVIOUS)}
    result = run_prequential(log, unlagged, embeddings, lagged=lagged)
    rows = []
    print(f"acc@1, head weights lagged {args.lag:,} events unless marked")
    print(f"{'setting':<72} {'first half (val)':>16} {'second half':>12}")
    for name, pred in result.models.items():
        first, second = _halves(pred)
        rows.append({"setting": name, "first_half_acc@1": round(first, 4),
                     "second_half_acc@1": round(second, 4)})  # fmt: skip
        print(f"{name:<72} {first:>16.4f} {second:>12.4f}", flush=True)
    chosen = max((r for r in rows if r["setting"] in lagged), key=lambda r: r["first_half_acc@1"])
    print(f"best on validation: {chosen['setting']}")
    Path(args.out).write_text(json.dumps({"lag": args.lag, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
