"""Fault injection on a real Kafka broker: the scenarios behind the worker's delivery guarantee.

Each scenario starts real worker processes (``interest-stream worker``), sends a generated workload,
breaks something (``kill -9``, a broker stop, workers joining and leaving, a deleted state folder, poison
and fuzzed records, a flood) and returns a ``Tally``: events in, applied, dead-lettered, lost, applied
twice, versions that went backwards, users whose last update is missing or stale, recovery times.

What "correct" means is computed, not assumed: the same events go through the core directly
(``models.replay``), and every user's state as the worker left it in the changelog topic must equal that
single clean pass (events_applied exactly, the embedding within 1e-5), and the last update published for
the user must carry the same count.

``tests/test_faults.py`` runs every scenario at a small size in CI and asserts zeros;
``benchmarks/faults.py`` runs them at full size and writes ``benchmarks/results/faults.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.cache import CachedEncoder  # noqa: E402
from models.core import InterestCore  # noqa: E402
from models.encoder import TextEncoder  # noqa: E402
from models.events import Item, item_to_json  # noqa: E402
from models.interest import UserState  # noqa: E402
from models.replay import replay  # noqa: E402
from models.sharding import partition_for  # noqa: E402
from models.sources import movielens_items  # noqa: E402
from streams.devbroker import free_port  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

TYPES = ("click", "cart", "order")


# -- the workload ---------------------------------------------------------------------------------------
@dataclass
class Workload:
    items: dict[str, Item]
    sends: list[tuple[str, dict]]  # (type, event) in send order; producer-side duplicates included
    unique: int

    def users(self) -> set[str]:
        return {e["user_id"] for _, e in self.sends}


def catalog(n_items: int = 300) -> dict[str, Item]:
    """The first ``n_items`` MovieLens movies: real titles, small enough to encode in seconds."""
    items = movielens_items()
    return {k: items[k] for k in sorted(items, key=int)[:n_items]}


def make_workload(n_events: int, n_users: int, *, dup_rate: float = 0.05, seed: int = 0,
                  items: dict[str, Item] | None = None, tag: str = "w") -> Workload:  # fmt: skip
    """Events of ``n_users`` users over ``items`` (Zipf-like item popularity), in time order, with a
    share ``dup_rate`` sent a second time a few records later (as a producer retry would)."""
    rng = random.Random(seed)
    items = items or catalog()
    ids = list(items)
    cum = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(ids))))  # Zipf, exponent 1
    users = [f"{tag}u{k}" for k in range(n_users)]
    sends: list[tuple[str, dict]] = []
    later: list[tuple[int, tuple[str, dict]]] = []
    ts = 1_700_000_000.0
    for n in range(n_events):
        ts += rng.expovariate(1 / 20)
        user = users[n] if n < n_users else rng.choice(users)  # every user gets at least one event
        event = {"event_id": f"{tag}{seed}-{n}", "user_id": user,
                 "item_id": rng.choices(ids, cum_weights=cum)[0], "ts": round(ts, 3)}  # fmt: skip
        record = (rng.choices(TYPES, (0.7, 0.2, 0.1))[0], event)
        sends.append(record)
        if rng.random() < dup_rate:
            later.append((n + rng.randint(1, 50), record))
        while later and later[0][0] <= n:
            sends.append(later.pop(0)[1])
    sends.extend(record for _, record in later)
    return Workload(items, sends, n_events)


# -- a cluster of worker processes on one broker --------------------------------------------------------
def stop_worker(proc: subprocess.Popen) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it takes more than 90 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Cluster:
    """Topics, settings and worker processes of one scenario, under its own app id."""

    def __init__(self, bootstrap: str, work: Path, name: str, **env: str) -> None:
        self.bootstrap = bootstrap
        self.work = work
        self.prefix = f"ft-{name}-{uuid.uuid4().hex[:6]}"
        topics = {f"INTEREST_{t.upper()}_TOPIC": f"{self.prefix}-{t}"
                  for t in ("click", "cart", "order", "items", "updates", "dlq")}  # fmt: skip
        self.base_env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, INTEREST_APP_ID=self.prefix,
                             INTEREST_PARTITIONS="4", INTEREST_MAX_WAIT_S="0.2", **topics)  # fmt: skip
        self.base_env.update(env)
        self.settings = Settings.load(self.base_env)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {}
        ensure_topics(self.settings)

    def state_dir(self, worker: str) -> Path:
        return self.work / self.prefix / worker

    def log(self, worker: str) -> Path:
        return self.work / self.prefix / f"{worker}.log"

    def start(self, worker: str) -> None:
        self.state_dir(worker).parent.mkdir(parents=True, exist_ok=True)
        self.ports.setdefault(worker, free_port())
        env = dict(self.base_env, INTEREST_STATE_DIR=str(self.state_dir(worker)),
                   INTEREST_WEB_PORT=str(self.ports[worker]))  # fmt: skip
        fh = open(self.log(worker), "ab")  # noqa: SIM115 - the child keeps it
        self.procs[worker] = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                              cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip

    def kill(self, worker: str) -> None:
        proc = self.procs.pop(worker)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self, worker: str) -> None:
        stop_worker(self.procs.pop(worker))

    def stop_all(self) -> None:
        for worker in list(self.procs):
            self.stop(worker)

    def dead(self) -> list[str]:
        """Workers that exited by themselves."""
        return [w for w, p in self.procs.items() if p.poll() is not None]

    def first_update_at(self, worker: str, lives_before: int, timeout_s: float = 120,
                        nothing_left: Callable[[], bool] = lambda: False) -> float | None:  # fmt: skip
        """Wall-clock time of the first update of the worker's next life (the time stamp of its own log
        line): recovery is measured to it, not to updates the previous life still had in flight. None
        if there is none within ``timeout_s``, or once ``nothing_left()``: a worker killed after its last
        update has nothing to publish in its next life (a CI run once waited out the timeout so, twice)."""
        from datetime import datetime

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = [line for line in self.log(worker).read_text(errors="replace").splitlines()
                     if "first interest update" in line]  # fmt: skip
            if len(lines) > lives_before:
                stamp = lines[lives_before][1:24]  # [2026-11-28 15:44:28,674]
                return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if nothing_left():  # after the log: a first update already written still counts
                return None
            time.sleep(0.2)
        return None

    def lives(self, worker: str) -> int:
        """How many times the worker's log says it published a first update."""
        if not self.log(worker).exists():
            return 0
        return self.log(worker).read_text(errors="replace").count("first interest update")

    def rss_mb(self, worker: str) -> float:
        status = Path(f"/proc/{self.procs[worker].pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024

    def ready(self, worker: str) -> dict:
        """The worker's ``GET /ready`` answer (its JSON body, whatever the status)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[worker]}/ready", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as err:
            return json.loads(err.read())

    # -- input -------------------------------------------------------------------------------------
    def producer(self) -> KafkaProducer:
        return KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                             max_request_size=4 * 1024**2, retries=20)  # fmt: skip

    def send_catalog(self, items: dict[str, Item]) -> None:
        producer = self.producer()
        for item_id, item in items.items():
            producer.send(self.settings.items_topic, key=item_id.encode(),
                          value=json.dumps(item_to_json(item)).encode())  # fmt: skip
        producer.flush()
        producer.close()

    def send(self, records: list[tuple[str, dict]], rate: float | None = None) -> threading.Thread:
        """Send in a background thread (``rate``: events per second at most); join the thread to wait."""

        def run() -> None:
            producer = self.producer()
            t0 = time.monotonic()
            for n, (etype, event) in enumerate(records):
                producer.send(self.settings.topic_for(etype), key=event["user_id"].encode(),
                              value=json.dumps(event).encode())  # fmt: skip
                if rate and n % 100 == 99:
                    ahead = (n + 1) / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush()
            producer.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def send_raw(self, records: list[tuple[str, bytes | None, bytes, int | None]]) -> None:
        """(topic type, key, value, partition or None) exactly as given: for hostile input."""
        producer = self.producer()
        for etype, key, value, partition in records:
            producer.send(self.settings.topic_for(etype), key=key, value=value, partition=partition)
        producer.flush()
        producer.close()

    # -- output ------------------------------------------------------------------------------------
    def changelog_states(self) -> dict[str, UserState]:
        """Every user's state as the worker left it: the newest record per key of the changelog."""
        consumer = KafkaConsumer(f"{self.prefix}-user-state-changelog", bootstrap_servers=self.bootstrap,
                                 group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=3000,
                                 fetch_max_bytes=64 * 1024**2)  # fmt: skip
        latest = {m.key: m.value for m in consumer}
        consumer.close()
        return {k.decode(): UserState.from_bytes(v) for k, v in latest.items() if v is not None}


def assigned_consumer(settings: Settings, bootstrap: str | None = None, **config) -> KafkaConsumer:  # noqa: ANN003
    """A consumer of every partition of the updates and DLQ topics, from the beginning, with no group.

    Assigned explicitly once the broker's metadata lists all of the topics' partitions, instead of
    ``subscribe()``, whose group-less assignment takes whatever partitions kafka-python's metadata
    lists at that moment: right after ``ensure_topics`` on a broker that has just started, a test must
    not depend on when a new topic shows up there."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap or settings.broker, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=200, **config)  # fmt: skip
    topics = (settings.updates_topic, settings.dlq_topic)
    deadline = time.monotonic() + 60
    while True:
        known = {t: consumer.partitions_for_topic(t) or set() for t in topics}
        if all(len(p) == settings.partitions for p in known.values()):
            break
        if time.monotonic() > deadline:
            consumer.close()
            raise TimeoutError(f"the broker's metadata lists only these partitions after 60 s: {known}")
        time.sleep(0.2)
    partitions = [TopicPartition(t, p) for t, ps in known.items() for p in sorted(ps)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    return consumer


class Watcher(threading.Thread):
    """Reads the updates and dead-letter topics from the beginning while a scenario runs."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.settings = cluster.settings
        self.bootstrap = cluster.bootstrap
        self.last: dict[str, dict] = {}  # user -> the update with the highest version so far
        self.backwards = 0  # updates whose version is below one already seen for the user
        self.republished_different = 0  # a repeated version whose content differs from the first
        self.arrivals: list[float] = []  # monotonic arrival time of every update
        self.dead: list[tuple[str, tuple[str, str, str]]] = []  # (reason, source coordinates)
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self._consume()
            except Exception:  # noqa: BLE001 - the broker may be restarting in a scenario; go on
                time.sleep(1.0)

    def _consume(self) -> None:
        consumer = assigned_consumer(self.settings, self.bootstrap, max_partition_fetch_bytes=16 * 1024**2)
        try:
            while not self.stop_flag.is_set():
                for msg in consumer:
                    now = time.monotonic()
                    with self.lock:
                        if msg.topic == self.settings.updates_topic:
                            self._update(json.loads(msg.value), now)
                        else:
                            h = {k: v.decode() for k, v in msg.headers}
                            source = (h["dlq.topic"], h["dlq.partition"], h["dlq.offset"])
                            self.dead.append((h["dlq.reason"], source))
        finally:
            consumer.close()

    def _update(self, update: dict, now: float) -> None:
        self.arrivals.append(now)
        user = update["user_id"]
        prev = self.last.get(user)
        if prev is not None and update["version"] < prev["version"]:
            self.backwards += 1
            return
        if prev is not None and update["version"] == prev["version"]:
            same = update["events_applied"] == prev["events_applied"] and np.allclose(
                update["embedding"], prev["embedding"], atol=1e-6
            )
            self.republished_different += not same
        self.last[user] = update

    def updates_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for a in self.arrivals if a > t)

    def first_update_after(self, t: float) -> float | None:
        with self.lock:
            later = [a for a in self.arrivals if a > t]
        return min(later) - t if later else None

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(10)


