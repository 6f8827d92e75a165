"""Query API latency under load: p50/p99 of the three GET endpoints with a few hundred requests in flight.

Starts a local broker, replays part of the MovieLens sample through a trainer and one worker until both
are caught up, then a local load generator (aiohttp, one process) keeps ``--concurrency`` requests in
flight for ``--seconds`` per endpoint, over random users and items. The worker serves everything itself
(one worker: no forwarding). Figures go to ``benchmarks/results/api-latency.json``.

    python benchmarks/api_latency.py [--users 200] [--concurrency 200] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import faults  # noqa: E402
import numpy as np  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from models.events import item_to_json  # noqa: E402
from models.sources import movielens_events, movielens_items  # noqa: E402
from streams.devbroker import LocalBroker  # noqa: E402


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


async def load(port: int, paths: list[str], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_client(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}{rng.choice(paths)}") as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3
    p50, p99 = (round(float(np.percentile(ms, q)), 1) for q in (50, 99))
    return {
        "requests": len(ms),
        "errors": errors,
        "per_s": round(len(ms) / elapsed, 1),
        "p50_ms": p50,
        "p99_ms": p99,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="api-latency-"))
    broker = LocalBroker(work / "broker")
    bootstrap = broker.start().bootstrap
    try:
        cluster = faults.Cluster(bootstrap, work, "api", INTEREST_MODEL_TOPIC=f"api-{os.getpid()}-model",
                                 INTEREST_MODEL_SYNC_S="5")  # fmt: skip
        s = cluster.settings
        items = movielens_items()
        records = list(movielens_events(max_users=args.users))
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        for item_id in {e["item_id"] for _, e in records}:
            producer.send(
                s.items_topic, key=item_id.encode(), value=json.dumps(item_to_json(items[item_id])).encode()
            )
        for etype, event in records:
            producer.send(s.topic_for(etype), key=event["user_id"].encode(), value=json.dumps(event).encode())
        producer.flush()
        env = dict(cluster.base_env, INTEREST_STATE_DIR=str(work / "trainer-state"))
        log = open(work / "trainer.log", "ab")  # noqa: SIM115 - the child keeps it
        train = [sys.executable, "-m", "streams.cli", "train"]
        trainer = subprocess.Popen(train, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        cluster.start("w1")
        port = cluster.ports["w1"]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                data = get_json(port, "/live/data")
                if data["lag"] == 0 and data["applied"] >= len(records) and data["model"] is not None:
                    break
            except OSError:
                pass
            time.sleep(2)
        else:
            print("the worker did not catch up", file=sys.stderr)
            return 1
        time.sleep(3 * 5)  # the trainer's newest snapshot (every 5 s) has everything by now
        users = sorted({e["user_id"] for _, e in records})
        item_ids = sorted({e["item_id"] for _, e in records})
        paths = {
            "GET /users/{id}/interest": [f"/users/{u}/interest" for u in users],
            "GET /users/{id}/recommendations?k=10": [f"/users/{u}/recommendations?k=10" for u in users],
            "GET /items/{id}/similar?k=10": [f"/items/{i}/similar?k=10" for i in item_ids],
        }
        results: dict[str, dict] = {}
        for name, ps in paths.items():
            asyncio.run(load(port, ps, 10, 2.0))  # warm-up
            for concurrency in (1, args.concurrency):  # one at a time: service time; then under load
                results.setdefault(name, {})[f"concurrency {concurrency}"] = row = asyncio.run(
                    load(port, ps, concurrency, args.seconds)
                )
                print(name, concurrency, json.dumps(row), flush=True)
        trainer.terminate()
        cluster.stop_all()
    finally:
        broker.stop()
    command = (f"python benchmarks/api_latency.py --users {args.users} --concurrency {args.concurrency} "
               f"--seconds {args.seconds:g}")  # fmt: skip
    facts = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
             "users": args.users, "events": len(records), "concurrency": args.concurrency,
             "seconds": args.seconds, "command": command}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api-latency.json").write_text(
        json.dumps({"facts": facts, "endpoints": results}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
