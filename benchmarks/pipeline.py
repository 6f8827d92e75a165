"""One worker on a real broker: sustained throughput, event -> update latency, memory and state size.

    python benchmarks/pipeline.py [--events N] [--users U] [--loads 1000,5000] [--snapshot] [--out DIR]

The stream is ``benchmarks/synthetic.py``'s: U users (10,000 by default), MovieLens items with Zipf
popularity. Each scenario runs a fresh worker (``interest-stream worker``, default settings) on fresh
topics of one broker (started here unless ``KAFKA_BOOTSTRAP_SERVERS`` is set):

- **throughput, warm cache**: N events are in the topics before the worker starts; events/s from its
  first update to the update that completes the last user. The embedding cache holds every item.
- **throughput, cold cache**: the same with an empty embedding cache (the encoder runs in the stream).
- **throughput, serving a snapshot** (``--snapshot``): warm cache, with a model snapshot on the model topic
  (``benchmarks/snapshot.py``: the ranker learned on the stream, an untrained sequence model), so that
  every update carries the model's user vector and ``INTEREST_RECOMMENDATIONS_K`` recommendations, as a
  worker whose trainer runs serves them.
- **latency at an offered load**: a running, caught-up worker (warm cache, 15 s of warm-up at 100 events/s);
  a producer sends at a fixed
  rate for ``--seconds``; the latency of an event is from its send to the receipt of the first update
  that names it in ``last_event`` (an event that a newer one of the same user overtakes inside a batch
  is not named; those are left out). ``max`` offers as fast as one producer can. Each load also says
  what the broker received per second for the worker's topics (the partitions' sizes before and after,
  from the broker's log-dir description): the events, the updates, and the changelogs of the user states
  and the heads, which a worker writes once per micro-batch, however few events it holds.
- worker RSS (VmHWM, its peak) and the user-state bytes: the mean serialized state, and the RocksDB
  files of the user-state table over the users it holds.

Machine facts go with the figures; ``run()`` returns them all as a dict (``interest-stream bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from benchmarks.synthetic import DEFAULT_EXPONENT, zipf_stream  # noqa: E402
from models.events import Item  # noqa: E402
from models.sources import movielens_items  # noqa: E402
from streams.devbroker import LocalBroker, free_port  # noqa: E402
from streams.settings import Settings, build_core  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

TOPICS = ("click", "cart", "order", "items", "updates", "dlq", "model")


class Worker:
    """A worker process on its own topics and state dir; the test harness's view of it."""

    def __init__(self, bootstrap: str, work: Path, tag: str, cache: Path | None, extra_env: dict) -> None:
        self.prefix = f"bench-{uuid.uuid4().hex[:6]}-{tag}"
        self.state = work / self.prefix
        if cache is not None:
            shutil.copytree(cache, self.state / "embedding-cache")
        self.env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, INTEREST_APP_ID=self.prefix,
                        INTEREST_WEB_PORT=str(free_port()), INTEREST_STATE_DIR=str(self.state),
                        **{f"INTEREST_{t.upper()}_TOPIC": f"{self.prefix}-{t}" for t in TOPICS},
                        **extra_env)  # fmt: skip
        self.settings = Settings.load(self.env)
        ensure_topics(self.settings)
        self.bootstrap = bootstrap
        self.log = work / f"{self.prefix}.log"
        self.proc: subprocess.Popen | None = None

    def producer(self) -> KafkaProducer:
        return KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, batch_size=256 * 1024)

    def send_items(self, items: dict[str, Item]) -> None:
        producer = self.producer()
        for item_id, item in items.items():
            value = {"title": item.title, "text": item.text, "categories": list(item.categories)}
            producer.send(self.settings.items_topic, key=item_id.encode(), value=json.dumps(value).encode())
        producer.flush()

    def updates(self) -> KafkaConsumer:
        return KafkaConsumer(self.settings.updates_topic, bootstrap_servers=self.bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=50)  # fmt: skip

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=self.env, cwd=REPO,
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115  # fmt: skip

    def weights_loaded(self) -> bool:
        """Whether the worker's encoder weights are in (its ``/metrics`` gauge); False while it is not up."""
        url = f"http://127.0.0.1:{self.env['INTEREST_WEB_PORT']}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return False
        samples = (s for family in text_string_to_metric_families(text) for s in family.samples)
        return any(s.name == "interest_encoder_weights_loaded" and s.value == 1.0 for s in samples)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the worker process has used so far: its own cost, apart from the
        broker's and this script's, which share the machine's cores."""
        return process_cpu_s(self.proc.pid)

    def state_bytes_on_disk(self) -> int:
        tables = self.state / "faust"
        return sum(f.stat().st_size for f in tables.rglob("*") if f.is_file() and "user-state" in str(f))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def throughput(bootstrap: str, work: Path, records, items, cache: Path | None, tag: str, env=None,  # noqa: ANN001
               snapshot: bytes | None = None) -> dict:  # fmt: skip
    """events/s from the first update to the last of a worker started on a full backlog (with
    ``snapshot`` on its model topic: the bundled models it then serves in every update)."""
    worker = Worker(bootstrap, work, tag, cache, env or {})
    worker.send_items(items)
    producer = worker.producer()
    if snapshot is not None:
        from streams.model_sync import snapshot_records

        for key, value in snapshot_records(snapshot, 1, 0):
            producer.send(worker.settings.model_topic, key=key, value=value)
    for etype, event in records:
        producer.send(worker.settings.topic_for(etype), key=event["user_id"].encode(),
                      value=json.dumps(event).encode())  # fmt: skip
    producer.flush()
    expected: dict[str, int] = {}
    for _, event in records:
        expected[event["user_id"]] = expected.get(event["user_id"], 0) + 1
    consumer = worker.updates()
    worker.start()
    seen: dict[str, int] = {}
    first, cpu_first = None, 0.0
    t0 = time.perf_counter()
    try:
        while any(seen.get(u, 0) < n for u, n in expected.items()):
            for msg in consumer:
                update = json.loads(msg.value)
                seen[update["user_id"]] = update["events_applied"]
                if first is None:
                    first, cpu_first = time.perf_counter(), worker.cpu_s()
            if time.perf_counter() - t0 > 1800:
                raise SystemExit(f"timed out; see {worker.log}")
        last = time.perf_counter()
        cpu = worker.cpu_s() - cpu_first
        rss = worker.peak_rss_mb()
        states = [u for u in seen]
    finally:
        worker.stop()
    return {
        "events": len(records),
        "users": len(expected),
        "events_per_s": len(records) / (last - first),
        "worker_cpu_ms_per_event": 1000 * cpu / len(records),
        "first_update_s": first - t0,
        "peak_rss_mb": rss,
        "user_state_bytes_on_disk_per_user": worker.state_bytes_on_disk() / max(len(states), 1),
    }


