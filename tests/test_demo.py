"""``interest-stream demo``, the README's first command, run as a user runs it: its own broker, a worker, the
trainer and the MovieLens sample, to the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from models.sources import movielens_events
from streams.devbroker import LocalBroker, free_port

REPO = Path(__file__).resolve().parent.parent
EVENTS = 600


def demo_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        INTEREST_BROKER_DIR=str(tmp_path / "broker"),
        INTEREST_STATE_DIR=str(tmp_path / "state"),
        INTEREST_WEB_PORT=str(free_port()),
        **extra,
    )
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    return env


def run_demo(tmp_path: Path, *args: str, timeout_s: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--limit", str(EVENTS), *args],
        env=demo_env(tmp_path, **extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def last_updates(bootstrap: str) -> dict[str, dict]:
    """Each user's newest update on the demo's broker."""
    consumer = KafkaConsumer(
        "interest-updates",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    newest = {}
    for msg in consumer:
        update = json.loads(msg.value)
        newest[update["user_id"]] = update
    consumer.close()
    return newest


def input_events(bootstrap: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    parts = [
        TopicPartition(t, p) for t in ("click", "cart", "order") for p in consumer.partitions_for_topic(t)
    ]
    total = sum(consumer.end_offsets(parts).values())
    consumer.close()
    return total


@pytest.mark.integration
def test_each_demo_applies_its_events_on_a_broker_of_its_own(tmp_path):
    """Twice, the second time with the first one's broker still up (``--keep-broker``): each run starts
    from empty topics. On the development broker, which keeps its topics, the second run once counted the
    first run's updates as its own and stopped at once, while its worker replayed both runs' events."""
    users = {e["user_id"] for _, e in movielens_events(limit=EVENTS)}
    demo_broker = LocalBroker(tmp_path / "demo-broker")
    try:
        for run in (1, 2):
            done = run_demo(tmp_path, "--keep-broker")
            assert done.returncode == 0, done.stderr[-4000:]
            assert f"all {EVENTS} events applied for {len(users)} users" in done.stderr
            info = demo_broker.status()
            assert info is not None, f"run {run}: --keep-broker left no broker running"
            assert input_events(info.bootstrap) == EVENTS
            newest = last_updates(info.bootstrap)
            assert set(newest) == users
            assert sum(u["events_applied"] for u in newest.values()) == EVENTS
        # the development broker (the other commands' default) was never started or touched
        assert LocalBroker(tmp_path / "broker").status() is None
    finally:
        demo_broker.stop()


@pytest.mark.integration
def test_a_demo_whose_worker_cannot_start_ends_with_its_log(tmp_path):
    """A misconfigured model folder: the worker and the trainer exit at start. The demo says so and shows
    the end of their log, and stops its broker, instead of a view that waits for updates forever."""
    done = run_demo(tmp_path, timeout_s=180, INTEREST_ENCODER_PATH=str(tmp_path / "no-model"))
    assert done.returncode == 1
    assert f"demo stopped after 0 of {EVENTS} events: the " in done.stderr
    assert "exited with code 1" in done.stderr
    assert "no Hugging Face model folder" in done.stderr  # the log's end, with the cause
    assert LocalBroker(tmp_path / "demo-broker").status() is None


def children(pid: int) -> dict[int, str]:
    """pid -> command line of the processes ``pid`` started (Linux /proc)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):  # it ended meanwhile
                out[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (init, here) has yet to reap it


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the children's end is Linux's prctl")
def test_a_demo_killed_outright_takes_its_worker_and_trainer_with_it(tmp_path):
    """``kill -9`` runs none of the demo's clean-up. Its worker and trainer used to run on, retrying a
    broker the next demo stops and holding their embedding caches' locks, so the next demo failed at once
    ("the trainer exited with code 1"). Now they end with it, and the next demo runs."""
    log = (tmp_path / "demo.out").open("wb")
    demo = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo"], env=demo_env(tmp_path), cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        started: dict[int, str] = {}
        while time.monotonic() < deadline and demo.poll() is None:
            started = {p: c for p, c in children(demo.pid).items() if "streams.cli" in c}
            if any(" worker" in c for c in started.values()) and any(" train" in c for c in started.values()):
                break
            time.sleep(0.5)
        assert demo.poll() is None and len(started) >= 2, (tmp_path / "demo.out").read_text()[-3000:]
        time.sleep(10)  # well into their start-up (imports, the broker's first round trips)
        demo.kill()
        demo.wait(10)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(alive(p) for p in started):
            time.sleep(0.5)
        running = {p: c for p, c in started.items() if alive(p)}
        for p in running:  # the test leaves nothing behind whatever it found
            os.kill(p, signal.SIGKILL)
        assert not running, f"still running 90 s after the demo was killed: {running}"

        done = run_demo(tmp_path)  # stops the broker the killed demo left, as its first step
        assert done.returncode == 0, done.stderr[-4000:]
        assert f"all {EVENTS} events applied" in done.stderr
    finally:
        if demo.poll() is None:
            demo.kill()
        log.close()
        LocalBroker(tmp_path / "demo-broker").stop()
