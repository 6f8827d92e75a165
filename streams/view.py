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
    settings: Settings,
    from_beginning: bool = True,
    dlq: bool = True,
    idle_timeout_s: float | None = None,
    abort: Callable[[], bool] | None = None,
) -> Iterator[Record]:
    """Updates (and dead letters) as they arrive; stops after ``idle_timeout_s`` without a record, or
    once ``abort()`` is true (asked between polls, so also while nothing arrives: a reader waiting on a
    worker that has died would otherwise wait forever)."""
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
            if abort is not None and abort():
                return
    finally:
        consumer.close()


class Titles:
    """Item id -> title, read from the items topic (a compacted catalogue); re-read on a miss, at most
    every ``refresh_s`` seconds, so items produced after the view started get their titles too."""

    def __init__(self, settings: Settings | None, refresh_s: float = 5.0) -> None:
        self.settings, self.refresh_s = settings, refresh_s
        self.titles: dict[str, str] = {}
        self._read_at = -float("inf")

    def _read(self) -> None:
        self._read_at = time.monotonic()
        if self.settings is None:
            return
        s = self.settings
        consumer = KafkaConsumer(s.items_topic, bootstrap_servers=s.broker, group_id=None,
                                 auto_offset_reset="earliest", consumer_timeout_ms=500)  # fmt: skip
        try:
            for msg in consumer:
                if msg.key is None:
                    continue
                key = msg.key.decode("utf-8", "replace")
                try:
                    self.titles[key] = str(json.loads(msg.value)["title"]) if msg.value else key
                except (ValueError, KeyError, TypeError):
                    continue
        finally:
            consumer.close()

    def __call__(self, item_id: str, width: int = 40) -> str:
        if item_id not in self.titles and time.monotonic() - self._read_at > self.refresh_s:
            self._read()
        title = self.titles.get(item_id, item_id)
        return title if len(title) <= width else title[: width - 1] + "…"


def _no_titles(item_id: str, width: int = 40) -> str:
    return item_id


def format_update(u: dict[str, Any], title: Callable[..., str] = _no_titles) -> str:
    tops = ", ".join(f"{t['category']} {t['p']:.2f}" for t in u["top_interests"][:3])
    last = u["last_event"]
    line = (
        f"user={u['user_id']:<6} v{u['version']:<4} events={u['events_applied']:<5} "
        f"last={last['type']}:{title(last['item_id'])} top=[{tops}]"
    )
    recs = u.get("recommendations")
    if recs:
        line += " next=[" + "; ".join(title(r["item_id"], 30) for r in recs[:3]) + "]"
    return line


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
    title: Callable[..., str] = _no_titles

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
        for col in ("user", "version", "events", "last event", "top interests (p)", "recommended next"):
            table.add_column(col)
        for u in list(self.users.values())[-rows:][::-1]:
            last = u["last_event"]
            tops = "  ".join(f"{t['category']} {t['p']:.2f}" for t in u["top_interests"][:3])
            recs = "; ".join(self.title(r["item_id"], 28) for r in (u.get("recommendations") or [])[:3])
            table.add_row(u["user_id"], str(u["version"]), str(u["events_applied"]),
                          f"{last['type']} {self.title(last['item_id'], 32)}", tops, recs or "–")  # fmt: skip
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
    abort: Callable[[], bool] | None = None,
) -> LiveState:
    state = LiveState(title=Titles(settings))
    last_render = 0.0
    with Live(state.render(expected_events), refresh_per_second=4) as live:
        for record in consume(settings, from_beginning=True, idle_timeout_s=idle_timeout_s, abort=abort):
            state.add(record)
            done = stop is not None and stop(state)
            now = time.monotonic()
            if done or now - last_render > 0.25:  # rendering per record would cost more than consuming
                live.update(state.render(expected_events))
                last_render = now
            if done:
                break
    return state
