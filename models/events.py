"""The event and item contract, and the validation that guards it.

Validation lives in the core (not in the Faust agent) so the file replay rejects exactly what the worker
rejects. Every rejection carries a stable ``reason`` code plus a readable message; the worker sends both
to the dead-letter topic with the original bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from models.config import EVENT_TYPES

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 20_000
MAX_CATEGORIES = 64
MAX_CONTEXT_KEYS = 32
# Event times outside [1970, 2200) are almost always a unit mistake (milliseconds, microseconds).
MAX_TS = 7_258_118_400.0


class InvalidEvent(ValueError):
    """An input record that breaks the contract; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Item:
    title: str
    text: str = ""
    categories: tuple[str, ...] = ()

    @property
    def encoder_text(self) -> str:
        """What the encoder sees: the title, then ". " + text when there is text; categories are labels."""
        return f"{self.title}. {self.text}" if self.text else self.title


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    ts: float
    type: str
    item: Item | None = None
    context: dict[str, str] = field(default_factory=dict)
    offset: int | None = None
    """Position in its input stream (the Kafka offset in its type's topic); None for file replays."""


def event_order(event: Event) -> tuple[float, str]:
    """The one order of events everywhere (the core's batches, the evaluation's log and split): event
    time, then ``event_id`` as a string. Equal timestamps are common (MovieLens users rate several movies
    in the same second), so the tie-break must be the same wherever an order is taken."""
    return (event.ts, event.event_id)


def _fail(reason: str, message: str) -> InvalidEvent:
    return InvalidEvent(reason, message)


def _id(obj: dict[str, Any], name: str) -> str:
    if name not in obj or obj[name] is None:
        raise _fail("missing_field", f"'{name}' is required")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _fail("wrong_type", f"'{name}' must be a string or integer, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise _fail("bad_value", f"'{name}' must have 1..{MAX_ID_CHARS} characters")
    return text


def parse_ts(value: Any) -> float:
    """Event time as epoch seconds: a number of seconds, or an ISO-8601 string (naive means UTC)."""
    if isinstance(value, bool) or value is None:
        raise _fail("wrong_type", "'ts' must be epoch seconds or an ISO-8601 string")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _fail("bad_timestamp", f"'ts' is not ISO-8601: {value[:64]!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ts = moment.timestamp()
    else:
        raise _fail("wrong_type", "'ts' must be epoch seconds or an ISO-8601 string")
    if not math.isfinite(ts) or not 0 <= ts < MAX_TS:
        raise _fail("bad_timestamp", f"'ts' {value!r} is outside 1970..2200 (milliseconds sent as seconds?)")
    return ts


def parse_item(obj: Any, where: str = "item") -> Item:
    """Validate an item record (inline in an event, or a value of the ``items`` catalog topic)."""
    if not isinstance(obj, dict):
        raise _fail("wrong_type", f"'{where}' must be an object")
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        raise _fail("missing_field", f"'{where}.title' must be a non-empty string")
    text = obj.get("text") or ""
    if not isinstance(text, str):
        raise _fail("wrong_type", f"'{where}.text' must be a string")
    if len(title) > MAX_TITLE_CHARS or len(text) > MAX_TEXT_CHARS:
        raise _fail("too_large", f"'{where}' title/text exceed {MAX_TITLE_CHARS}/{MAX_TEXT_CHARS} chars")
    cats = obj.get("categories") or []
    if not isinstance(cats, list) or not all(isinstance(c, str) and c for c in cats):
        raise _fail("wrong_type", f"'{where}.categories' must be a list of non-empty strings")
    if len(cats) > MAX_CATEGORIES:
        raise _fail("too_large", f"'{where}.categories' has more than {MAX_CATEGORIES} entries")
    return Item(title.strip(), text.strip(), tuple(dict.fromkeys(cats)))


def _context(obj: Any) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise _fail("wrong_type", "'context' must be an object")
    if len(obj) > MAX_CONTEXT_KEYS:
        raise _fail("too_large", f"'context' has more than {MAX_CONTEXT_KEYS} keys")
    out: dict[str, str] = {}
    for key, value in obj.items():
        if isinstance(value, (dict, list)):
            raise _fail("wrong_type", f"'context.{key}' must be a scalar")
        if value is not None:
            out[str(key)] = str(value)[:MAX_ID_CHARS]
    return out


def parse_event(
    raw: bytes,
    event_type: str,
    key: bytes | None = None,
    *,
    offset: int | None = None,
    require_key: bool = False,
    latest_ts: float | None = None,
) -> Event:
    """Decode and validate one event record; raise ``InvalidEvent`` with the first problem found.

    ``key`` is the Kafka record key: it must equal ``user_id``, because the key decides the partition and
    so which worker owns the user's state; with ``require_key`` a record without one is rejected too (an
    unkeyed record lands on any partition and would split the user's state). ``latest_ts`` is the latest
    event time accepted: one far in the future would become the user's reference time and decay every
    real event after it to nothing.
    """
    if event_type not in EVENT_TYPES:
        raise _fail("unknown_type", f"event type {event_type!r} is not one of {EVENT_TYPES}")
    if raw is None or len(raw) == 0:
        raise _fail("empty", "the record has no value")
    if len(raw) > MAX_EVENT_BYTES:
        raise _fail("too_large", f"{len(raw)} bytes is over the {MAX_EVENT_BYTES}-byte limit")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _fail("bad_json", f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _fail("not_object", f"the value must be a JSON object, got {type(obj).__name__}")
    event_id = _id(obj, "event_id")
    user_id = _id(obj, "user_id")
    item_id = _id(obj, "item_id")
    if "ts" not in obj:
        raise _fail("missing_field", "'ts' is required")
    ts = parse_ts(obj["ts"])
    if latest_ts is not None and ts > latest_ts:
        raise _fail("future_timestamp", f"'ts' {obj['ts']!r} is more than the allowed tolerance ahead of now")
    item = parse_item(obj["item"]) if obj.get("item") is not None else None
    context = _context(obj.get("context"))
    if key is None and require_key:
        raise _fail("missing_key", f"the record has no key; key it by user_id ({user_id!r})")
    if key is not None and key.decode("utf-8", "replace") != user_id:
        raise _fail("key_mismatch", f"record key {key[:64]!r} differs from user_id {user_id!r}")
    return Event(event_id, user_id, item_id, ts, event_type, item, context, offset)


def event_to_json(event: Event) -> dict[str, Any]:
    """The wire form of an event (what producers send); the type is carried by the topic."""
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "ts": event.ts,
    }
    if event.item is not None:
        out["item"] = item_to_json(event.item)
    if event.context:
        out["context"] = event.context
    return out


def item_to_json(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {"title": item.title, "categories": list(item.categories)}
    if item.text:
        out["text"] = item.text
    return out


def resolve_item(event: Event, catalog_get: Any) -> Item:
    """The item an event is about: inline in the event, else from the catalog (``catalog_get(id)``)."""
    if event.item is not None:
        return event.item
    item = catalog_get(event.item_id)
    if item is None:
        raise _fail(
            "unknown_item", f"item {event.item_id!r} is not in the catalog and the event has no 'item'"
        )
    return item
