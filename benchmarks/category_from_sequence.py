"""Does what the sequence model knows help the category head? Its next-item distribution, folded into
categories, blended into what the head serves.

Replays the MovieLens sample prequentially (``evaluate``'s protocol) for the default core, with the head's
weights lagged ``--lag`` events as a busy worker serves them, and beside it learns the sequence model
online from the same batches. Before each batch, every event's user gets the sequence model's softmax over
the catalogue (``u · r_i``, the user's window before the event, weights as of the last multiple of
``--lag`` events), summed into categories (an item's mass split over its genres). Prints acc@1 on the
first half (validation: picks the blend weight) and the second half of the events:

    python benchmarks/category_from_sequence.py [--lag 2560]      # ~10 min here
"""

from __future__ import annotations

import argparse
import os
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.data import load_movielens
from evaluation.metrics import CategoryPredictions, bootstrap_classification, top1_hits
from evaluation.protocols import batches, run_prequential
from evaluation.run import _embed_catalogue, _subset
from models.events import EVENT_TYPES
from models.sequence import SequenceModel
from models.sources import MOVIELENS_SAMPLE
from streams.settings import Settings, build_core

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lag", type=int, default=2560, help="events between weight snapshots")
    args = parser.parse_args()
    log = load_movielens(MOVIELENS_SAMPLE)
    state_dir = os.environ.get("INTEREST_STATE_DIR") or str(REPO / ".state" / "evaluate")
    core = build_core(replace(Settings.load(dict(os.environ)), state_dir=state_dir))
    item_emb, embeddings = _embed_catalogue(core, log)
    served = run_prequential(log, {"unlagged": core}, embeddings, lagged={"default": (core, args.lag)}).models
    classes = served["default"].classes
    col = {c: k for k, c in enumerate(classes)}
    genres = np.zeros((len(log.items), len(classes)), np.float32)
    for row, item_id in enumerate(log.items):
        cats = log.item_of[item_id].categories
        for c in cats:
            genres[row, col[c]] = 1.0 / len(cats)
    model = SequenceModel(item_emb.shape[1])
    model.add_items(list(zip(log.items, item_emb, strict=True)))
    snapshot, since = model.served_copy(), 0
    row_of = {item_id: row for row, item_id in enumerate(log.items)}
    windows: dict[str, deque] = {}
    parts = []
    for batch in batches(log.events, 256):
        before = []
        for event, _item in batch:
            window = windows.setdefault(event.user_id, deque(maxlen=model.config.max_len))
            before.append(list(window))
            window.append(
                (event.item_id, item_emb[row_of[event.item_id]], EVENT_TYPES.index(event.type), event.ts)
            )
        keep = [k for k, (_, item) in enumerate(batch) if item.categories]  # as the prequential rows
        logits = snapshot.user_vectors_of([before[k] for k in keep]) @ snapshot.item_vectors().T
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = (p / p.sum(axis=1, keepdims=True)) @ genres
        p[[len(before[k]) == 0 for k in keep]] = 1.0 / len(classes)  # no window yet: no opinion
        parts.append(p)
        model.learn(batch)
        since += len(batch)
        if since >= args.lag:
            snapshot, since = model.served_copy(), 0
    sequence = np.concatenate(parts)
    head = served["default"]
    if sequence.shape != head.proba.shape:
        raise SystemExit(f"rows differ: {sequence.shape} vs {head.proba.shape}")
    base = head.proba / np.maximum(head.proba.sum(axis=1, keepdims=True), 1e-12)

    def halves(proba: np.ndarray) -> tuple[float, float]:
        hits = top1_hits(CategoryPredictions(classes, proba, head.truth, head.user))
        half = len(hits) // 2
        return float(hits[:half].mean()), float(hits[half:].mean())

    print(f"acc@1, weights lagged {args.lag:,} events: first half (validation) / second half")
    first, second = halves(served["most_frequent"].proba)
    print(f"user's most frequent category: {first:.4f} / {second:.4f}")
    rows = {w: halves((1 - w) * base + w * sequence) for w in WEIGHTS}
    for w, (first, second) in rows.items():
        print(f"served = {1 - w:.1f} x default + {w:.1f} x sequence: {first:.4f} / {second:.4f}")
    best = max(rows, key=lambda w: rows[w][0])
    print(f"best on validation: weight {best}; second half, 95% intervals (users resampled, as evaluate):")
    late = np.arange(len(base)) >= len(base) // 2
    for name, proba in (("most frequent category", served["most_frequent"].proba), ("default", base),
                        (f"blend {best}", (1 - best) * base + best * sequence)):  # fmt: skip
        pred = _subset(CategoryPredictions(classes, proba, head.truth, head.user), late)
        acc = bootstrap_classification(pred, len(log.users), 200, 0)["acc@1"]
        print(f"  {name}: {acc.value:.4f} [{acc.low:.4f}, {acc.high:.4f}]")


if __name__ == "__main__":
    main()