# -- the verdict ----------------------------------------------------------------------------------------
@dataclass
class Tally:
    scenario: str
    workers: str
    events_in: int = 0  # records sent, duplicates and hostile records included
    unique_events: int = 0
    applied: int = 0
    dead_lettered: int = 0
    lost: int = 0
    applied_twice: int = 0
    users: int = 0
    users_wrong: int = 0  # users whose state differs from the clean pass (beyond 1e-5) or is missing
    last_update_missing: int = 0  # users whose newest published update lacks some of their events
    versions_backwards: int = 0
    worker_deaths: int = 0  # workers that exited without being killed or stopped
    recovery_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ok(self) -> bool:
        return not (self.lost or self.applied_twice or self.users_wrong or self.last_update_missing
                    or self.versions_backwards or self.worker_deaths)  # fmt: skip

    def row(self) -> dict[str, Any]:
        rec = self.recovery_s
        return {
            "scenario": self.scenario, "workers": self.workers, "events in": self.events_in,
            "unique": self.unique_events, "applied": self.applied, "dead-lettered": self.dead_lettered,
            "lost": self.lost, "applied twice": self.applied_twice, "users wrong": self.users_wrong,
            "last update missing": self.last_update_missing, "versions backwards": self.versions_backwards,
            "worker deaths": self.worker_deaths,
            "recovery s (median / max)": f"{statistics.median(rec):.1f} / {max(rec):.1f}" if rec else "-",
            "run s": round(self.seconds),
        }  # fmt: skip


