"""Worker throughput and latency on a real local broker, against the core alone, in one script.

    python benchmarks/worker_throughput.py [--events N] [--users U] [--sequence-model] [--recommendations]
                                           [--trainer]

Prints: broker start time, encoder texts/s (cold cache), core events/s (replay driver, warm cache), worker
events/s end to end through Kafka (warm cache), their ratio, and the time from worker start to its first
update; with ``--sequence-model``, a second worker that also serves the sequential model, and its ratio to
the first; with ``--trainer``, how fast the one trainer learns the same events, against the worker: the
stream it keeps up with. The worker reuses the embedding cache the baseline filled, so both sides measure
the same work.

The events are the MovieLens ratings in file order (610 users, one user's burst after another, so a
micro-batch touches few users), or with ``--users U`` the generated stream of ``benchmarks/synthetic.py``
(U users, Zipf item popularity), where a batch touches about as many users as it has events and per-user
work (a state, an update, a recommended list) shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.pipeline import bench_broker  # noqa: E402
from models.cache import CachedEncoder  # noqa: E402
from models.core import InterestCore  # noqa: E402
from models.encoder import TextEncoder  # noqa: E402
from models.events import Item  # noqa: E402
from models.replay import replay  # noqa: E402
from models.sources import movielens_events, movielens_items  # noqa: E402
from streams.devbroker import free_port  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=0,
                    help="a generated Zipf stream over this many users, not MovieLens")  # fmt: skip
    ap.add_argument("--sequence-model", action="store_true",
                    help="also run a worker serving the sequential model")  # fmt: skip
    ap.add_argument("--recommendations", action="store_true",
                    help="also run a worker serving the sequential model and the next-item ranker (every "
                         "update then carries recommendations)")  # fmt: skip
    ap.add_argument("--trainer", action="store_true",
                    help="also time the trainer catching up on the same events")  # fmt: skip
    ap.add_argument("--trainer-sync-s", type=float, default=10.0, help="the trainer's snapshot interval")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="interest-bench-"))
    t = time.perf_counter()
    with bench_broker(work) as (bootstrap, pid):  # stopped however the run ends
        if pid is not None:
            print(f"broker start: {time.perf_counter() - t:.2f} s")
        measure(args, work, bootstrap)


def measure(args: argparse.Namespace, work: Path, bootstrap: str) -> None:
    run = uuid.uuid4().hex[:6]
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, INTEREST_APP_ID=f"bench-{run}",
               INTEREST_STATE_DIR=str(work / "worker"), INTEREST_WEB_PORT=str(free_port()),
               **{f"INTEREST_{t.upper()}_TOPIC": f"bench-{run}-{t}"
                  for t in ("click", "cart", "order", "items", "updates", "dlq")})  # fmt: skip
    settings = Settings.load(env)
    items = movielens_items()
    if args.users:
        from benchmarks.synthetic import zipf_stream

        records = list(zipf_stream(args.events, args.users))
        print(f"stream: {args.events:,} generated events over {args.users:,} users (Zipf item popularity)")
    else:
        records = list(movielens_events(limit=args.events))
    used: dict[str, Item] = {e["item_id"]: items[e["item_id"]] for _, e in records}

    # Baseline 1: the encoder on a cold cache (the cache is the worker's, so it starts warm).
    cache = CachedEncoder(TextEncoder(), work / "worker" / "embedding-cache")
    texts = [i.encoder_text for i in used.values()]
    t = time.perf_counter()
    cache.embed(texts)
    enc_s = time.perf_counter() - t
    print(f"encoder, cold: {len(texts)} texts in {enc_s:.1f} s = {len(texts) / enc_s:.0f} texts/s")

    # Baseline 2: the core alone (file replay), warm cache.
    core = InterestCore(settings.model, cache)
    t = time.perf_counter()
    result = replay(records, core, used, batch_size=settings.max_batch)
    core_s = time.perf_counter() - t
    core_rate = len(records) / core_s
    print(f"core replay, warm: {len(records)} events in {core_s:.2f} s = {core_rate:,.0f} events/s")
    expected = {u: s.events_applied for u, s in result.states.items()}
    item_vectors = {i: core.embed([item])[item.encoder_text] for i, item in used.items()}
    cache.close()

    # The worker, end to end through Kafka: without the sequential model, then with a snapshot of it
    # on the model topic (each update then also carries the model's user vector).
    rate, first = run_worker(bootstrap, env, run, "plain", records, used, expected, work, None)
    print(f"worker: first update {first:.1f} s after start (model load + first batch)")
    print(f"worker, warm cache: {len(records)} events, first to last update: {rate:,.0f} events/s")
    print(f"ratio worker / core alone: {rate / core_rate:.2f}")
    if args.sequence_model:
        from models.sequence import SequenceModel

        # Untrained weights: the cost of a forward pass does not depend on what the weights are.
        snapshot = SequenceModel(core.dim).to_bytes()
        seq_rate, _ = run_worker(bootstrap, env, run, "seq", records, used, expected, work, snapshot)
        print(f"worker with the sequential model: {seq_rate:,.0f} events/s "
              f"({seq_rate / rate:.2f} of the worker without it)")  # fmt: skip
    if args.recommendations:
        from benchmarks.snapshot import served_snapshot

        snapshot = served_snapshot(records, item_vectors, settings.model)
        rec_rate, _ = run_worker(bootstrap, env, run, "recs", records, used, expected, work, snapshot)
        print(f"worker with the sequential model and recommendations (the mix, share "
              f"{settings.model.sequence_mix}): {rec_rate:,.0f} events/s "
              f"({rec_rate / rate:.2f} of the worker without either)")  # fmt: skip
        alone = dict(env, INTEREST_SEQUENCE_MIX="0")
        alone_rate, _ = run_worker(bootstrap, alone, run, "alone", records, used, expected, work, snapshot)
        print(f"the same, recommendations from the ranker alone (INTEREST_SEQUENCE_MIX=0): "
              f"{alone_rate:,.0f} events/s ({alone_rate / rate:.2f}); "
              f"the mix costs {1 - rec_rate / alone_rate:.0%}")  # fmt: skip
    if args.trainer:
        learn_rate, intervals = run_trainer(bootstrap, env, run, records, used, work, args.trainer_sync_s)
        print(
            f"trainer (the sequential model and the ranker, one process for all partitions), catching "
            f"up on the same events: {learn_rate:,.0f} events/s over {intervals} snapshot intervals of "
            f"{args.trainer_sync_s:g} s ({learn_rate / rate:.2f} of the worker without a snapshot)"
        )


def run_trainer(bootstrap, env, run, records, used, work, sync_s):  # noqa: ANN001, ANN201
    """events/s a trainer learns while it catches up on ``records`` (fresh topics, warm embedding cache):
    the events learned between consecutive snapshots, over the snapshots' publish times, for the
    intervals in which it was busy throughout (both ends short of every event). Publishing is included:
    each snapshot is a checkpoint, ~35 MB out and a commit."""
    prefix = f"bench-{run}-trainer"
    state = work / "trainer"
    shutil.copytree(work / "worker" / "embedding-cache", state / "embedding-cache")
    env = dict(env, INTEREST_APP_ID=prefix, INTEREST_MODEL_SYNC_S=str(sync_s),
               **{f"INTEREST_{t.upper()}_TOPIC": f"{prefix}-{t}"
                  for t in ("click", "cart", "order", "items", "updates", "dlq", "model")})  # fmt: skip
    settings = Settings.load(env)
    send_inputs(bootstrap, settings, records, used, None)
    consumer = KafkaConsumer(settings.model_topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=200)  # fmt: skip
    log = open(work / "trainer.log", "wb")  # noqa: SIM115
    t_start = time.perf_counter()
    trainer = subprocess.Popen([sys.executable, "-m", "streams.cli", "train", "--state-dir", str(state)],
                               env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    snapshots: list[tuple[float, int]] = []  # (published at, events learned)
    try:
        while not snapshots or snapshots[-1][1] < len(records):
            for msg in consumer:
                if msg.key == b"manifest":
                    manifest = json.loads(msg.value)
                    snapshots.append((manifest["published_at"], manifest["learned_events"]))
            if time.perf_counter() - t_start > 900 or trainer.poll() is not None:
                raise SystemExit(f"the trainer did not learn every event; see {work / 'trainer.log'}")
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(60)
    busy = [(a, b) for a, b in zip(snapshots, snapshots[1:], strict=False) if b[1] < len(records)]
    if not busy:
        raise SystemExit("the trainer caught up within one snapshot interval: give it more events")
    return (busy[-1][1][1] - busy[0][0][1]) / (busy[-1][1][0] - busy[0][0][0]), len(busy)


def send_inputs(bootstrap, settings, records, used, snapshot) -> None:  # noqa: ANN001
    """The model snapshot (if any), the catalogue and the events, onto ``settings``' topics."""
    from streams.model_sync import snapshot_records

    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024,
                             max_request_size=2 * 1024**2)  # fmt: skip
    if snapshot is not None:
        for key, value in snapshot_records(snapshot, 1, 0):
            producer.send(settings.model_topic, key=key, value=value)
    for item_id, item in used.items():
        value = {"title": item.title, "text": item.text, "categories": list(item.categories)}
        producer.send(settings.items_topic, key=item_id.encode(), value=json.dumps(value).encode())
    for etype, event in records:
        producer.send(
            settings.topic_for(etype), key=event["user_id"].encode(), value=json.dumps(event).encode()
        )
    producer.flush()


