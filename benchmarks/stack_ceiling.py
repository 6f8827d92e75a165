"""The ceiling of the stack: how fast Kafka's Python clients and a Faust agent that does nothing consume.

Issue 10 asks for 20,000 events/s per worker on this 2-core machine. Before blaming our own code, this
measures what the parts under it cost on the same machine, the same broker and the same events: one
backlog of generated events (``benchmarks/synthetic.py``: many users, Zipf item popularity, keyed by
user, over the three event topics) is consumed to its end by, in turn:

1. ``kafka-python``: a ``KafkaConsumer.poll`` loop, the records untouched;
2. ``aiokafka``: a ``getmany`` loop (the client faust is built on), the records untouched;
3. ``faust``: an agent over the three topics, ``stream.events()`` with raw codecs, each event untouched
   (faust acks it: its per-record path, with nothing of ours);
4. ``faust + batches``: the same through ``streams.batching.adaptive_batches``, as our worker takes them;
5. ``faust + batches + parse``: and each event decoded and validated (``models.events.parse_event``);
6. ``worker``: our worker (``interest-stream worker``, warm embedding cache, default settings), which
   also applies each event and writes states, heads, updates and offsets (``benchmarks/pipeline.py``'s
   ``throughput``).

Each consumer runs in a process of its own, alone on the machine with the broker, on a fresh consumer
group. Its rate is timed from its first record to its last; its CPU time (user + system, all its
threads) over the same span, per event, is what it costs whatever the broker takes, and 1 / that is
what it could do with a core to itself. A client that fetches ahead (aiokafka reads up to 50 MB before
its first delivery) does part of its work before that span, so its CPU over its whole process (imports,
connecting and joining the group included) is reported too: the two bound its cost. The broker's CPU is
read over each consumer's whole run.

    python benchmarks/stack_ceiling.py [--events 200000] [--users 10000] [--no-worker] [--out DIR]

~4 min here (2 min of it the worker and its embedding cache). Writes ``stack-ceiling.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.config import EVENT_TYPES  # noqa: E402

KINDS = ("kafka-python", "aiokafka", "faust", "faust+batches", "faust+batches+parse")


class Timer:
    """Counts records; times the span from the first record to the ``n``-th (wall and process CPU)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0
        self.first: tuple[float, float] | None = None
        self.first_batch = 0

    def add(self, count: int) -> bool:
        """Count ``count`` records; True once all ``n`` are in."""
        if count and self.first is None:
            # The span starts at the first delivery, so its records are not in the rate.
            self.first, self.first_batch = (time.perf_counter(), time.process_time()), count
        self.seen += count
        return self.seen >= self.n

    def report(self) -> None:
        wall, cpu = time.perf_counter() - self.first[0], time.process_time() - self.first[1]
        timed = self.seen - self.first_batch
        whole = time.process_time()  # since the process started: imports, connecting, joining the group
        line = json.dumps({"records": self.seen, "timed": timed, "wall_s": wall, "cpu_s": cpu,
                           "process_cpu_s": whole}) + "\n"  # fmt: skip
        os.write(1, line.encode())  # fd 1 itself: faust's worker sends ``print`` to its logger


def child(kind: str, bootstrap: str, topics: list[str], n: int, group: str) -> None:
    timer = Timer(n)
    if kind == "kafka-python":
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group,
                                 auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
        while not timer.add(sum(len(r) for r in consumer.poll(timeout_ms=200, max_records=5000).values())):
            pass
        timer.report()
        return
    if kind == "aiokafka":
        from aiokafka import AIOKafkaConsumer

        async def consume() -> None:
            consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group,
                                        auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
            await consumer.start()
            try:
                while True:
                    got = await consumer.getmany(timeout_ms=200, max_records=5000)
                    if timer.add(sum(len(r) for r in got.values())):
                        break
            finally:
                timer.report()
                await consumer.stop()

        asyncio.run(consume())
        return
    import faust

    from models.events import parse_event
    from streams.batching import adaptive_batches
    from streams.devbroker import free_port
    from streams.settings import Settings

    settings = Settings.load()
    work = tempfile.mkdtemp(prefix="stack-ceiling-")
    app = faust.App(group, broker=f"kafka://{bootstrap}", store="memory://", datadir=work,
                    web_port=free_port(), autodiscover=False, key_serializer="raw", value_serializer="raw",
                    topic_partitions=settings.partitions, consumer_max_fetch_size=settings.max_fetch_bytes,
                    consumer_auto_offset_reset="earliest")  # fmt: skip
    topic = app.topic(*topics)
    type_of = dict(zip(topics, EVENT_TYPES, strict=True))

    def done() -> None:
        timer.report()
        os._exit(0)  # faust's orderly stop takes seconds and measures nothing

    @app.agent(topic)
    async def count(stream):  # noqa: ANN001, ANN202
        if kind == "faust":
            async for _ in stream.events():
                if timer.add(1):
                    done()
        async for batch in adaptive_batches(stream.events(), settings.max_batch, 0.0):
            if kind == "faust+batches+parse":
                for ev in batch:
                    parse_event(ev.value, type_of[ev.message.topic], ev.key, offset=ev.message.offset)
            if timer.add(len(batch)):
                done()

    sys.argv = ["stack-ceiling", "worker", "-l", "warn"]
    app.main()