def expected_states(cluster: Cluster, records: list[tuple[str, dict]], items: dict[str, Item],
                    encoder: TextEncoder) -> dict[str, UserState]:  # fmt: skip
    """The single clean pass: the same events through the core directly."""
    core = InterestCore(cluster.settings.model, CachedEncoder(encoder))
    return replay(records, core, items).states


def converged(watcher: Watcher, expected: dict[str, UserState]) -> bool:
    """Every user's newest update counts all of the user's events."""
    with watcher.lock:
        return all(
            (u := watcher.last.get(user)) is not None and u["events_applied"] >= state.events_applied
            for user, state in expected.items()
        )


def wait_converged(watcher: Watcher, expected: dict[str, UserState], timeout_s: float) -> bool:
    """Until ``converged`` (then a second more, so stragglers show up), or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if converged(watcher, expected):
            time.sleep(1.0)
            return True
        time.sleep(0.5)
    return False


def verdict(tally: Tally, cluster: Cluster, watcher: Watcher, expected: dict[str, UserState]) -> Tally:
    states = cluster.changelog_states()
    tally.users = len(expected)
    for user, want in expected.items():
        got = states.get(user)
        n = got.events_applied if got is not None else 0
        tally.applied += n
        tally.lost += max(want.events_applied - n, 0)
        tally.applied_twice += max(n - want.events_applied, 0)
        if (
            got is None
            or n != want.events_applied
            or not np.allclose(got.embedding(), want.embedding(), atol=1e-5)
        ):
            tally.users_wrong += 1
        last = watcher.last.get(user)
        if last is None or last["events_applied"] != want.events_applied:
            tally.last_update_missing += 1
    tally.dead_lettered = len(watcher.dead)
    tally.versions_backwards = watcher.backwards + watcher.republished_different
    if tally.users_wrong:
        wrong = [u for u, want in expected.items()
                 if (states.get(u).events_applied if u in states else 0) != want.events_applied]  # fmt: skip
        where = Counter(partition_for(u.encode(), cluster.settings.partitions) for u in wrong)
        tally.notes.append(f"users with wrong counts by partition: {dict(sorted(where.items()))}")
    return tally


# -- scenarios --------------------------------------------------------------------------------------
def kill9(bootstrap: str, work: Path, encoder: TextEncoder, *, events: int, users: int, kills: int,
          seed: int = 1) -> Tally:  # fmt: skip
    """``kill -9`` one worker at random moments while it works through a backlog; restart it at once."""
    t0 = time.monotonic()
    rng = random.Random(seed)
    load = make_workload(events, users, seed=seed)
    cluster = Cluster(bootstrap, work, "kill9")
    tally = Tally("kill -9 during a replay (5% duplicates)", "1", len(load.sends), load.unique)
    expected = expected_states(cluster, load.sends, load.items, encoder)
    watcher = Watcher(cluster)
    watcher.start()
    try:
        cluster.send_catalog(load.items)
        sender = cluster.send(load.sends)
        cluster.start("w")
        for _ in range(kills):
            started = time.monotonic()
            deadline = started + 120
            while watcher.updates_since(started) == 0 and time.monotonic() < deadline:
                if converged(watcher, expected):
                    break
                time.sleep(0.1)
            if converged(watcher, expected):
                break
            time.sleep(rng.uniform(0.0, 1.5))
            lives = cluster.lives("w")
            killed = time.time()
            cluster.kill("w")
            cluster.start("w")
            done = lambda: converged(watcher, expected)  # noqa: E731
            if (first := cluster.first_update_at("w", lives, nothing_left=done)) is not None:
                tally.recovery_s.append(first - killed)
        sender.join()
        wait_converged(watcher, expected, 300)
        tally.worker_deaths = len(cluster.dead())
    finally:
        cluster.stop_all()
        watcher.stop()
    tally.notes.append(f"{len(tally.recovery_s)} kills; recovery = kill to the restarted worker's first "
                       "update (process start, model load, group join, state recovery included)")  # fmt: skip
    tally.seconds = time.monotonic() - t0
    return verdict(tally, cluster, watcher, expected)


def several_workers(bootstrap: str, work: Path, encoder: TextEncoder, *, events: int, users: int,
                    rate: float, seed: int = 2) -> Tally:  # fmt: skip
    """Two workers; a third joins; one is killed with ``kill -9`` and restarted; one leaves."""
    t0 = time.monotonic()
    load = make_workload(events, users, seed=seed)
    cluster = Cluster(bootstrap, work, "multi", INTEREST_PARTITIONS="6")
    tally = Tally(
        "2 workers, a 3rd joins, kill -9 + restart, one leaves", "2-3", len(load.sends), load.unique
    )
    expected = expected_states(cluster, load.sends, load.items, encoder)
    watcher = Watcher(cluster)
    watcher.start()
    try:
        cluster.send_catalog(load.items)
        sender = cluster.send(load.sends, rate=rate)
        cluster.start("a")
        cluster.start("b")

        def progress(seconds: float) -> None:
            """Let the workers apply something (at least one update), then ``seconds`` more."""
            since = time.monotonic()
            deadline = since + 120
            while watcher.updates_since(since) == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(seconds)

        progress(2)
        cluster.start("c")  # joins
        progress(2)
        lives = cluster.lives("b")
        killed = time.time()
        cluster.kill("b")
        cluster.start("b")
        if (first := cluster.first_update_at("b", lives)) is not None:
            tally.recovery_s.append(first - killed)
        progress(2)
        cluster.stop("a")  # leaves
        sender.join()
        wait_converged(watcher, expected, 300)
        tally.worker_deaths = len(cluster.dead())
    finally:
        cluster.stop_all()
        watcher.stop()
    tally.notes.append("6 partitions; recovery = kill to the restarted worker's first update")
    tally.seconds = time.monotonic() - t0
    return verdict(tally, cluster, watcher, expected)


def broker_restarts(broker: Any, work: Path, encoder: TextEncoder, *, events: int, users: int,
                    seed: int = 3) -> tuple[Tally, Tally]:  # fmt: skip
    """Stop and start the broker mid-stream with its data kept; then once more with its data wiped.

    ``broker`` is a ``streams.devbroker.LocalBroker`` this scenario may stop and start.
    """
    t0 = time.monotonic()
    bootstrap = broker.status().bootstrap
    port = int(bootstrap.rsplit(":", 1)[1])
    load = make_workload(events, users, seed=seed)
    cluster = Cluster(bootstrap, work, "broker")
    kept = Tally("broker stop + start, data kept", "1", len(load.sends), load.unique)
    expected = expected_states(cluster, load.sends, load.items, encoder)
    watcher = Watcher(cluster)
    watcher.start()
    half = len(load.sends) // 2
    try:
        cluster.send_catalog(load.items)
        cluster.send(load.sends[:half]).join()
        cluster.start("w")
        deadline = time.monotonic() + 120
        while watcher.updates_since(0) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        broker.stop()
        time.sleep(5)
        broker.start()  # returns once the broker answers
        back_at = time.monotonic()
        cluster.send(load.sends[half:]).join()
        wait_converged(watcher, expected, 300)
        first = watcher.first_update_after(back_at)
        if first is not None:
            kept.recovery_s.append(first)
        kept.worker_deaths = len(cluster.dead())
        kept.notes.append("broker down 5 s after its shutdown; recovery = broker answering again to the "
                          "next update")  # fmt: skip
    except BaseException:
        cluster.stop_all()
        watcher.stop()
        raise
    watcher.stop()
    verdict(kept, cluster, watcher, expected)
    kept.seconds = time.monotonic() - t0

    # The broker loses everything. The running worker may die with it; a supervisor restarts it, and
    # it must start (not crash-loop), say what happened, and serve what is sent from then on.
    t1 = time.monotonic()
    wiped = Tally("broker restarted with its data wiped", "1")
    try:
        broker.stop()
        broker.start(port=port, fresh=True)
        ensure_topics(cluster.settings)
        fresh = make_workload(max(events // 10, 200), max(users // 10, 20), seed=seed + 1, tag="x")
        wiped.events_in, wiped.unique_events = len(fresh.sends), fresh.unique
        expected2 = expected_states(cluster, fresh.sends, fresh.items, encoder)
        watcher2 = Watcher(cluster)
        watcher2.start()
        cluster.send_catalog(fresh.items)
        cluster.send(fresh.sends).join()
        restarts = 0
        deadline = time.monotonic() + 300
        while not converged(watcher2, expected2) and time.monotonic() < deadline:
            for worker in cluster.dead():  # what a supervisor (systemd, Kubernetes) would do
                code = cluster.procs.pop(worker).returncode
                wiped.notes.append(f"the worker exited with code {code} after the wipe; restarted")
                cluster.start(worker)
                restarts += 1
            time.sleep(0.5)
        wait_converged(watcher2, expected2, 5)
        wiped.worker_deaths = len(cluster.dead())
        log = cluster.log("w").read_text(errors="replace")
        said = "no longer has the changelog records" in log
        wiped.notes.append(f"worker restarts needed: {restarts}; the worker's log explains the lost state: "
                           f"{'yes' if said else 'no'}")  # fmt: skip
    finally:
        cluster.stop_all()
    watcher2.stop()
    verdict(wiped, cluster, watcher2, expected2)
    wiped.seconds = time.monotonic() - t1
    return kept, wiped


def lost_state_dir(bootstrap: str, work: Path, encoder: TextEncoder, *, users: int, seed: int = 4) -> Tally:
    """Delete a stopped worker's state folder; it rebuilds from the changelogs and goes on exactly."""
    import shutil

    t0 = time.monotonic()
    load = make_workload(users * 2, users, seed=seed, dup_rate=0.0)
    more = make_workload(users, users, seed=seed + 1, dup_rate=0.0)  # the same users, one more event each
    more.sends = [(t, dict(e, event_id="m" + e["event_id"], ts=e["ts"] + 1e6)) for t, e in more.sends]
    cluster = Cluster(bootstrap, work, "lost")
    tally = Tally("state folder deleted while the worker is down", "1", len(load.sends) + len(more.sends),
                  load.unique + more.unique)  # fmt: skip
    expected = expected_states(cluster, load.sends + more.sends, load.items, encoder)
    first = expected_states(cluster, load.sends, load.items, encoder)
    watcher = Watcher(cluster)
    watcher.start()
    intact = None

    def restart_and_time(event: tuple[str, dict]) -> float | None:
        """Restart the worker, send it one event, and time the restart to the update it causes."""
        restarted = time.monotonic()
        cluster.start("w")
        cluster.send([event]).join()
        deadline = time.monotonic() + 600
        while watcher.first_update_after(restarted) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return watcher.first_update_after(restarted)

    try:
        cluster.send_catalog(load.items)
        cluster.send(load.sends).join()
        cluster.start("w")
        wait_converged(watcher, first, 900)
        cluster.stop("w")
        intact = restart_and_time(more.sends[0])  # the yardstick: a restart that keeps its state
        cluster.stop("w")
        shutil.rmtree(cluster.state_dir("w"))
        if (rec := restart_and_time(more.sends[1])) is not None:
            tally.recovery_s.append(rec)
        cluster.send(more.sends[2:]).join()
        wait_converged(watcher, expected, 600)
        tally.worker_deaths = len(cluster.dead())
    finally:
        cluster.stop_all()
        watcher.stop()
    if tally.recovery_s and intact is not None:
        extra = tally.recovery_s[0] - intact
        tally.notes.append(f"{users:,} users' states restored from the changelog: restart to first update "
                           f"{tally.recovery_s[0]:.1f} s against {intact:.1f} s for a restart with the state "
                           f"folder intact; the restore added {extra:.1f} s, {extra * 100_000 / users:.1f} s "
                           "per 100k users")  # fmt: skip
    tally.seconds = time.monotonic() - t0
    return verdict(tally, cluster, watcher, expected)


