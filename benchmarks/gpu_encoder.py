"""Encoder throughput on one GPU: fp16 and bf16, a few batch sizes, with and without tokenisation.

    python benchmarks/gpu_encoder.py [--count 200000] [--batch-sizes 256,1024,4096] [--out FILE]
    python benchmarks/gpu_encoder.py --dry-run      # no GPU needed: the same code on the CPU, tiny sizes

Texts: the MovieLens titles (``Item.encoder_text``), repeated to ``--count``. For each dtype and batch size,
titles/s of ``TextEncoder(device="cuda")`` measured four ways, each over all the texts:

- ``forward``: batches already tokenised, padded and on the GPU: the model alone (an upper bound);
- ``ids``: ``encode_ids`` from token ids (padding, host-to-device copies, the model, results back);
- ``strings``: ``encode`` from the strings, the next chunk tokenised in a thread while this one runs;
- ``strings-serial``: ``encode`` with every text tokenised before the first forward pass (no overlap),
  to show what the overlap buys.

Also the Rust tokenizer alone (titles/s) and the smallest cosine of each dtype's vectors to the CPU fp32
ones on 1,000 titles. Sized to finish in well under 5 minutes on one H100/H200. Writes
``benchmarks/results/gpu-encoder.json`` (a dry run writes only where ``--out`` says). Without CUDA it
stops with a message, unless ``--dry-run``.
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

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models import encoder as encoder_module  # noqa: E402
from models.encoder import TextEncoder, _pad  # noqa: E402
from models.sources import movielens_items  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "gpu-encoder.json"
MODES = ("forward", "ids", "strings", "strings-serial")


def movielens_titles(n: int) -> list[str]:
    """``encoder_text`` of the MovieLens movies by id, repeated from the start up to ``n`` texts."""
    items = movielens_items()
    texts = [items[movie].encoder_text for movie in sorted(items, key=int)]
    return [texts[i % len(texts)] for i in range(n)]


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_modes(encoder: TextEncoder, texts: list[str], ids: list[list[int]]) -> dict[str, float]:
    """Titles/s of each of ``MODES`` for ``encoder`` as configured (device, dtype, batch size)."""
    import torch

    device = encoder.device_name
    order = np.argsort([len(row) for row in ids], kind="stable")
    batches = []  # the forward mode's input: sorted, padded, on the device before the clock starts
    for start in range(0, len(order), encoder.batch_size):
        padded = _pad([ids[i] for i in order[start : start + encoder.batch_size]], 0)
        batches.append(tuple(torch.from_numpy(a).to(device) for a in padded))
    _synchronize(device)
    result: dict[str, float] = {}

    start = time.perf_counter()
    for batch in batches:
        encoder._run(*batch)  # the loaded backend's forward pass (tensors already on the device)
    _synchronize(device)
    result["forward"] = len(texts) / (time.perf_counter() - start)
    del batches

    start = time.perf_counter()
    encoder.encode_ids(ids)
    result["ids"] = len(texts) / (time.perf_counter() - start)

    start = time.perf_counter()
    encoder.encode(texts)
    result["strings"] = len(texts) / (time.perf_counter() - start)

    chunk_batches = encoder_module.CHUNK_BATCHES
    encoder_module.CHUNK_BATCHES = len(texts)  # one chunk: tokenise everything, then run
    try:
        start = time.perf_counter()
        encoder.encode(texts)
        result["strings-serial"] = len(texts) / (time.perf_counter() - start)
    finally:
        encoder_module.CHUNK_BATCHES = chunk_batches
    return {mode: round(result[mode], 1) for mode in MODES}


def run(count: int, batch_sizes: list[int], dtypes: list[str], device: str) -> dict[str, Any]:
    """Every (dtype, batch size) over ``count`` titles on ``device``; the results dict."""
    import torch

    began = time.perf_counter()
    texts = movielens_titles(count)
    reference_texts = texts[: min(1000, count)]
    reference = TextEncoder(backend="onnx").encode(reference_texts)  # CPU fp32: the vectors to stay near
    on_gpu = device.startswith("cuda")
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/gpu_encoder.py", *sys.argv[1:]]),
        "count": count,
        "device": torch.cuda.get_device_name(0) if on_gpu else f"cpu ({platform.processor()})",
        "cpu_cores": os.cpu_count(),
        "versions": versions,
        "runs": [],
    }
    for dtype in dtypes:
        encoder = TextEncoder(device=device, backend="torch", dtype=dtype).load()
        start = time.perf_counter()
        ids = encoder.tokenize(texts)
        tokenizer_per_s = count / (time.perf_counter() - start)
        vectors = encoder.encode(reference_texts)
        min_cos = float((vectors * reference).sum(1).min())
        for batch_size in batch_sizes:
            encoder.batch_size = batch_size
            encoder.encode(texts[: batch_size * 2])  # warm-up: kernels chosen for these shapes, allocator
            per_s = time_modes(encoder, texts, ids)
            row = {"dtype": dtype, "name": encoder.name, "batch_size": batch_size, "titles_per_s": per_s,
                   "tokenizer_titles_per_s": round(tokenizer_per_s, 1),
                   "min_cosine_to_cpu_fp32": round(min_cos, 6)}  # fmt: skip
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
        del encoder
        if on_gpu:
            torch.cuda.empty_cache()
    results["seconds"] = round(time.perf_counter() - began, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} (a dry run: none)")
    dry_help = "on the CPU, 64 titles, batch sizes 16 and 64: checks the script, times nothing useful"
    parser.add_argument("--dry-run", action="store_true", help=dry_help)
    args = parser.parse_args()
    import torch

    if args.dry_run:
        device, count, batch_sizes = "cpu", min(args.count, 64), [16, 64]
    elif not torch.cuda.is_available():
        sys.exit("gpu_encoder.py: CUDA is not available (torch.cuda.is_available() is False); this benchmark "
                 "needs an NVIDIA GPU. Run it with --dry-run to check its CPU-side logic.")  # fmt: skip
    else:
        device, count, batch_sizes = "cuda", args.count, [int(b) for b in args.batch_sizes.split(",")]
    results = run(count, batch_sizes, args.dtypes.split(","), device)
    results["dry_run"] = args.dry_run
    out = args.out or (None if args.dry_run else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    print(f"{results['seconds']} s")


if __name__ == "__main__":
    main()