def run_child(kind: str, bootstrap: str, topics: list[str], n: int, broker_pid: int | None) -> dict:
    from benchmarks.pipeline import process_cpu_s

    group = f"ceiling-{uuid.uuid4().hex[:6]}"
    broker_before = process_cpu_s(broker_pid) if broker_pid else None
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--bootstrap", bootstrap, "--events",
                          str(n), "--group", group, *topics], capture_output=True, text=True, cwd=REPO,
                         timeout=900)  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"{kind} reported nothing (exit {out.returncode}):\n{out.stderr[-3000:]}")
    got = json.loads(lines[-1])
    row = {"consumer": kind, "events_per_s": got["timed"] / got["wall_s"],
           "cpu_ms_per_event": 1000 * got["cpu_s"] / got["timed"], "timed_events": got["timed"],
           "process_cpu_ms_per_event": 1000 * got["process_cpu_s"] / got["records"]}  # fmt: skip
    if broker_before is not None:
        row["broker_cpu_ms_per_event_whole_run"] = 1000 * (process_cpu_s(broker_pid) - broker_before) / n
    return row


def run(events: int = 200_000, users: int = 10_000, worker: bool = True) -> dict:
    """Every consumer's row on one backlog (a local broker of its own unless KAFKA_BOOTSTRAP_SERVERS)."""
    from kafka import KafkaProducer

    from benchmarks.pipeline import bench_broker, machine, process_cpu_s, throughput, warm_cache
    from benchmarks.synthetic import DEFAULT_EXPONENT, zipf_stream
    from models.sources import movielens_items
    from streams.settings import Settings
    from streams.topics import ensure_topics

    work = Path(tempfile.mkdtemp(prefix="stack-ceiling-"))
    with bench_broker(work) as (bootstrap, broker_pid):
        prefix = f"ceiling-{uuid.uuid4().hex[:6]}"
        env = {f"INTEREST_{t.upper()}_TOPIC": f"{prefix}-{t}" for t in EVENT_TYPES}
        settings = Settings.load(dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, **env))
        ensure_topics(settings)
        topics = [settings.topic_for(t) for t in EVENT_TYPES]
        records = list(zipf_stream(events, users))
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024)
        for etype, event in records:
            producer.send(settings.topic_for(etype), key=event["user_id"].encode(),
                          value=json.dumps(event).encode())  # fmt: skip
        producer.flush()
        producer.close()
        result: dict = {"machine": machine(), "events": events, "users": users, "rows": [],
                        "zipf_exponent": DEFAULT_EXPONENT, "partitions": settings.partitions}  # fmt: skip
        for kind in KINDS:
            row = run_child(kind, bootstrap, topics, events, broker_pid)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        if worker:
            catalogue = movielens_items()
            items = {e["item_id"]: catalogue[e["item_id"]] for _, e in records}
            cache, _ = warm_cache(work, items)
            before = process_cpu_s(broker_pid) if broker_pid else None
            got = throughput(bootstrap, work, records, items, cache, "ceiling")
            row = {"consumer": "worker", "events_per_s": got["events_per_s"], "timed_events": got["events"],
                   "cpu_ms_per_event": got["worker_cpu_ms_per_event"]}  # fmt: skip
            if before is not None:
                broker_s = process_cpu_s(broker_pid) - before
                row["broker_cpu_ms_per_event_whole_run"] = 1000 * broker_s / events
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--no-worker", action="store_true", help="leave out our worker's row")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--bootstrap", help=argparse.SUPPRESS)
    ap.add_argument("--group", help=argparse.SUPPRESS)
    ap.add_argument("topics", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.bootstrap, args.topics, args.events, args.group)
        return
    result = run(args.events, args.users, not args.no_worker)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stack-ceiling.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "stack-ceiling.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Stack ceiling: {result['events']:,} events over {result['users']:,} users (Zipf exponent "
        f"{result['zipf_exponent']}), 3 topics x {result['partitions']} partitions; {m['cpu']}, "
        f"{m['cores']} cores, Python {m['python']}; broker on the same machine.",
        "",
        "| consumer | events/s | its CPU ms per event | events/s on a core of its own (1 / CPU) "
        "| its whole process's CPU ms per event | broker CPU ms per event |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        broker = r.get("broker_cpu_ms_per_event_whole_run")
        broker_ms = "-" if broker is None else f"{broker:.4f}"
        whole = r.get("process_cpu_ms_per_event")
        whole_ms = "-" if whole is None else f"{whole:.4f}"
        lines.append(f"| {r['consumer']} | {r['events_per_s']:,.0f} | {r['cpu_ms_per_event']:.4f} | "
                     f"{1000 / r['cpu_ms_per_event']:,.0f} | {whole_ms} | {broker_ms} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
