"""Before a worker starts: is its local table state still backed by the broker's changelogs?

faust keeps, in each local RocksDB partition store, the offset of the last changelog record it holds, and
refuses to start ("persisted offset ... is higher than the last offset in that topic") when the broker has
fewer records: the broker lost its data (a wiped development broker, a cluster rebuilt from scratch, a
changelog topic deleted and recreated). Restarting then fails the same way every time.

The local state describes events the broker no longer has, and neither do the consumer group offsets that
say what was applied, so it cannot be reconciled with the new history. The worker sets it aside (moved,
not deleted: ``<state_dir>/faust.lost-<time>``), says so in its log, and starts from what the broker
holds. To bring the old users back, replay their events (``interest-stream produce ...``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from rocksdict import AccessType, Rdict

from streams.settings import Settings

log = logging.getLogger("interest_stream.recovery")

OFFSET_KEY = b"__faust\0offset__"  # faust.stores.rocksdb.Store.offset_key
TABLES = ("user-state", "heads")


def changelog_topic(settings: Settings, table: str) -> str:
    """The name faust gives ``table``'s changelog topic."""
    return f"{settings.app_id}-{table}-changelog"


def local_changelog_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """(changelog topic, partition) -> offset of the last changelog record the local store holds."""
    out = {}
    root = Path(settings.state_dir) / "faust"
    for table in TABLES:
        for db in root.glob(f"**/tables/{table}-*.db"):
            partition = int(db.name.removesuffix(".db").rsplit("-", 1)[1])
            store = Rdict(str(db), access_type=AccessType.read_only())
            try:
                raw = store.get(OFFSET_KEY)
            finally:
                store.close()
            if raw is not None:
                out[(changelog_topic(settings, table), partition)] = int(raw)
    return out


def stale_partitions(settings: Settings) -> list[str]:
    """Local stores that are ahead of (or missing from) the broker's changelog, as readable lines."""
    local = local_changelog_offsets(settings)
    if not local:
        return []
    consumer = KafkaConsumer(bootstrap_servers=settings.broker, group_id=None, enable_auto_commit=False)
    try:
        topics = consumer.topics()
        present = [TopicPartition(t, p) for t, p in local if t in topics]
        ends = consumer.end_offsets(present) if present else {}
    finally:
        consumer.close()
    stale = []
    for (topic, partition), offset in sorted(local.items()):
        end = ends.get(TopicPartition(topic, partition))
        if end is None:
            stale.append(
                f"{topic}[{partition}]: the topic is gone, the local store holds up to offset {offset}"
            )
        elif offset >= end:
            stale.append(
                f"{topic}[{partition}]: the broker ends at {end}, the local store holds offset {offset}"
            )
    return stale


def set_aside_if_stale(settings: Settings) -> str | None:
    """Move the local table state aside when the broker lost the changelog behind it; say what happened."""
    stale = stale_partitions(settings)
    if not stale:
        return None
    root = Path(settings.state_dir) / "faust"
    aside = root.with_name(f"faust.lost-{time.strftime('%Y%m%d-%H%M%S')}")
    root.rename(aside)
    message = (
        "the broker no longer has the changelog records behind this worker's local state (it lost its "
        "data, or the topics were recreated):\n  " + "\n  ".join(stale) + f"\nThe local state was moved to "
        f"{aside}; the worker starts from what the broker holds. Replay the lost events to rebuild "
        "those users."
    )
    log.error(message)
    return message
