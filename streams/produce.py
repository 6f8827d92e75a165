"""Push files (JSONL, CSV, the MovieLens sample) into the event topics and the item catalog."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from models.events import Item, item_to_json
from streams.settings import Settings


def make_producer(settings: Settings) -> KafkaProducer:
    # acks=all + idempotence: a retried send never duplicates or reorders within a partition.
    return KafkaProducer(
        bootstrap_servers=settings.broker,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        batch_size=256 * 1024,
        client_id="interest-stream-produce",
    )


def produce_items(producer: KafkaProducer, settings: Settings, items: dict[str, Item]) -> int:
    for item_id, item in items.items():
        producer.send(
            settings.items_topic, key=item_id.encode(), value=json.dumps(item_to_json(item)).encode()
        )
    producer.flush()
    return len(items)


def produce_events(
    producer: KafkaProducer,
    settings: Settings,
    records: Iterable[tuple[str, dict[str, Any] | bytes]],
    total: int | None = None,
    show_progress: bool = True,
    rate: float | None = None,
) -> int:
    """Send (type, event) records keyed by user_id; ``rate`` caps events per second (None: as fast as
    possible). Raw bytes are sent as they are (useful to exercise the dead-letter path)."""
    import time

    sent = 0
    start = time.monotonic()
    progress = Progress(
        TextColumn("[bold]producing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not show_progress,
    )  # fmt: skip
    with progress:
        task = progress.add_task("events", total=total)
        for event_type, event in records:
            if isinstance(event, bytes):
                key, value = None, event
            else:
                key, value = str(event.get("user_id", "")).encode(), json.dumps(event).encode()
            producer.send(settings.topic_for(event_type), key=key, value=value)
            sent += 1
            if sent % 500 == 0:
                progress.update(task, completed=sent)
                if rate:
                    ahead = sent / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
        producer.flush()
        progress.update(task, completed=sent)
    return sent


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)
