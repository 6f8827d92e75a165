"""Turning files into events: the MovieLens sample, JSONL and CSV.

Both ``interest-stream produce`` (files into Kafka) and the file replay read through here, so a file means
the same events on either path.

MovieLens mapping (ratings are explicit feedback; we read them as behaviour of rising commitment):
rating >= 4.5 -> ``order``, 3.5-4.0 -> ``cart``, <= 3.0 -> ``click``. ``event_id`` is ``ml-<user>-<movie>``,
``ts`` is the rating timestamp, the item is the movie: title as text, genres as categories, and the
users' free-text tags for that movie (if any) as ``text``.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from models.config import EVENT_TYPES
from models.events import Item, item_to_json

REPO_ROOT = Path(__file__).resolve().parent.parent
MOVIELENS_SAMPLE = REPO_ROOT / "data" / "ml-latest-small"

Record = tuple[str, dict[str, Any]]  # (event type, wire-form event)
CSV_COLUMNS = ("event_id", "user_id", "item_id", "ts")  # the columns read_csv needs


class SourceError(ValueError):
    """A line of an events file that cannot become an event: ``path:line: why``. What an event says is
    the worker's to judge (it dead-letters what breaks the contract); this is about what picks its topic
    and makes it a record at all."""


def rating_to_type(rating: float) -> str:
    if rating >= 4.5:
        return "order"
    if rating >= 3.5:
        return "cart"
    return "click"


TagFilter = Callable[[str, str, int], bool]  # (user id, movie id, timestamp) -> keep the tag?


def movielens_items(folder: Path = MOVIELENS_SAMPLE, keep_tag: TagFilter | None = None) -> dict[str, Item]:
    """Movies as items. ``keep_tag`` chooses which users' tags make up the text: an evaluation must not
    let a held-out item carry tags written after it was held out (or by the user it is held out from)."""
    tags: dict[str, set[str]] = defaultdict(set)
    tags_file = folder / "tags.csv"
    if tags_file.exists():
        with open(tags_file, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if keep_tag is None or keep_tag(row["userId"], row["movieId"], int(row["timestamp"])):
                    tags[row["movieId"]].add(row["tag"].strip())
    items = {}
    with open(folder / "movies.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
            text = ", ".join(sorted(t for t in tags.get(row["movieId"], ()) if t))
            items[row["movieId"]] = Item(row["title"], text, tuple(genres))
    return items


def movielens_events(
    folder: Path = MOVIELENS_SAMPLE,
    limit: int | None = None,
    max_users: int | None = None,
    inline_items: bool = False,
) -> Iterator[Record]:
    """Ratings in file order (user by user), as events; ``inline_items`` embeds each movie."""
    items = movielens_items(folder) if inline_items else {}
    users: set[str] = set()
    with open(folder / "ratings.csv", newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh)):
            if limit is not None and n >= limit:
                return
            if max_users is not None and row["userId"] not in users and len(users) >= max_users:
                return
            users.add(row["userId"])
            event: dict[str, Any] = {
                "event_id": f"ml-{row['userId']}-{row['movieId']}",
                "user_id": row["userId"],
                "item_id": row["movieId"],
                "ts": int(row["timestamp"]),
                "context": {"source": "movielens"},
            }
            if inline_items:
                event["item"] = item_to_json(items[row["movieId"]])
            yield rating_to_type(float(row["rating"])), event


def read_jsonl(path: Path, default_type: str | None = None) -> Iterator[Record]:
    """One JSON event per line; its ``type`` field (or ``default_type``) picks the topic."""
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}:{line_no}: not JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise SourceError(f"{path}:{line_no}: not a JSON object")
            event_type = obj.pop("type", None) or default_type
            if event_type not in EVENT_TYPES:
                raise SourceError(f"{path}:{line_no}: no valid 'type' (one of {EVENT_TYPES})")
            yield event_type, obj


def read_csv(path: Path, default_type: str | None = None) -> Iterator[Record]:
    """Columns event_id,user_id,item_id,ts[,type,title,text,categories ('|'-separated),device,geo]."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise SourceError(
                f"{path}:1: the header lacks {', '.join(missing)} (needed: {','.join(CSV_COLUMNS)})"
            )
        for row in reader:
            at = f"{path}:{reader.line_num}"
            if None in row or None in row.values():  # DictReader's marks for extra and missing fields
                raise SourceError(f"{at}: not the header's {len(header)} fields")
            event_type = row.get("type") or default_type
            if event_type not in EVENT_TYPES:
                raise SourceError(f"{at}: no valid 'type' (one of {EVENT_TYPES})")
            ts: Any = row["ts"]
            with contextlib.suppress(ValueError):  # else an ISO-8601 string, validated by the consumer
                ts = float(ts)
            event: dict[str, Any] = {k: row[k] for k in ("event_id", "user_id", "item_id")}
            event["ts"] = ts
            if row.get("title"):
                cats = [c for c in (row.get("categories") or "").split("|") if c]
                event["item"] = {"title": row["title"], "text": row.get("text") or "", "categories": cats}
            context = {k: row[k] for k in ("device", "geo") if row.get(k)}
            if context:
                event["context"] = context
            yield event_type, event