def predicted_reason(etype: str, key: bytes | None, value: bytes, items: dict[str, Item]) -> str | None:
    """What the worker will say of a record (None: it applies it), by the worker's own checks. Records
    are sent with the producer's default (murmur2) partitioner, so they sit on the right partition."""
    from models.events import InvalidEvent, parse_event, resolve_item

    try:
        event = parse_event(value, etype, key, require_key=True, latest_ts=time.time() + 86_400)
        resolve_item(event, items.get)
    except InvalidEvent as exc:
        return exc.reason
    return None


def mutated_records(good: list[tuple[str, dict]], n: int, seed: int,
                    items: dict[str, Item]) -> tuple[list, list]:  # fmt: skip
    """``n`` records derived from good events by random mutations: flipped and dropped bytes, cut
    values, removed fields, wrong types, mismatched keys, oversized values, random bytes. Returns
    ((type, key, value, partition, predicted reason or None), ...) and the ones that stay valid as
    (type, value) records for the clean pass. Each gets a fresh event id first, so a mutated record can
    never be confused with the good event it came from."""
    rng = random.Random(seed)
    out, valid = [], []
    for k in range(n):
        etype, base = rng.choice(good)
        event = dict(base, event_id=f"fz{seed}-{k}")
        key = event["user_id"].encode()
        kind = rng.randrange(9)
        if kind == 0:
            event.pop(rng.choice(["event_id", "user_id", "item_id", "ts"]))
        elif kind == 1:
            field_name = rng.choice(["event_id", "user_id", "item_id", "ts"])
            values = [None, [], {}, True, "", "x" * 300, -5, 1e30, "2024-13-45T99:00:00"]
            if field_name == "event_id":  # only invalid ids: valid ones would repeat across records,
                values = values[:6]  # and which copy is applied first then depends on the batching
            event[field_name] = rng.choice(values)
        elif kind == 2:
            key = b"someone-else"
        elif kind == 3:
            event["pad"] = "y" * 70_000
        elif kind == 4:
            event["context"] = rng.choice([{"device": "ios", "geo": "DE"}, ["not", "an", "object"],
                                           {"nested": {"x": 1}}])  # fmt: skip
        elif kind == 5:
            event["item"] = rng.choice([{"title": "A new film", "categories": ["Drama"]}, {"title": ""},
                                        "not an object", {"title": "t", "categories": "Drama"}])  # fmt: skip
        value = json.dumps(event).encode()
        if kind == 6 and value:
            at = rng.randrange(len(value))
            value = value[:at] + bytes([rng.randrange(256)]) + value[at + 1 :]
        elif kind == 7:
            value = value[: rng.randrange(len(value))]
        elif kind == 8:
            value = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        reason = predicted_reason(etype, key, value, items)
        out.append((etype, key, value, None, reason))
        if reason is None:
            valid.append((etype, value))
    return out, valid


