"""Declare the service's topics with the right partition counts before anything produces to them.

The three event topics and the updates topic share one partition count (co-partitioned by ``user_id``);
``items`` is compacted with one partition so every worker can hold the whole catalog, and so is
``interest-model`` (the sequential model's snapshots, which every worker loads whole).
"""

from __future__ import annotations

import contextlib
import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from models.events import Event, InvalidEvent, parse_event
from models.sharding import partition_for
from streams.settings import Settings

# kafka-python's admin client (the worker's 30 s changelog check, ``streams.agents``; the trainer's check
# of its topics every ``model_sync_s``, ``streams.model_sync``) logs every connection at INFO: about 20
# lines every 30 s, which bury a process's own lines in its log.
logging.getLogger("kafka").setLevel(logging.WARNING)


def decode_event(
    settings: Settings, topic: str, partition: int, key: bytes | None, value: bytes, offset: int | None
) -> Event:
    """Parse and check one record of an event topic; ``InvalidEvent`` says why it is rejected.

    One rule for every reader of the event topics: the worker dead-letters what this rejects, and the
    sequence-model trainer must not learn it either (a model taught events no user state holds)."""
    event = parse_event(value, settings.event_topics[topic], key, offset=offset,
                        require_key=settings.strict_partitioning,
                        latest_ts=time.time() + settings.max_future_s)  # fmt: skip
    home = partition_for(key, settings.partitions) if key is not None else partition
    if settings.strict_partitioning and home != partition:
        raise InvalidEvent(
            "wrong_partition",
            f"key {key[:64]!r} belongs on partition {home} under Kafka's default (murmur2) partitioner, "
            f"not {partition}; all of a user's events must share one partition (librdkafka clients: "
            "partitioner=murmur2_random)",
        )
    return event


def topic_specs(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    specs: dict[str, tuple[int, dict[str, str]]] = {
        name: (settings.partitions, {}) for name in settings.event_topics
    }
    specs[settings.updates_topic] = (settings.partitions, {})
    specs[settings.dlq_topic] = (settings.partitions, {})
    specs[settings.items_topic] = (1, {"cleanup.policy": "compact"})
    # Snapshots of the sequential model: chunks of ~0.9 MB, newest per key kept (streams/model_sync.py).
    # Compaction never touches the active segment, and the default one rolls only after a week or 1 GB:
    # 17 MB every 30 s would pile up for a worker to read at start. 64 MB segments keep it to a few.
    model_topic = {"cleanup.policy": "compact", "max.message.bytes": str(2 * 1024**2),
                   "segment.bytes": str(64 * 1024**2)}  # fmt: skip
    specs[settings.model_topic] = (1, model_topic)
    return specs


def changelog_specs(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """The worker's table changelogs, as faust creates them (compacted, a partition per input partition).

    The worker creates them before faust starts: created by faust at start, a topic that the broker had
    not yet spread to its metadata was left out of the consumer's (faust: "Ignoring missing topic"), and
    every write to its table then failed with PartitionsMismatch ("the changelog has 0 partitions")
    until a metadata refresh minutes later; the worker gave up first. Seen once, on a loaded machine."""
    from streams.recovery import TABLES, changelog_topic

    return {changelog_topic(settings, table): (settings.partitions, {"cleanup.policy": "compact"})
            for table in TABLES}  # fmt: skip


def ensure_topics(settings: Settings, changelogs: bool = False) -> list[str]:
    """Create missing topics (with ``changelogs``, the worker's table changelogs too); return the names
    created. Existing topics are left as they are."""
    specs = {**topic_specs(settings), **(changelog_specs(settings) if changelogs else {})}
    admin = KafkaAdminClient(bootstrap_servers=settings.broker, client_id="interest-stream-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, partitions, 1, topic_configs=configs)
            for name, (partitions, configs) in specs.items()
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        admin.close()
