"""The examples run against a real broker: a Go producer's events are accepted by the worker as they are
(the JSON contract and the key partitioning are language-neutral), and the Python consumer example keeps
the user's newest recommendations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from faults import stop_worker
from kafka import KafkaProducer
from test_api import get, ready
from test_integration import Collector, send_events, send_items, start_worker, wait_for, worker_env
from test_model_sync import model_snapshots, start_trainer

from models.sources import movielens_events, movielens_items
from streams.settings import Settings
from streams.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent
GO = shutil.which("go")


@pytest.mark.integration
def test_a_go_producer_feeds_the_worker_and_the_python_consumer_keeps_recommendations(
    kafka_bootstrap, tmp_path
):
    if GO is None:
        if os.environ.get("CI"):
            pytest.fail("the Go toolchain is missing")
        pytest.skip("no Go toolchain")
    binary = tmp_path / "go-producer"
    built = subprocess.run([GO, "build", "-o", str(binary), "."], cwd=REPO / "examples" / "go-producer",
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr

    run = uuid.uuid4().hex[:8]
    prefix = f"x-{run}"
    extra = {"INTEREST_PARTITIONS": "3", "INTEREST_MAX_WAIT_S": "0.2",
             "INTEREST_MODEL_TOPIC": f"{prefix}-model", "INTEREST_MODEL_SYNC_S": "2"}  # fmt: skip
    env = worker_env(kafka_bootstrap, prefix, tmp_path, **extra)
    settings = Settings.load(env)
    ensure_topics(settings)
    items = movielens_items()
    records = list(movielens_events(max_users=6))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    send_items(producer, settings, items, {e["item_id"] for _, e in records} | {"1", "2355", "3114"})
    send_events(producer, settings, records)
    producer.close()

    logs = [tmp_path / "trainer.log", tmp_path / "worker.log"]
    collector = Collector(settings)
    collector.start()
    trainer = start_trainer(env, logs[0])
    worker = start_worker(env, logs[1])
    port = int(env["INTEREST_WEB_PORT"])
    try:
        wait_for(
            lambda: bool(model_snapshots(kafka_bootstrap, settings.model_topic)), 180, "a snapshot", logs[0]
        )
        wait_for(
            lambda: ready(port) and get(port, "/live/data")[1]["model"] is not None,
            180,
            "the worker",
            logs[1],
        )
        go_args = ["-brokers", kafka_bootstrap, "-user", "go-user-1", "-topic-prefix", f"{prefix}-"]
        sent = subprocess.run([str(binary), *go_args], capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.count("sent go-user-1-") == 5
        done = lambda: any(u["events_applied"] == 5 for u in collector.updates.get("go-user-1", []))  # noqa: E731
        wait_for(done, 120, "the Go producer's events applied", logs[1])
        dump = tmp_path / "recommendations.json"
        example = REPO / "examples" / "python-consumer" / "consumer.py"
        py_args = [
            "--brokers",
            kafka_bootstrap,
            "--topic",
            settings.updates_topic,
            "--idle-exit",
            "3",
            "--dump",
            str(dump),
        ]
        consumed = subprocess.run(
            [sys.executable, str(example), *py_args], capture_output=True, text=True, timeout=120
        )
        assert consumed.returncode == 0, consumed.stderr
    finally:
        for proc in (trainer, worker):
            stop_worker(proc)
        collector.stop_flag.set()
        collector.join(10)
    assert not collector.dead, [m.headers for m in collector.dead]  # nothing of the Go events dead-lettered
    kept = json.loads(dump.read_text())
    mine = kept["go-user-1"]
    assert mine["events_applied"] == 5 and mine["version"] == collector.updates["go-user-1"][-1]["version"]
    assert len(mine["recommendations"]) == settings.recommendations_k
    assert not {"1", "2355", "3114"} & set(mine["recommendations"])  # what the user had is left out
    assert "Animation" in mine["top_interests"] or "Children" in mine["top_interests"]
    # every user the worker updated is in the map, at their newest version
    for user, updates in collector.updates.items():
        assert kept[user]["version"] == max(u["version"] for u in updates)
