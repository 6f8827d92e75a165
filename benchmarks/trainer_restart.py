"""What a trainer that lost its checkpoint costs: learning everything again, or going on from the model
topic's newest snapshot (``Trainer.go_on_from_topic``).

Puts the MovieLens sample (or ``--events`` of it) on a local broker, runs ``interest-stream train`` until
a snapshot has learned every event (the time to that snapshot is what learning everything again costs a
trainer without a checkpoint, the way it worked before), stops it, deletes its state folder, and starts
a trainer again: it goes on from the snapshot. Prints the seconds from each start to the first snapshot
of every event, and for the second, to its rebuilt windows (process start and imports included) and
what the rebuild itself took (from its log line).

    python benchmarks/trainer_restart.py [--events N]      # ~4 min here for the whole sample
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaProducer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.events import item_to_json  # noqa: E402
from models.sources import movielens_events, movielens_items  # noqa: E402
from streams.devbroker import LocalBroker  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

LEARNED = re.compile(r"published model snapshot \d+ \(.*?, (\d+) events learned")
REBUILT = re.compile(r"rebuilt (\d+) users' windows from (\d+) events in ([\d.]+) s")


def start_trainer(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "train"], env=env, cwd=REPO,
                                stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip


def wait_for(proc: subprocess.Popen, log: Path, since: int, done) -> float:  # noqa: ANN001
    """Seconds until ``done(log text written since byte ``since``)`` holds."""
    t0 = time.monotonic()
    while not done(log.read_bytes()[since:].decode(errors="replace")):
        if proc.poll() is not None:
            raise SystemExit(f"the trainer exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=0, help="the first N events of the sample (0: all)")
    ap.add_argument("--sync-s", type=float, default=10.0, help="the trainer's snapshot interval")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="interest-trainer-restart-"))
    broker = LocalBroker(work / "broker")
    try:
        bootstrap = broker.start().bootstrap
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, INTEREST_APP_ID="restart",
                   INTEREST_STATE_DIR=str(work / "state"),
                   INTEREST_MODEL_SYNC_S=str(args.sync_s))  # fmt: skip
        settings = Settings.load(env)
        ensure_topics(settings)
        records = sorted(
            movielens_events(limit=args.events or None), key=lambda r: (r[1]["ts"], r[1]["event_id"])
        )
        items = movielens_items()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
        for item_id in {e["item_id"] for _, e in records}:
            producer.send(
                settings.items_topic,
                key=item_id.encode(),
                value=json.dumps(item_to_json(items[item_id])).encode(),
            )
        for etype, e in records:
            producer.send(settings.topic_for(etype), key=e["user_id"].encode(), value=json.dumps(e).encode())
        producer.flush()
        producer.close()
        n = len(records)
        print(
            f"{n:,} events of {len({e['user_id'] for _, e in records}):,} users on the input topics",
            flush=True,
        )
        log, trainer_dir = work / "trainer.log", work / "trainer"

        def all_learned(text: str) -> bool:
            return any(int(c) == n for c in LEARNED.findall(text))

        proc = start_trainer(env, log)
        relearn = wait_for(proc, log, 0, all_learned)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        print(
            f"learning every event from the topics' beginnings: {relearn:.1f} s to its snapshot", flush=True
        )

        shutil.rmtree(trainer_dir)  # the checkpoint, the catalog and the embedding cache: a new volume
        since = log.stat().st_size
        proc = start_trainer(env, log)
        windows = wait_for(proc, log, since, lambda text: REBUILT.search(text) is not None)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        users, events, took = REBUILT.search(log.read_bytes()[since:].decode(errors="replace")).groups()
        print(
            f"going on from the snapshot (a new volume): windows rebuilt {windows:.1f} s after the start; "
            f"the rebuild itself {float(took):.1f} s ({int(users):,} users, {int(events):,} events)"
        )
        print(f"ratio: {relearn / windows:.1f}x sooner learning on from where the served model is")
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