def run_worker(bootstrap, env, run, tag, records, used, expected, work, snapshot):  # noqa: ANN001, ANN201
    """events/s from first to last update of one worker over ``records`` on fresh topics, and the
    seconds from its start to its first update."""
    prefix = f"bench-{run}-{tag}"
    state = work / f"worker-{tag}"  # its own tables; a copy of the embedding cache the baseline filled
    shutil.copytree(work / "worker" / "embedding-cache", state / "embedding-cache")
    env = dict(env, INTEREST_APP_ID=prefix, INTEREST_WEB_PORT=str(free_port()), INTEREST_STATE_DIR=str(state),
               **{f"INTEREST_{t.upper()}_TOPIC": f"{prefix}-{t}"
                  for t in ("click", "cart", "order", "items", "updates", "dlq", "model")})  # fmt: skip
    settings = Settings.load(env)
    send_inputs(bootstrap, settings, records, used, snapshot)
    consumer = KafkaConsumer(settings.updates_topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=100)  # fmt: skip
    log = open(work / f"worker-{tag}.log", "wb")  # noqa: SIM115
    t_start = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    seen: dict[str, int] = {}
    t_first = None
    with_vector = with_recs = n_updates = 0
    try:
        while len(seen) < len(expected) or any(seen[u] < n for u, n in expected.items()):
            for msg in consumer:
                u = json.loads(msg.value)
                seen[u["user_id"]] = u["events_applied"]
                with_vector += "sequence" in u
                with_recs += bool(u.get("recommendations"))
                n_updates += 1
                if t_first is None:
                    t_first = time.perf_counter()
            if time.perf_counter() - t_start > 900:
                raise SystemExit(f"timed out; see {work / f'worker-{tag}.log'}")
        t_end = time.perf_counter()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    if snapshot is not None:
        print(f"  {with_vector} of {n_updates} updates carried the sequential model's user vector, "
              f"{with_recs} recommendations")  # fmt: skip
    return len(records) / (t_end - t_first), t_first - t_start


if __name__ == "__main__":
    main()
