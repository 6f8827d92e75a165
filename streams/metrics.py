"""Prometheus metrics of a worker, served at ``/metrics`` (and read by the live page, ``/live``).

Counters and histograms are updated where things happen (``streams.agents``); gauges that are cheap to
read at scrape time (lag, users in state, the embedding cache, the model snapshot) are read then. One
registry per process, so the metrics are this worker's own; Prometheus sums over workers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from models.head import PrequentialStats

registry = CollectorRegistry(auto_describe=True)

events_in = Counter("interest_events_total", "Input records read, by topic and event type", ["topic", "type"],
                    registry=registry)  # fmt: skip
dead_letters = Counter("interest_dead_letters_total", "Records sent to the dead-letter topic, by reason",
                       ["reason"], registry=registry)  # fmt: skip
updates_out = Counter("interest_updates_total", "Interest updates published", registry=registry)
batch_size = Histogram("interest_batch_records", "Records per micro-batch", registry=registry,
                       buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 4096))  # fmt: skip
encode_seconds = Histogram(
    "interest_encode_seconds",
    "Embedding a micro-batch's item texts (cache lookups and the encoder call for the misses)",
    registry=registry,
    buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
event_to_update_seconds = Histogram(
    "interest_event_to_update_seconds",
    "From an event's Kafka timestamp to the broker's acknowledgement of its user's update",
    registry=registry,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class RollingPrequential:
    """The head's test-then-train hit rates over the last ``window`` scored events (batches kept whole)."""

    def __init__(self, window: int = 2000) -> None:
        self.window = window
        self.batches: deque[PrequentialStats] = deque()
        self.total = PrequentialStats()

    def add(self, batch: PrequentialStats) -> None:
        if batch.n == 0:
            return
        self.batches.append(batch)
        self.total += batch
        while len(self.batches) > 1 and self.total.n - self.batches[0].n >= self.window:
            self.total -= self.batches.popleft()

    def rates(self) -> dict[str, float]:
        return self.total.as_dict()


rolling = RollingPrequential()
_rate_points: deque[tuple[float, int]] = deque(maxlen=120)  # (monotonic time, events read): the live rate


SCRAPE_GAUGES = {
    "interest_consumer_lag": "Input records on this worker's partitions not yet done",
    "interest_users_in_state": "Users in this worker's state (RocksDB estimate)",
    "interest_owned_partitions": "Input partitions this worker owns",
    "interest_embedding_cache_hits": "Item texts served from the embedding cache since start",
    "interest_embedding_cache_misses": "Item texts encoded since start",
    "interest_encoder_weights_loaded": "1 once the encoder's weights are in (they load after start-up)",
    "interest_prequential_hit1": "The head's rolling test-then-train hit@1 (last ~2,000 events)",
    "interest_prequential_hit5": "The head's rolling test-then-train hit@5 (last ~2,000 events)",
    "interest_model_snapshot": "Id of the model snapshot in use (0: none)",
    "interest_model_snapshot_age_seconds": "Seconds since the snapshot in use was published",
}
"""Gauges read when scraped (name -> help)."""


class _ScrapeTime(Collector):
    """The ``SCRAPE_GAUGES``, from the callable ``install`` is given."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        values = self.read()
        for name, help_text in SCRAPE_GAUGES.items():
            if name in values:
                yield GaugeMetricFamily(name, help_text, value=values[name])


def exported_names() -> set[str]:
    """Every sample name ``/metrics`` can carry (for checking dashboards against it)."""
    names = set(SCRAPE_GAUGES)
    for family in registry.collect():
        if family.name in SCRAPE_GAUGES:
            continue
        names |= {family.name, f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_count",
                  f"{family.name}_sum"}  # fmt: skip
    return names


def install(read: Callable[[], dict[str, float]]) -> None:
    registry.register(_ScrapeTime(read))


def exposition() -> bytes:
    return generate_latest(registry)


def note_events(total: int) -> None:
    _rate_points.append((time.monotonic(), total))


def event_rate(over_s: float = 10.0) -> float:
    """Input records per second over the last ``over_s`` seconds (of the points noted)."""
    if len(_rate_points) < 2:
        return 0.0
    now, newest = _rate_points[-1]
    for t, n in _rate_points:
        if now - t <= over_s:
            return (newest - n) / max(now - t, 1e-9) if now > t else 0.0
    return 0.0
