"""The live page a person can watch: ``GET /live`` (one HTML file, no build step) and the JSON it polls,
``GET /live/data`` (this worker's stream figures and the users it updated last). The page reads a
user's interest and recommendations from the query API (``streams.api``)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from streams import metrics
from streams.agents import counters, lag, owned_partitions, served_model
from streams.app import app

PAGE = Path(__file__).resolve().parent / "static" / "live.html"
_recent_users: OrderedDict[str, None] = OrderedDict()
RECENT_USERS = 20


def note_updated(user_ids: list[str]) -> None:
    """Remember the users updated last (newest first on the page)."""
    for user in user_ids:
        _recent_users.pop(user, None)
        _recent_users[user] = None
    while len(_recent_users) > RECENT_USERS:
        _recent_users.popitem(last=False)


def live_data() -> dict:
    return {
        "worker": str(app.conf.canonical_url),
        "events": counters.events,
        "applied": counters.applied,
        "updates": counters.updates,
        "dead_lettered": counters.dead_lettered,
        "event_rate": round(metrics.event_rate(), 1),
        "prequential": metrics.rolling.rates(),
        "lag": lag(),
        "owned_partitions": owned_partitions(),
        "model": served_model.version,
        "recent_users": list(reversed(_recent_users)),
    }


@app.page("/live")
async def live_page(web, request):  # noqa: ANN001, ANN201 - faust's view signature
    return web.html(PAGE.read_text())


@app.page("/live/data")
async def live_data_page(web, request):  # noqa: ANN001, ANN201
    return web.json(live_data())
