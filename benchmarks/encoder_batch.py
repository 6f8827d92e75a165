"""How the CPU batch size moves each encoder's speed: the measurement behind ``TextEncoder``'s default.

The same MovieLens titles as ``benchmarks/encoder.py``, one process, the same thread count for every
row, every (backend, batch size) pair timed once per round, round-robin, so that a busy moment of the
shared machine falls on all of them alike. sentence-transformers gets the same batch sizes: the baseline
the issue compares with is its best, not only its ``batch_size=64``. Titles/s: best round (median beside
it).

    python benchmarks/encoder_batch.py [--titles 2000] [--batch-sizes 16,32,64,128,256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.encoder import machine_facts, movielens_titles  # noqa: E402
from models.encoder import TextEncoder, available_cpus, cpu_has_bf16  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--titles", type=int, default=2000)
    ap.add_argument("--batch-sizes", default="16,32,64,128,256")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0: every core this process may run on")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    texts = movielens_titles(args.titles)
    st = SentenceTransformer(str(TextEncoder().path), device="cpu")
    backends = {"torch fp32": {"backend": "torch"}, "onnx fp32": {"backend": "onnx"},
                "onnx int8": {"backend": "onnx-int8"}}  # fmt: skip
    if cpu_has_bf16():
        backends["torch bf16"] = {"backend": "torch", "dtype": "bf16"}
    rows: dict[tuple[str, int], Callable[[list[str]], np.ndarray]] = {}
    for size in sizes:
        rows[("sentence-transformers", size)] = lambda b, s=size: st.encode(
            b, batch_size=s, show_progress_bar=False
        )
        for name, kw in backends.items():
            rows[(name, size)] = TextEncoder(batch_size=size, threads=threads, **kw).load().encode
    torch.set_num_threads(threads)  # loading a torch backend sets it too: the same value, said once more
    for encode in rows.values():  # warm-up: first-call allocations, lazy inits
        encode(texts[:64])
    per_round: dict[tuple[str, int], list[float]] = {key: [] for key in rows}
    for _ in range(args.rounds):
        for key, encode in rows.items():
            start = time.perf_counter()
            encode(texts)
            per_round[key].append(len(texts) / (time.perf_counter() - start))
    best = {key: max(v) for key, v in per_round.items()}
    baseline = max(best[("sentence-transformers", s)] for s in sizes)
    names = ["sentence-transformers", *backends]
    lines = [
        "# Encoder titles/s by CPU batch size",
        "",
        f"`python benchmarks/encoder_batch.py --titles {args.titles} --batch-sizes {args.batch_sizes} "
        f"--rounds {args.rounds}`: {args.titles:,} MovieLens titles, {threads} threads for every row, "
        f"rows round-robin; best of {args.rounds} rounds (median in brackets); in the last column, each "
        "row's best size against sentence-transformers' best size.",
        "",
        "| backend | " + " | ".join(f"batch {s}" for s in sizes) + " | best size | × ST's best |",
        "|---|" + "---|" * (len(sizes) + 2),
    ]
    for name in names:
        cells = [f"{best[(name, s)]:,.0f} ({np.median(per_round[(name, s)]):,.0f})" for s in sizes]
        top = max(sizes, key=lambda s: best[(name, s)])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {top} | {best[(name, top)] / baseline:.2f} |")
    facts = machine_facts(threads)
    versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items() if v)
    cores = facts["cores_available"]
    lines += ["", f"Machine: {facts['cpu']}, {cores} cores available; Python {facts['python']}; {versions}."]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder-batch.md").write_text(markdown)
    result = {"titles": args.titles, "threads": threads, "rounds": args.rounds, "machine": facts,
              "titles_per_s": {f"{n} @ {s}": per_round[(n, s)] for n, s in rows}}  # fmt: skip
    (args.out / "encoder-batch.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
