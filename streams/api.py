"""The query API: what the system knows about a user or an item, served by every worker on its web port.

- ``GET /users/{user_id}/interest``: the user's interest vector, top categories and which recent events
  make up the vector (``UserState.contributions``).
- ``GET /users/{user_id}/recommendations?k=10``: the top items, computed now from the newest model
  snapshot (the next-item ranker mixed with the sequential model, as in updates), with the recent items
  that led to each (``NextItemRanker.because``).
- ``GET /items/{item_id}/similar?k=10``: nearest items by text embedding.

A user lives on one partition, and so on one worker: a request for a user reaches the worker that owns
the user whichever worker it was sent to (faust's table routing forwards it by the key's partition, the
same murmur2 partition its events are on). Item queries need no routing: every worker holds the catalogue
and the model snapshot. The OpenAPI description is ``schemas/openapi.json``. Errors are JSON
``{"error": ...}``: 404 for an unknown user or item, 400 for a bad ``k``, 503 while a worker cannot
answer yet (no model snapshot, or the user's partition is moving).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import faust.streams
import numpy as np

from models.interest import UserState
from models.sharding import partition_for
from streams.agents import catalog, load_core, owned_partitions, sequence_vectors, served_model
from streams.app import app, heads, settings, user_states

log = logging.getLogger("interest_stream.api")

MAX_K = 100
EXPLAINED_EVENTS = 10


class ApiError(Exception):
    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": message, **details}


def parse_k(request: Any, default: int = 10) -> int:
    raw = request.query.get("k")
    if raw is None:
        return default
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(400, f"k must be an integer within 1..{MAX_K}", k=raw) from None
    if not 1 <= k <= MAX_K:
        raise ApiError(400, f"k must be an integer within 1..{MAX_K}", k=raw)
    return k


class _OnPartition:
    """Stands in for faust's current event, of which a table read uses only the partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def read_on_partition(table: Any, key: bytes, partition: int) -> bytes | None:
    """A table read from ``partition``'s store only (faust picks the store by the current event; with
    none it would search every partition's store, including stale ones of partitions that moved away)."""
    holder = _OnPartition(partition)
    token = faust.streams._current_event.set(weakref.ref(holder))
    try:
        return table.get(key)
    finally:
        faust.streams._current_event.reset(token)


def user_state(user_id: str) -> tuple[UserState, int]:
    key = user_id.encode()
    partition = partition_for(key, settings.partitions)
    if (
        partition not in owned_partitions()
    ):  # routing sent it here, so the partition is moving: ask again shortly
        raise ApiError(503, "the user's partition is being reassigned; retry shortly", user_id=user_id)
    raw = read_on_partition(user_states, key, partition)
    if raw is None:
        raise ApiError(404, "unknown user", user_id=user_id)
    return UserState.from_bytes(raw), partition


_heads: dict[int, tuple[bytes, Any]] = {}


def head_of(core: Any, partition: int) -> Any:
    """The partition's head replica, parsed again only when it changed (it is a few hundred KB)."""
    raw = read_on_partition(heads, str(partition).encode(), partition)
    cached = _heads.get(partition)
    if cached is None or cached[0] != raw:
        cached = _heads[partition] = (raw, core.load_head(raw))
    return cached[1]


def title_of(item_id: str) -> str | None:
    item = catalog.get(item_id)
    return None if item is None else item.title


async def item_vectors(item_ids: list[str]) -> dict[str, np.ndarray]:
    """Text embeddings of catalogue items (through the embedding cache, off the event loop)."""
    core = await load_core()
    items = {i: catalog.get(i) for i in set(item_ids)}
    found = {i: item for i, item in items.items() if item is not None}
    vectors = await asyncio.get_running_loop().run_in_executor(None, core.embed, list(found.values()))
    return {i: vectors[item.encoder_text] for i, item in found.items() if item.encoder_text in vectors}


