import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import Event, InvalidEvent, Item, parse_event, resolve_item

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000,
        "item": {"title": "Earbuds", "text": "wireless", "categories": ["audio"]},
        "context": {"device": "ios", "geo": "DE", "app_version": 3}}  # fmt: skip


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def test_valid_event_parses_and_matches_the_schema():
    ev = parse_event(raw(GOOD), "cart", key=b"u1")
    assert ev == Event("e1", "u1", "i1", 1_700_000_000.0, "cart",
                       Item("Earbuds", "wireless", ("audio",)),
                       {"device": "ios", "geo": "DE", "app_version": "3"})  # fmt: skip
    registry_schema = json.loads((SCHEMAS / "event.schema.json").read_text())
    item_schema = json.loads((SCHEMAS / "item.schema.json").read_text())
    from referencing import Registry, Resource

    registry = Registry().with_resource(
        "interest-stream/item.schema.json", Resource.from_contents(item_schema)
    )
    jsonschema.Draft202012Validator(registry_schema, registry=registry).validate(GOOD)


def test_iso_timestamps_and_integer_ids():
    ev = parse_event(raw({**GOOD, "ts": "2024-01-02T03:04:05Z", "user_id": 7}), "click")
    assert ev.ts == 1704164645.0 and ev.user_id == "7"
    naive = parse_event(raw({**GOOD, "ts": "2024-01-02T03:04:05"}), "click")
    assert naive.ts == ev.ts


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "not_object"),
        (b"", "empty"),
        (raw({k: v for k, v in GOOD.items() if k != "event_id"}), "missing_field"),
        (raw({k: v for k, v in GOOD.items() if k != "ts"}), "missing_field"),
        (raw({**GOOD, "user_id": {"a": 1}}), "wrong_type"),
        (raw({**GOOD, "user_id": True}), "wrong_type"),
        (raw({**GOOD, "event_id": ""}), "bad_value"),
        (raw({**GOOD, "ts": "yesterday"}), "bad_timestamp"),
        (raw({**GOOD, "ts": 1_700_000_000_000}), "bad_timestamp"),  # milliseconds
        (raw({**GOOD, "ts": None}), "wrong_type"),
        (raw({**GOOD, "item": {"text": "no title"}}), "missing_field"),
        (raw({**GOOD, "item": {"title": "t", "categories": "audio"}}), "wrong_type"),
        (raw({**GOOD, "item": "x"}), "wrong_type"),
        (raw({**GOOD, "context": ["ios"]}), "wrong_type"),
        (raw({**GOOD, "context": {"nested": {"a": 1}}}), "wrong_type"),
        (raw({**GOOD, "item": {"title": "t", "text": "x" * 20_001}}), "too_large"),
        (raw({**GOOD, "padding": "x" * 70_000}), "too_large"),
    ],
)
def test_each_rejection_has_a_reason(value, reason):
    with pytest.raises(InvalidEvent) as info:
        parse_event(value, "click")
    assert info.value.reason == reason
    assert info.value.message  # readable text for the dead-letter record


def test_key_must_match_user_and_type_must_be_known():
    with pytest.raises(InvalidEvent, match="key_mismatch"):
        parse_event(raw(GOOD), "click", key=b"someone-else")
    with pytest.raises(InvalidEvent, match="unknown_type"):
        parse_event(raw(GOOD), "view")


def test_unknown_item_without_inline_item_is_rejected():
    ev = parse_event(raw({k: v for k, v in GOOD.items() if k != "item"}), "click")
    with pytest.raises(InvalidEvent) as info:
        resolve_item(ev, {}.get)
    assert info.value.reason == "unknown_item"
    assert resolve_item(ev, {"i1": Item("From catalog")}.get).title == "From catalog"


def test_unkeyed_and_future_dated_events_are_rejected_when_asked():
    with pytest.raises(InvalidEvent, match="missing_key"):
        parse_event(raw(GOOD), "click", None, require_key=True)
    assert parse_event(raw(GOOD), "click", None).user_id == GOOD["user_id"]  # the file replay has no keys
    with pytest.raises(InvalidEvent, match="future_timestamp"):
        parse_event(raw({**GOOD, "ts": 2_000_000_000}), "click", latest_ts=1_900_000_000)
    assert parse_event(raw(GOOD), "click", offset=17).offset == 17


REASONS = {
    "bad_json", "not_object", "empty", "missing_field", "wrong_type", "bad_value", "bad_timestamp",
    "too_large", "key_mismatch", "missing_key", "future_timestamp",
}  # fmt: skip
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.text(max_size=300), json_values),
        "user_id": st.one_of(st.just("u1"), st.text(max_size=10), json_values),
        "item_id": st.one_of(st.just("i1"), json_values),
        "ts": st.one_of(st.floats(), st.integers(), st.text(max_size=30), st.just("2024-05-01T18:03:00Z")),
        "item": st.one_of(
            json_values,
            st.fixed_dictionaries({"title": st.text(max_size=20)}, optional={"categories": json_values}),
        ),
        "context": json_values,
    },
)


@st.composite
def records(draw) -> bytes:
    base = json.dumps(draw(fields)).encode()
    how = draw(st.sampled_from(["as is", "flip", "cut", "bytes"]))
    if how == "flip" and base:
        at = draw(st.integers(0, len(base) - 1))
        return base[:at] + bytes([draw(st.integers(0, 255))]) + base[at + 1 :]
    if how == "cut":
        return base[: draw(st.integers(0, len(base)))]
    if how == "bytes":
        return draw(st.binary(max_size=200))
    return base


@settings(max_examples=10_000, deadline=None)
@given(value=records(), key=st.one_of(st.none(), st.just(b"u1"), st.binary(max_size=8)))
def test_fuzzed_records_are_accepted_or_rejected_with_a_reason_never_anything_else(value, key):
    try:
        event = parse_event(value, "click", key, require_key=True, latest_ts=2_000_000_000)
    except InvalidEvent as exc:
        assert exc.reason in REASONS and exc.message
        return
    assert event.user_id and event.event_id and event.item_id and key == event.user_id.encode()
