"""Reading the output: ``tail`` prints updates (and dead letters) as lines; ``live`` is a terminal view."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from streams.settings import Settings


@dataclass
class Record:
    topic: str
    key: str | None
    value: Any
    headers: dict[str, str]


def consume(
    settings: Settings, from_beginning: bool = True, dlq: bool = True, idle_timeout_s: float | None = None
) -> Iterator[Record]:
    """Updates (and dead letters) as they arrive; stops after ``idle_timeout_s`` without a record."""
    topics = [settings.updates_topic] + ([settings.dlq_topic] if dlq else [])
    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=settings.broker,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        consumer_timeout_ms=200,
    )
    last = time.monotonic()
    try:
        while True:
            got = False
            for msg in consumer:
                got = True
                headers = {k: v.decode("utf-8", "replace") for k, v in (msg.headers or [])}
                if msg.topic == settings.updates_topic:
                    value: Any = json.loads(msg.value)
                else:
                    value = msg.value
                key = msg.key.decode("utf-8", "replace") if msg.key is not None else None
                yield Record(msg.topic, key, value, headers)
            now = time.monotonic()
            if got:
                last = now
            elif idle_timeout_s is not None and now - last > idle_timeout_s:
                return
    finally:
        consumer.close()


def format_update(u: dict[str, Any]) -> str:
    tops = ", ".join(f"{t['category']} {t['p']:.2f}" for t in u["top_interests"][:3])
    last = u["last_event"]
    return (
        f"user={u['user_id']:<6} v{u['version']:<4} events={u['events_applied']:<5} "
        f"last={last['type']}:{last['item_id']:<8} top=[{tops}]"
    )


def format_dead_letter(r: Record) -> str:
    h = r.headers
    where = f"{h.get('dlq.topic')}[{h.get('dlq.partition')}]@{h.get('dlq.offset')}"
    return f"DLQ {where} {h.get('dlq.reason')}: {h.get('dlq.error')} value={r.value[:80]!r}"


@dataclass
class LiveState:
    started: float = field(default_factory=time.monotonic)
    updates: int = 0
    dead_letters: int = 0
    users: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    applied: dict[str, int] = field(default_factory=dict)
    last_reason: str = ""

    def add(self, r: Record) -> None:
        if r.topic.endswith("dlq") or "dlq.reason" in r.headers:
            self.dead_letters += 1
            self.last_reason = r.headers.get("dlq.reason", "")
            return
        u = r.value
        self.updates += 1
        self.applied[u["user_id"]] = u["events_applied"]
        self.users[u["user_id"]] = u
        self.users.move_to_end(u["user_id"])

    @property
    def events_applied(self) -> int:
        return sum(self.applied.values())

    def render(self, expected_events: int | None = None, rows: int = 15) -> Panel:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        table = Table(expand=True)
        for col in ("user", "version", "events", "last event", "top interests (p)"):
            table.add_column(col)
        for u in list(self.users.values())[-rows:][::-1]:
            last = u["last_event"]
            tops = "  ".join(f"{t['category']} {t['p']:.2f}" for t in u["top_interests"][:4])
            table.add_row(u["user_id"], str(u["version"]), str(u["events_applied"]),
                          f"{last['type']} {last['item_id']}", tops)  # fmt: skip
        done = f" / {expected_events}" if expected_events else ""
        header = (
            f"users {len(self.users)}   updates {self.updates}   events applied {self.events_applied}{done}"
            f"   {self.events_applied / elapsed:,.0f} events/s   dead letters {self.dead_letters}"
            + (f" (last: {self.last_reason})" if self.last_reason else "")
        )
        return Panel(Group(header, table), title="interest-stream: live interest updates")


def live_view(
    settings: Settings,
    expected_events: int | None = None,
    stop: Callable[[LiveState], bool] | None = None,
    idle_timeout_s: float | None = None,
) -> LiveState:
    state = LiveState()
    last_render = 0.0
    with Live(state.render(expected_events), refresh_per_second=4) as live:
        for record in consume(settings, from_beginning=True, idle_timeout_s=idle_timeout_s):
            state.add(record)
            done = stop is not None and stop(state)
            now = time.monotonic()
            if done or now - last_render > 0.25:  # rendering per record would cost more than consuming
                live.update(state.render(expected_events))
                last_render = now
            if done:
                break
    return state