def topic_bytes(bootstrap: str, worker: Worker) -> dict[str, int]:
    """Bytes the broker holds for ``worker``'s topics, by kind (events, updates, user states, heads)."""
    from kafka import KafkaAdminClient

    prefix = worker.prefix
    kinds = {f"{prefix}-{t}": "events" for t in ("click", "cart", "order")}
    kinds |= {f"{prefix}-updates": "updates", f"{prefix}-user-state-changelog": "user_states",
              f"{prefix}-heads-changelog": "heads"}  # fmt: skip
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_log_dirs(list(kinds))
    finally:
        admin.close()
    out = dict.fromkeys(sorted(set(kinds.values())), 0)
    for broker in described:
        for log_dir in broker.get("log_dirs", []):
            for topic in log_dir.get("topics", []):
                for partition in topic.get("partitions", []):
                    out[kinds[topic["name"]]] += partition["partition_size"]
    return out


def latency(bootstrap: str, work: Path, users: int, items, cache: Path, loads: list, seconds: float) -> list:
    """Event -> update latency of one warm, caught-up worker at each offered load (events/s; 0: max)."""
    worker = Worker(bootstrap, work, "latency", cache, {})
    worker.send_items(items)
    producer = worker.producer()
    consumer = worker.updates()
    item_ids = list(items)
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            for msg in consumer:
                event_id = json.loads(msg.value)["last_event"]["event_id"]
                received.setdefault(event_id, time.perf_counter())

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    worker.start()
    out = []
    try:
        # Measure a worker past its start: its encoder weights loaded (the loading thread's imports hold
        # the interpreter for seconds, and while they ran a load of 200 events/s measured p95 543 ms
        # against 86 ms afterwards; 15 s of warm-up had been taken to cover them and did not), then 15 s
        # of warm-up at 100 events/s (the catalogue read, events applied).
        t_start = time.perf_counter()
        _wait_for(worker.weights_loaded, 300, worker)
        out.append({"weights_loaded_after_s": time.perf_counter() - t_start})
        warm = [(t, {**e, "event_id": f"warm-{n}", "ts": time.time()})
                for n, (t, e) in enumerate(zipf_stream(1500, users, seed=9, items=item_ids))]  # fmt: skip
        _send_paced(producer, worker.settings, warm, 100, sent)
        _wait_for(lambda: all(e["event_id"] in received for _, e in warm[-20:]), 300, worker)
        for n, load in enumerate(loads):
            count = int(load * seconds) if load else 20_000
            records = list(zipf_stream(count, users, seed=100 + n, user_prefix="u", items=item_ids))
            records = [(t, {**e, "event_id": f"L{n}-{e['event_id']}", "ts": time.time()}) for t, e in records]
            size_before = topic_bytes(bootstrap, worker)
            t0 = time.perf_counter()
            _send_paced(producer, worker.settings, records, load, sent)
            achieved = len(records) / (time.perf_counter() - t0)
            finals = list({e["user_id"]: e["event_id"] for _, e in records}.values())  # each user's last
            _wait_for(lambda finals=finals: all(i in received for i in finals), 600, worker)
            took = time.perf_counter() - t0
            size_after = topic_bytes(bootstrap, worker)
            waits = sorted(received[e["event_id"]] - sent[e["event_id"]] for _, e in records
                           if e["event_id"] in received)  # fmt: skip
            out.append({
                "offered_events_per_s": load or "max",
                "sent_events_per_s": achieved,
                "applied_events_per_s": len(records) / (max(received[i] for i in finals) - t0),
                "named": len(waits),
                "p50_ms": 1e3 * waits[len(waits) // 2],
                "p95_ms": 1e3 * waits[int(len(waits) * 0.95)],
                "p99_ms": 1e3 * waits[int(len(waits) * 0.99)],
                "broker_mb_per_s": {k: (size_after[k] - size_before[k]) / took / 1e6 for k in size_after},
            })  # fmt: skip
            print(f"  latency at {load or 'max'}: {out[-1]}", flush=True)
        out.append({"peak_rss_mb": worker.peak_rss_mb()})
    finally:
        stop.set()
        worker.stop()
    return out


def _send_paced(producer: KafkaProducer, settings: Settings, records, rate: float, sent: dict) -> None:
    """Send at ``rate`` events/s (0: as fast as possible), stamping each event's send time."""
    t0 = time.perf_counter()
    for n, (etype, event) in enumerate(records):
        if rate:
            ahead = t0 + n / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        value = json.dumps(event).encode()
        sent[event["event_id"]] = time.perf_counter()
        producer.send(settings.topic_for(etype), key=event["user_id"].encode(), value=value)
        if rate and n % 50 == 0:
            producer.flush()  # keep the client's linger from adding its own delay at low rates
    producer.flush()


def _wait_for(done, timeout_s: float, worker: Worker) -> None:
    t0 = time.perf_counter()
    while not done():
        if time.perf_counter() - t0 > timeout_s:
            raise SystemExit(f"timed out waiting for updates; see {worker.log}")
        time.sleep(0.05)


def warm_cache(work: Path, items: dict[str, Item]) -> tuple[Path, dict[str, np.ndarray]]:
    """An embedding cache holding every item (the encoder as the worker configures it), and the items'
    vectors by item id."""
    state = work / "warm"
    core = build_core(Settings.load(dict(os.environ, INTEREST_STATE_DIR=str(state))))
    by_text = core.embed(list(items.values()))
    core.encoder.close()
    return state / "embedding-cache", {i: by_text[item.encoder_text] for i, item in items.items()}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def bench_broker(work: Path) -> Iterator[tuple[str, int | None]]:
    """The broker a benchmark runs against, as (bootstrap, its pid): KAFKA_BOOTSTRAP_SERVERS where set
    (pid None: not ours to measure), else a local broker of its own under ``work``, stopped at the end."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if bootstrap:
        yield bootstrap, None
        return
    broker = LocalBroker(work / "broker")
    info = broker.start()
    try:
        yield info.bootstrap, info.pid
    finally:
        broker.stop()


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "python": sys.version.split()[0],
    }


def run(events: int = 50_000, users: int = 10_000, loads: tuple = (1000, 5000, 0), seconds: float = 20.0,
        cold: bool = True, base64: bool = False, work: Path | None = None,
        snapshot: bool = False) -> dict:  # fmt: skip
    work = work or Path(tempfile.mkdtemp(prefix="interest-pipeline-"))
    with bench_broker(work) as (bootstrap, _):
        catalogue = movielens_items()
        records = list(zipf_stream(events, users))
        items = {e["item_id"]: catalogue[e["item_id"]] for _, e in records}
        all_items = {i: catalogue[i] for i in catalogue}
        stream = {"events": events, "users": users, "items": len(items), "zipf_exponent": DEFAULT_EXPONENT}
        result: dict = {"machine": machine(), "stream": stream}
        cache, vectors = warm_cache(work, all_items)
        result["warm"] = throughput(bootstrap, work, records, items, cache, "warm")
        print(f"  warm cache: {result['warm']}", flush=True)
        if snapshot:
            from benchmarks.snapshot import served_snapshot

            served = served_snapshot(records, {i: vectors[i] for i in items}, Settings.load().model)
            result["warm_snapshot"] = throughput(bootstrap, work, records, items, cache, "snap", None, served)
            print(f"  warm cache, serving a model snapshot: {result['warm_snapshot']}", flush=True)
        if base64:
            env = {"INTEREST_UPDATE_VECTORS": "base64"}
            result["warm_base64"] = throughput(bootstrap, work, records, items, cache, "b64", env)
            print(f"  warm cache, base64 vectors: {result['warm_base64']}", flush=True)
        if cold:
            result["cold"] = throughput(bootstrap, work, records, items, None, "cold")
            print(f"  cold cache: {result['cold']}", flush=True)
        if loads:
            result["latency"] = latency(bootstrap, work, users, all_items, cache, list(loads), seconds)
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--loads", default="1000,5000,0", help="offered events/s, comma-separated; 0 = max")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each offered load lasts")
    ap.add_argument("--no-cold", action="store_true")
    ap.add_argument(
        "--base64", action="store_true", help="also a warm run with INTEREST_UPDATE_VECTORS=base64"
    )
    ap.add_argument("--snapshot", action="store_true", help="also a warm run serving a model snapshot")
    ap.add_argument("--out", type=Path, default=None, help="write pipeline.json here")
    args = ap.parse_args()
    loads = tuple(int(x) for x in args.loads.split(",") if x.strip())
    result = run(args.events, args.users, loads, args.seconds, not args.no_cold, args.base64,
                 snapshot=args.snapshot)  # fmt: skip
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "pipeline.json").write_text(text)


if __name__ == "__main__":
    main()