POISON_TITLE = "Broken \ud800 title"  # a lone surrogate: valid JSON escape, not encodable text


def hostile_input(bootstrap: str, work: Path, encoder: TextEncoder, *, fuzzed: int, seed: int = 5) -> Tally:
    """Poison (text the encoder cannot take), fuzzed and mutated records, unkeyed, misrouted and
    future-dated events, between good ones: each good event applied once, each bad one dead-lettered
    once with its reason, and the worker never dies."""
    t0 = time.monotonic()
    load = make_workload(2000, 100, seed=seed, dup_rate=0.0)
    cluster = Cluster(bootstrap, work, "hostile")
    good = load.sends
    poison_user = good[0][1]["user_id"]
    poison = {"event_id": "poison-1", "user_id": poison_user, "item_id": "poison-item", "ts": 1_700_000_100,
              "item": {"title": POISON_TITLE, "categories": ["x"]}}  # fmt: skip
    hostile, valid_extra = mutated_records(good, fuzzed, seed, load.items)
    bad = [("click", poison_user.encode(), json.dumps(poison).encode(), None)]
    bad += [
        ("click", None, json.dumps(dict(good[1][1], event_id="nokey-1")).encode(), 0),
        ("order", good[2][1]["user_id"].encode(),
         json.dumps(dict(good[2][1], event_id="future-1", ts=time.time() + 10 * 86400)).encode(), None),
    ]  # fmt: skip
    user = good[3][1]["user_id"]
    right = partition_for(user.encode(), cluster.settings.partitions)
    bad.append(("cart", user.encode(), json.dumps(dict(good[3][1], event_id="misrouted-1")).encode(),
                (right + 1) % cluster.settings.partitions))  # fmt: skip
    # Just under the broker's default record limit (1,048,588 bytes): the broker takes it, so the worker
    # must fetch it (and dead-letter it) rather than stall its partition behind it.
    huge = dict(good[4][1], event_id="huge-1", pad="z" * 1_040_000)
    bad.append(("click", good[4][1]["user_id"].encode(), json.dumps(huge).encode(), None))
    expected_reasons = Counter(
        {"internal_error": 1, "missing_key": 1, "future_timestamp": 1, "wrong_partition": 1, "too_large": 1}
    )
    for _, _, _, _, reason in hostile:
        if reason is not None:
            expected_reasons[reason] += 1
    records = good + valid_extra
    tally = Tally("poison, fuzzed, unkeyed, misrouted, future-dated input", "1",
                  len(good) + len(bad) + len(hostile), len(records))  # fmt: skip
    expected = expected_states(cluster, records, load.items, encoder)
    watcher = Watcher(cluster)
    watcher.start()
    try:
        cluster.send_catalog(load.items)
        cluster.start("w")
        half = len(good) // 2
        cluster.send(good[:half]).join()
        cluster.send_raw(bad + [(t, k, v, p) for t, k, v, p, _ in hostile])
        cluster.send(good[half:]).join()
        wait_converged(watcher, expected, 300)
        want = sum(expected_reasons.values())
        deadline = time.monotonic() + 60
        while len(watcher.dead) < want and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        tally.worker_deaths = len(cluster.dead())
        ready = cluster.ready("w")
        if not ready.get("ready"):
            tally.users_wrong += 1
        tally.notes.append(f"/ready afterwards: {ready}")
    finally:
        cluster.stop_all()
        watcher.stop()
    verdict(tally, cluster, watcher, expected)
    got_reasons = Counter(reason for reason, _ in watcher.dead)
    sources = Counter(source for _, source in watcher.dead)
    twice = sum(n - 1 for n in sources.values() if n > 1)
    if got_reasons != expected_reasons:
        tally.users_wrong += 1
        tally.notes.append(f"dead-letter reasons {dict(got_reasons)} != expected {dict(expected_reasons)}")
    tally.notes.append(f"dead-lettered twice: {twice}; reasons: "
                       + ", ".join(f"{k} {v}" for k, v in sorted(got_reasons.items())))  # fmt: skip
    tally.applied_twice += twice
    tally.seconds = time.monotonic() - t0
    return tally


