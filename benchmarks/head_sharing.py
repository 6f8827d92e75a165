"""Does the head learn as well with several workers? Prequential acc@1 of the worker's head replicas on
the same MovieLens stream with 1 and with 2 workers (and with the replica exchange off).

    python benchmarks/head_sharing.py [--events 20000] [--sync-s 2]

Each run starts its own workers on a local broker, sends the first N MovieLens ratings, waits until every
user's update counts all the user's events, then reads the replicas from the heads changelog: acc@1 is
their summed hit@1 over their summed count (every event is tested before it is learned, by the replica of
its user's partition).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaConsumer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import faults  # noqa: E402

from models.encoder import TextEncoder  # noqa: E402
from models.head import SoftmaxHead  # noqa: E402
from models.sources import movielens_events, movielens_items  # noqa: E402
from streams.devbroker import LocalBroker  # noqa: E402


def run(bootstrap: str, work: Path, encoder: TextEncoder, workers: int, sync_s: float, n: int) -> dict:
    items = movielens_items()
    records = list(movielens_events(limit=n))
    used = {e["item_id"]: items[e["item_id"]] for _, e in records}
    cluster = faults.Cluster(bootstrap, work, f"heads{workers}", INTEREST_HEAD_SYNC_S=str(sync_s))
    expected = faults.expected_states(cluster, records, used, encoder)
    watcher = faults.Watcher(cluster)
    watcher.start()
    t0 = time.monotonic()
    try:
        cluster.send_catalog(used)
        for k in range(workers):
            cluster.start(f"w{k}")
        cluster.send(records).join()
        converged = faults.wait_converged(watcher, expected, 900)
    finally:
        cluster.stop_all()
        watcher.stop()
    consumer = KafkaConsumer(f"{cluster.prefix}-heads-changelog", bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000,
                             max_partition_fetch_bytes=16 * 1024**2)  # fmt: skip
    replicas = [SoftmaxHead.from_bytes(v) for v in {m.key: m.value for m in consumer}.values()]
    consumer.close()
    n_tested = sum(h.stats.n for h in replicas)
    return {
        "workers": workers,
        "head_sync_s": sync_s,
        "converged": converged,
        "events tested": n_tested,
        "acc@1": round(sum(h.stats.hit1 for h in replicas) / max(n_tested, 1), 4),
        "hit@5": round(sum(h.stats.hit5 for h in replicas) / max(n_tested, 1), 4),
        "seconds": round(time.monotonic() - t0),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--sync-s", type=float, default=2.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="interest-heads-"))
    broker = LocalBroker(work / "broker")
    bootstrap = broker.start().bootstrap
    encoder = TextEncoder()
    try:
        rows = [
            run(bootstrap, work, encoder, 1, args.sync_s, args.events),
            run(bootstrap, work, encoder, 2, args.sync_s, args.events),
            run(bootstrap, work, encoder, 2, 0.0, args.events),
        ]
    finally:
        broker.stop()
    for row in rows:
        print(row)
    print(
        f"acc@1 ratio, 2 workers / 1 worker (sync {args.sync_s} s): {rows[1]['acc@1'] / rows[0]['acc@1']:.3f}"
    )


if __name__ == "__main__":
    main()
