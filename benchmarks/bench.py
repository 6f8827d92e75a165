"""``interest-stream bench``: every speed figure of docs/performance.md in one run, as JSON and markdown.

Sections (each also runs alone from its own script):

1. ``encoder`` (``benchmarks/encoder.py``): titles/s of sentence-transformers one at a time and batched,
   and of our torch, ONNX fp32 and ONNX int8 backends, same titles, threads and process.
2. ``core`` (``benchmarks/core.py``): the core step, batched against the per-event reference.
3. ``pipeline`` (``benchmarks/pipeline.py``): one worker on a real broker, a Zipf stream over 10,000
   users: events/s with a warm and a cold embedding cache and with base64 vectors, event -> update
   latency at offered loads, peak RSS, state bytes per user.
4. ``ceiling`` (``benchmarks/stack_ceiling.py``): what Kafka's Python clients, a Faust agent that does
   nothing, our batching and parsing, and our worker each consume per second of one backlog.
5. ``growth`` (``benchmarks/growth.py``): events/s and bytes per user at 10k / 100k / 1M users, bytes
   and lookups per item at 10k / 100k / 1M catalogue items.

Writes ``bench.json`` and ``bench.md`` (and the sections' own files) to ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SECTIONS = ("encoder", "core", "pipeline", "ceiling", "growth")


def machine() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = next(
        (
            int(ln.split()[1]) // 1024
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        0,
    )
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_mib": mem,
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }


def run(sections: tuple[str, ...] = SECTIONS, quick: bool = False, out: Path = RESULTS) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))  # the core's per-event reference lives with the tests
    from streams.cli import limit_blas_threads

    limit_blas_threads(1)  # as in a worker
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    previous = out / "bench.json"
    if set(sections) != set(SECTIONS) and previous.exists():  # a partial run updates its sections only
        result = json.loads(previous.read_text())
    result.update({"machine": machine(), "quick": quick, "started": time.strftime("%Y-%m-%d %H:%M")})
    result.setdefault("runs", {}).update({name: result["started"] for name in sections})
    if "encoder" in sections:
        from benchmarks import encoder

        print("== encoder", flush=True)
        result["encoder"] = encoder.run(
            titles=500 if quick else 2000,
            out=out,
            naive_titles=100 if quick else 200,
            rounds=2 if quick else 5,
        )
    if "core" in sections:
        from benchmarks import core

        print("== core", flush=True)
        events = 10_000 if quick else 20_000
        result["core"] = [core.run(events, 10_000), core.run(events // 2, 10_000, classes=1000)]
        print(result["core"], flush=True)
    if "pipeline" in sections:
        from benchmarks import pipeline

        print("== pipeline", flush=True)
        if quick:
            result["pipeline"] = pipeline.run(20_000, 10_000, (1000,), 10.0, cold=False)
        else:
            loads = (200, 500, 1000, 5000, 0)
            result["pipeline"] = pipeline.run(
                50_000, 10_000, loads, 20.0, cold=True, base64=True, snapshot=True
            )
    if "ceiling" in sections:
        from benchmarks import stack_ceiling

        print("== ceiling", flush=True)
        result["ceiling"] = stack_ceiling.run(50_000 if quick else 200_000, 10_000)
    if "growth" in sections:
        from benchmarks import growth

        print("== growth", flush=True)
        sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
        result["growth"] = growth.run(sizes, sizes)
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "bench.md").write_text(markdown(result))
    print((out / "bench.md").read_text())
    return result


def _f(x: Any, digits: int = 0) -> str:
    return f"{x:,.{digits}f}" if isinstance(x, (int, float)) else str(x)


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# interest-stream bench",
        "",
        f"`interest-stream bench{' --quick' if r.get('quick') else ''}`; sections run at "
        f"{', '.join(f'{k} {v}' for k, v in r.get('runs', {}).items()) or r['started']}. "
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']:,} MiB, Python {m['python']}; "
        f"load average before {m['load_before'][0]:.2f}. The broker runs on the same machine. "
        "Ratios are measured within one run.",
        "",
    ]
    if "encoder" in r:
        lines += [
            "## Encoder (titles/s)",
            "",
            "| backend | titles/s | x naive | x ST batched |",
            "|---|---|---|---|",
        ]
        for row in r["encoder"]["rows"].values():
            lines.append(
                f"| {row['label']} | {_f(row['titles_per_s'])} | {row['vs_naive']:.2f} | "
                f"{row['vs_st_batched']:.2f} |"
            )
        lines.append("")
    if "core" in r:
        lines += [
            "## Core step (no Kafka)",
            "",
            "| stream | classes | batched events/s | per-event events/s | speed-up |",
            "|---|---|---|---|---|",
        ]
        for c in r["core"]:
            lines.append(
                f"| {c['events']:,} events, {c['users']:,} users | {c['classes']} learned | "
                f"{_f(c['batched_events_per_s'])} | {_f(c['reference_events_per_s'])} | {c['speedup']:.2f}x |"
            )
        lines.append("")
    if "pipeline" in r:
        p = r["pipeline"]
        s = p["stream"]
        lines += [
            f"## One worker on the broker ({s['events']:,} events, {s['users']:,} users, {s['items']:,} "
            f"items, Zipf exponent {s['zipf_exponent']})",
            "",
            "| run | events/s | first update after start | peak RSS | state bytes on disk per user |",
            "|---|---|---|---|---|",
        ]
        labels = {"warm": "warm cache", "cold": "cold cache", "warm_base64": "warm cache, base64 vectors",
                  "warm_snapshot": "warm cache, serving a model snapshot (vectors, lists)"}  # fmt: skip
        for name in ("warm", "cold", "warm_base64", "warm_snapshot"):
            if name in p:
                w = p[name]
                lines.append(
                    f"| {labels[name]} | {_f(w['events_per_s'])} | "
                    f"{w['first_update_s']:.1f} s | "
                    f"{_f(w['peak_rss_mb'])} MB | {_f(w['user_state_bytes_on_disk_per_user'])} |"
                )
        if "latency" in p:
            lines += [
                "",
                "| offered events/s | sent | applied | p50 ms | p95 ms | p99 ms | events named "
                "| to the broker, MB/s: heads / user states / updates / events |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for row in p["latency"]:
                if "p50_ms" in row:
                    sizes = row.get("broker_mb_per_s")  # absent from runs before 2026-12-01
                    kinds = ("heads", "user_states", "updates", "events")
                    written = " / ".join(f"{sizes[k]:.2f}" for k in kinds) if sizes else "-"
                    lines.append(
                        f"| {row['offered_events_per_s']} | {_f(row['sent_events_per_s'])} | "
                        f"{_f(row['applied_events_per_s'])} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                        f"{row['p99_ms']:.1f} | {row['named']:,} | {written} |"
                    )
        lines.append("")
    if "ceiling" in r:
        from benchmarks.stack_ceiling import markdown as ceiling_markdown

        title = "## The stack's ceiling (one backlog, each consumer alone)"
        lines += [title, "", ceiling_markdown(r["ceiling"])]
    if "growth" in r:
        g = r["growth"]
        lines += [
            "## Growth",
            "",
            "| users | events/s (core + RocksDB) | disk bytes per user | mean state bytes |",
            "|---|---|---|---|",
        ]
        for u in g["users"]:
            lines.append(
                f"| {u['users']:,} | {_f(u['events_per_s'])} | {_f(u['disk_bytes_per_user'])} | "
                f"{_f(u['mean_state_bytes'])} |"
            )
        lines += [
            "",
            "| items | catalogue bytes/item | embedding cache bytes/item | gets/s (unparsed) | "
            "gets/s (parsed) | embedding-cache hits/s |",
            "|---|---|---|---|---|---|",
        ]
        for c in g["catalogue"]:
            lines.append(
                f"| {c['items']:,} | {_f(c['catalog_disk_bytes_per_item'])} | "
                f"{_f(c['embedding_cache_disk_bytes_per_item'])} | {_f(c['catalog_gets_per_s_cold'])} | "
                f"{_f(c['catalog_gets_per_s_parsed'])} | {_f(c['embedding_cache_hits_per_s'])} |"
            )
        lines.append("")
    return "\n".join(lines)
