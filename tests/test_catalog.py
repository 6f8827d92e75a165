"""The catalogue's parsed-item cache never serves an item the topic has replaced, rejected or deleted."""

from __future__ import annotations

import json

from rocksdict import Rdict

from models.events import Item
from streams.catalog import Catalog


def record(title: str, categories: list[str]) -> bytes:
    return json.dumps({"title": title, "categories": categories}).encode()


def test_a_cached_item_follows_new_versions_rejections_and_deletions(tmp_path):
    catalog = Catalog("unused:9092", "items", tmp_path / "catalog", parsed_max=2)
    catalog.db = Rdict(str(tmp_path / "catalog"))
    catalog._apply(b"1", record("Heat (1995)", ["Crime"]))
    assert catalog.get("1") == Item("Heat (1995)", "", ("Crime",))
    assert catalog.get("1") is catalog.get("1")  # parsed once
    catalog._apply(b"1", record("Heat (1995)", ["Crime", "Action"]))
    assert catalog.get("1").categories == ("Crime", "Action")
    catalog._apply(b"1", b"not json")
    assert catalog.get("1").categories == ("Crime", "Action")  # a rejected record keeps the accepted one
    assert catalog.why_missing("1")
    catalog._apply(b"1", None)
    assert catalog.get("1") is None
    for key in (b"2", b"3", b"4"):
        catalog._apply(key, record(f"item {key.decode()}", []))
        catalog.get(key.decode())
    assert len(catalog._parsed) == 2 and catalog.get("2").title == "item 2"  # bounded; 2 is read again
    catalog.db.close()


def test_ids_are_the_accepted_items_in_key_order_whatever_was_rejected_or_deleted(tmp_path):
    catalog = Catalog("unused:9092", "items", tmp_path / "catalog")
    catalog.db = Rdict(str(tmp_path / "catalog"))
    for key in (b"3", b"1", b"2", b"4"):
        catalog._apply(key, record(f"item {key.decode()}", []))
    catalog._apply(b"5", b"not json")  # rejected, never accepted
    catalog._apply(b"2", None)  # deleted
    assert list(catalog.ids()) == [i for i, _ in catalog.items()] == ["1", "3", "4"]
    catalog.db.close()