async def interest_of(user_id: str) -> dict[str, Any]:
    core = await load_core()
    state, partition = user_state(user_id)
    head = head_of(core, partition)
    # The environment of the newest event is not kept: its time without context stands in for it.
    top = core.top_interests(head, state)
    vectors = await item_vectors(state.recent_items)
    shares = state.contributions([vectors.get(i) for i in state.recent_items], core.config)
    order = sorted(range(len(shares)), key=lambda k: -shares[k])[:EXPLAINED_EVENTS]
    types = ("click", "cart", "order")
    return {
        "user_id": user_id,
        "version": state.version,
        "events_applied": state.events_applied,
        "embedding": np.round(state.embedding().astype(np.float64), 7).tolist(),
        "top_interests": [{"category": c, "p": round(p, 6)} for c, p in top],
        "explanation": [
            {
                "event_id": state.recent_events[k] or None,
                "item_id": state.recent_items[k],
                "title": title_of(state.recent_items[k]),
                "type": types[state.recent_types[k]],
                "ts": state.recent_ts[k],
                "share": round(shares[k], 6),
            }
            for k in order
            if round(shares[k], 6) > 0
        ],  # fmt: skip
    }


async def recommendations_of(user_id: str, k: int) -> dict[str, Any]:
    state, _ = user_state(user_id)
    ranker = served_model.ranker
    if ranker is None:
        raise ApiError(503, "no model snapshot loaded yet (is the trainer running?)", user_id=user_id)
    vector = None
    if served_model.model is not None and served_model.item_vectors is not None:
        vector = (await sequence_vectors(await load_core(), {user_id: state}))[user_id]
    top = served_model.recommend(state, k, vector) or []
    items = []
    for item_id, score in top:
        because = ranker.because(state.recent_items, item_id)
        titles = [title_of(i) for i in because]
        items.append({"item_id": item_id, "title": title_of(item_id), "score": round(score, 6),
                      "because": because, "because_titles": titles,
                      "new": ranker.is_new(item_id)})  # fmt: skip
    return {"user_id": user_id, "version": state.version, "model": served_model.version, "items": items}


async def similar_items(item_id: str, k: int) -> dict[str, Any]:
    if catalog.get(item_id) is None:
        raise ApiError(404, "unknown item", item_id=item_id)
    ranker = served_model.ranker
    if ranker is None or ranker.n_items == 0:
        raise ApiError(503, "no model snapshot loaded yet (is the trainer running?)", item_id=item_id)
    vector = (await item_vectors([item_id]))[item_id]
    found = ranker.similar(vector, k, leave_out=[item_id])
    return {
        "item_id": item_id,
        "title": title_of(item_id),
        "items": [{"item_id": i, "title": title_of(i), "score": round(score, 6)} for i, score in found],
    }


async def answer(web: Any, request: Any, query: Callable[[], Awaitable[dict[str, Any]]]) -> Any:
    """``query()``'s answer as JSON, or its ``ApiError`` (raised while building it too, e.g. a bad k)."""
    try:
        return web.json(await query())
    except ApiError as exc:
        return web.json(exc.body, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - a JSON 500 with the reason, and the traceback in the log
        log.exception("query %s failed", request.path)
        return web.json({"error": f"internal error: {exc!r}"}, status=500)


@app.page("/users/{user_id}/interest")
@app.table_route(table=user_states, match_info="user_id")
async def get_interest(web, request, user_id):  # noqa: ANN001, ANN201 - faust's view signature
    return await answer(web, request, lambda: interest_of(user_id))


@app.page("/users/{user_id}/recommendations")
@app.table_route(table=user_states, match_info="user_id")
async def get_recommendations(web, request, user_id):  # noqa: ANN001, ANN201
    return await answer(web, request, lambda: recommendations_of(user_id, parse_k(request)))


@app.page("/items/{item_id}/similar")
async def get_similar(web, request, item_id):  # noqa: ANN001, ANN201
    return await answer(web, request, lambda: similar_items(item_id, parse_k(request)))