def backpressure(bootstrap: str, work: Path, encoder: TextEncoder, *, seconds: float, users: int,
                 seed: int = 6) -> Tally:  # fmt: skip
    """Produce as fast as the producer can (far faster than the worker) for ``seconds``: memory stays
    bounded, nothing is lost, the lag drains."""
    t0 = time.monotonic()
    cluster = Cluster(bootstrap, work, "flood")
    items = catalog()
    # Size the flood by the producer's speed: roughly 10x what one worker applies.
    load = make_workload(int(seconds * 15_000), users, seed=seed, items=items)
    tally = Tally("flood", "1", len(load.sends), load.unique)
    expected = expected_states(cluster, load.sends, items, encoder)
    watcher = Watcher(cluster)
    watcher.start()
    rss = []
    try:
        cluster.send_catalog(items)
        cluster.start("w")
        deadline = time.monotonic() + 120
        cluster.send(load.sends[:10]).join()
        while watcher.updates_since(0) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        flood_start = time.monotonic()
        sender = cluster.send(load.sends[10:])
        sent_s = None
        while sender.is_alive() or not converged(watcher, expected):
            if sent_s is None and not sender.is_alive():
                sent_s = time.monotonic() - flood_start
            if cluster.dead() or time.monotonic() - flood_start > 1800:
                break
            rss.append(cluster.rss_mb("w"))
            time.sleep(1.0)
        if sent_s:
            tally.scenario = (f"flood: {len(load.sends):,} events produced in {sent_s:.0f} s "
                              f"({len(load.sends) / sent_s:,.0f}/s)")  # fmt: skip
        drained_s = time.monotonic() - flood_start
        wait_converged(watcher, expected, 120)
        tally.worker_deaths = len(cluster.dead())
    finally:
        cluster.stop_all()
        watcher.stop()
    if rss:
        q = len(rss) // 4 or 1
        tally.notes.append(f"worker RSS MB: first quarter max {max(rss[:q]):.0f}, last quarter max "
                           f"{max(rss[-q:]):.0f}, overall max {max(rss):.0f}; drained {drained_s:.0f} s "
                           f"after the flood began")  # fmt: skip
    tally.seconds = time.monotonic() - t0
    return verdict(tally, cluster, watcher, expected)
