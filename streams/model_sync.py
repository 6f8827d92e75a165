"""The sequential model, one for all workers: a trainer learns it, every worker serves its snapshots.

Users are partitioned across workers; the sequential model (``models/sequence.py``) is global, and a
transformer's weights do not average well when each copy has seen only some users. So training is
separated from serving (the Monolith pattern):

- **Trainer** (``interest-stream train``, one process): assigned *all* partitions of the click/cart/order
  topics (its progress is committed under the group ``<app_id>-trainer``, for lag monitoring). It
  learns every micro-batch as it arrives (in event-time order, one pass, test-then-train), and every
  ``model_sync_s`` seconds it (1) writes its local checkpoint (weights, optimiser, users' windows,
  input positions), (2) publishes the weights to the compacted ``interest-model`` topic, (3) commits
  its input offsets. A restarted trainer resumes from its checkpoint at the input positions stored in
  it, so no event is learned twice or skipped; the checkpoint keeps the input topics' ids too, and a topic
  recreated since (a broker that lost its data) is read from its beginning (``resume_positions``).
  A snapshot the broker does not take (gone, or not answering in time) is logged and published again
  a round later: the checkpoint already holds it. An idle trainer checks every ``model_sync_s`` that the
  model topic still holds its last snapshot (``Trainer.snapshot_lost``) and publishes it again if not.
- **Workers** follow ``interest-model`` whole (outside their group, like the item catalog) and swap in
  each complete snapshot. A user's window lives in the user's state (``UserState.recent_*``), so the
  worker computes the user's vector with the newest weights it has; nothing per-user crosses workers.

The trainer also learns the next-item ranker (``models/ranker.py``: successor counts and popularity
over all users, the same counting that ``evaluate`` runs as its ``default``) and publishes it in the same
snapshot, with every catalogue item's text embedding, so every worker recommends from one global ranker.
Counting is exact, so the ranker a worker serves is the one ``evaluate`` would have after the events the
snapshot learned; the user's own recent items (the query) come from the worker's user state, fresh.
A served list mixes the ranker with the sequential model (``InterestConfig.sequence_mix``,
``ServedModel.recommend``), as ``evaluate``'s ``mix`` rows do.

How stale a worker's copy is: at most ``model_sync_s`` plus the trainer's lag behind the input plus the
time to publish and read a snapshot (17 MB: well under a second on one machine). ``evaluate`` measures
what a sync interval costs in Recall@10 (the ``sequence: synced every N events`` rows).

A snapshot is larger than a Kafka record may be (1 MB by default), so it goes out in chunks: keys
``chunk/<k>`` (a 16-byte header: snapshot id, number of chunks, chunk index), then the key ``manifest``
(JSON: id, chunks, bytes, sha256, learned events, the trainer instance). Compaction keeps the newest
record per key; a reader takes a snapshot only when the manifest's chunks are all present with its id
and the hash matches, so a trainer dying mid-publish leaves the previous snapshot in force.

One trainer publishes: each snapshot is one Kafka transaction of a producer whose transactional id is
``<app_id>-trainer``, and workers read committed records only. A trainer starting fences the one before
it (the broker aborts that one's open transaction and refuses its next) and writes a claim (key
``trainer``) naming itself; the fenced trainer reads the claim and stops (``TrainerReplaced``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import socket
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import kafka.errors
import numpy as np
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerFenced

from models.config import InterestConfig
from models.events import Event, InvalidEvent, Item, event_order, resolve_item
from models.interest import UserState
from models.ranker import NextItemRanker, RecentItems
from streams.topics import decode_event, ensure_topics

if TYPE_CHECKING:  # torch (via models.sequence) is imported where a model is first built or loaded: a
    # worker's start does not wait ~2 s for it (its encoder imports it in a thread of its own meanwhile)
    from models.sequence import SequenceModel, Step

log = logging.getLogger("interest_stream.model_sync")

CHUNK_BYTES = 900 * 1024  # under the broker's default 1 MiB record limit, with room for the header
_CHUNK_HEADER = struct.Struct("<QII")  # snapshot id, chunks, index
MANIFEST_KEY = b"manifest"
_BUNDLE_MAGIC = b"IBND1"  # a snapshot holding the sequential model and the ranker


def bundle(sequence: bytes, ranker: bytes) -> bytes:
    """One snapshot of both global models (the trainer publishes them together)."""
    return _BUNDLE_MAGIC + struct.pack("<Q", len(sequence)) + sequence + ranker


def unbundle(raw: bytes) -> tuple[bytes, bytes | None]:
    """(sequential model, ranker or None): a snapshot from before the ranker holds the model alone."""
    if raw[: len(_BUNDLE_MAGIC)] != _BUNDLE_MAGIC:
        return raw, None
    (n,) = struct.unpack_from("<Q", raw, len(_BUNDLE_MAGIC))
    start = len(_BUNDLE_MAGIC) + 8
    return raw[start : start + n], raw[start + n :]


def snapshot_records(
    raw: bytes,
    snapshot_id: int,
    learned_events: int,
    trainer: str = "",
    positions: dict[tuple[str, int], int] | None = None,
    topic_ids: dict[str, str | None] | None = None,
) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) records that publish ``raw``: its chunks, then the manifest (``trainer``: the
    instance that published it; ``positions``: the input offsets it has learned up to, in the topics of
    ``topic_ids``, so a trainer that lost its checkpoint goes on from here: ``Trainer.go_on_from_topic``)."""
    n = max(1, -(-len(raw) // CHUNK_BYTES))
    for k in range(n):
        body = raw[k * CHUNK_BYTES : (k + 1) * CHUNK_BYTES]
        yield f"chunk/{k}".encode(), _CHUNK_HEADER.pack(snapshot_id, n, k) + body
    manifest = {"id": snapshot_id, "chunks": n, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                "learned_events": learned_events, "published_at": time.time(),
                "trainer": trainer}  # fmt: skip
    if positions is not None:
        manifest["positions"] = [
            [topic, partition, offset] for (topic, partition), offset in sorted(positions.items())
        ]
        manifest["topic_ids"] = topic_ids or {}
    yield MANIFEST_KEY, json.dumps(manifest).encode()


class SnapshotAssembler:
    """Fed the model topic's records in order; ``take()`` returns each newly completed snapshot once."""

    def __init__(self) -> None:
        self.chunks: dict[int, tuple[int, bytes]] = {}  # index -> (snapshot id, body)
        self.pending: bytes | None = None
        self.manifest: dict | None = None

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or value is None:
            return
        if key == MANIFEST_KEY:
            manifest = json.loads(value)
            parts = [self.chunks.get(k) for k in range(manifest["chunks"])]
            if any(p is None or p[0] != manifest["id"] for p in parts):
                # Chunks of a newer snapshot in its place: compaction kept this manifest (the last of its
                # key in a cleaned segment) and removed its chunks, which the newer ones replace; that
                # newer snapshot follows. Anything else is a snapshot that never arrived whole.
                newer = any(p is not None and p[0] > manifest["id"] for p in parts)
                (log.debug if newer else log.warning)(
                    "model snapshot %s is incomplete on the topic; keeping the previous one", manifest["id"]
                )
                return
            raw = b"".join(p[1] for p in parts)  # type: ignore[index]
            if len(raw) != manifest["bytes"] or hashlib.sha256(raw).hexdigest() != manifest["sha256"]:
                log.warning("model snapshot %s fails its checksum; keeping the previous one", manifest["id"])
                return
            self.pending, self.manifest = raw, manifest
        elif key.startswith(b"chunk/"):
            snapshot_id, _, index = _CHUNK_HEADER.unpack_from(value)
            self.chunks[index] = (snapshot_id, value[_CHUNK_HEADER.size :])

    def take(self) -> bytes | None:
        raw, self.pending = self.pending, None
        return raw


class ServedModel:
    """A worker's copy of the global models: the newest snapshot from the topic, the user vectors it
    gives the users a batch touched, and their recommendations."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        max_text_items: int = 100_000,
        config: InterestConfig | None = None,
        search_threads: int = 1,
    ) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.search_threads = search_threads  # of the text index's batched searches (same results)
        self.config = config or InterestConfig()
        self.model: SequenceModel | None = None
        self.ranker: NextItemRanker | None = None
        self.item_vectors: np.ndarray | None = None
        """The model's item vectors ``r_i`` of the ranker's items (``ids`` order): with a user vector,
        the sequence scores that served lists mix in (``InterestConfig.sequence_mix``)."""
        self.manifest: dict | None = None
        self.assembler = SnapshotAssembler()
        self.loads = 0
        self.caught_up = asyncio.Event()
        self.text: OrderedDict[str, np.ndarray] = OrderedDict()
        """Item id -> text embedding (float16) of recently seen items, least recently used first: what
        the windows of the users in a batch mostly hold. Bounded (``max_text_items``, 77 MB at 384-d);
        an item that fell out is looked up again through the embedding cache when a window needs it."""
        self.max_text_items = max_text_items
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="load-snapshot")
        self._loading = 0  # snapshots handed to the loader and not installed yet
        self._topic_read = False

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        self.assembler.apply(key, value)
        raw = self.assembler.take()
        if raw is None:
            return
        manifest = self.assembler.manifest
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a test): load it here
            self._install(self._load(raw), manifest)
            return
        # Off the event loop: parsing a snapshot and extending the text index take seconds with a big
        # catalogue (the HNSW index of 100,000 items builds in ~40 s), and the loop must keep consuming
        # and heartbeating meanwhile. One loader thread, so snapshots are installed in order.
        self._loading += 1
        future = loop.run_in_executor(self._loader, self._load, raw)
        future.add_done_callback(lambda f: self._loaded(f, manifest))

    def _load(self, raw: bytes) -> tuple[SequenceModel, NextItemRanker | None, np.ndarray | None] | None:
        try:
            sequence, ranker = unbundle(raw)
            from models.sequence import SequenceModel

            model = SequenceModel.from_bytes(sequence)
            ranked = None if ranker is None else NextItemRanker.from_bytes(ranker, self.config)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            log.error("cannot load model snapshot: %s", exc)
            return None
        if ranked is not None and ranked.config.text_candidates:
            ranked.adopt_index(self.ranker)  # the previous snapshot's index, extended by the new items
            ranked.prepare_index()
            ranked.text_index.search_threads = self.search_threads
        vectors = None
        mixed = ranked is not None and ranked.config.sequence_mix > 0 and ranked.n_items > 0
        if mixed and ranked.dim == model.net.text_proj.in_features:  # else another encoder's: unmixed
            vectors = model.item_vectors_of(ranked.ids, ranked.text_vectors())
        return model, ranked, vectors

    def _loaded(self, future: asyncio.Future, manifest: dict | None) -> None:
        self._loading -= 1
        if not future.cancelled() and future.exception() is None:
            self._install(future.result(), manifest)
        else:
            log.error(
                "loading a model snapshot failed: %r", None if future.cancelled() else future.exception()
            )
        if self._loading == 0 and self._topic_read:
            self.caught_up.set()

    def _install(
        self,
        loaded: tuple[SequenceModel, NextItemRanker | None, np.ndarray | None] | None,
        manifest: dict | None,
    ) -> None:
        if loaded is None:
            return
        model, ranked, vectors = loaded
        self.model, self.ranker, self.item_vectors, self.manifest = model, ranked, vectors, manifest
        self.loads += 1
        log.info("model snapshot %s loaded (learned %d events; ranker: %s items)", self.version,
                 model.learned_events, "no" if ranked is None else ranked.n_items)  # fmt: skip

    @property
    def version(self) -> int | None:
        return None if self.manifest is None else int(self.manifest["id"])

    async def run(self) -> None:
        from streams.catalog import follow_topic

        async def on_round(positions: dict[int, int], ends: dict[int, int], asked: float) -> None:
            if all(positions.get(p, 0) >= e for p, e in ends.items()):
                self._topic_read = True
                if self._loading == 0:  # else set once the snapshot being loaded is in force
                    self.caught_up.set()

        # committed transactions only: a snapshot a fenced or killed trainer did not finish is never seen
        await follow_topic(self.bootstrap, self.topic, self._apply, on_round, "read_committed")

    async def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until the topic has been read to its end once (the newest snapshot, if any, is loaded),
        so a (re)started worker's first updates already carry the model's vectors."""
        try:
            await asyncio.wait_for(self.caught_up.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def remember(self, item_id: str, text: np.ndarray) -> None:
        """Keep an item's text for the windows (nothing while no snapshot is loaded: nothing reads it)."""
        if self.model is None:
            return
        if item_id in self.text:
            self.text.move_to_end(item_id)
            return
        self.text[item_id] = text.astype(np.float16)
        while len(self.text) > self.max_text_items:
            self.text.popitem(last=False)

    def missing(self, states: dict[str, UserState]) -> set[str]:
        """Items in these users' windows whose text embedding this worker does not hold."""
        return {i for s in states.values() for i in s.recent_items if i not in self.text}

    def window(self, state: UserState) -> list[Step]:
        steps = zip(state.recent_items, state.recent_types, state.recent_ts, strict=True)
        return [(i, self._text(i), t, ts) for i, t, ts in steps]

    def _text(self, item_id: str) -> np.ndarray | None:
        vec = self.text.get(item_id)
        if vec is None:
            return None
        self.text.move_to_end(item_id)
        return vec.astype(np.float32)

    def user_vectors(self, states: dict[str, UserState], model: SequenceModel) -> dict[str, np.ndarray]:
        """User -> ``model``'s user vector (``score(i) = u . r_i``). An item whose text has another
        dimension than the model's (a snapshot from another encoder) is read by its ID alone."""
        users = list(states)
        dim = model.net.text_proj.in_features
        windows = [[(i, t if t is not None and t.shape == (dim,) else None, k, ts) for i, t, k, ts in
                    self.window(states[u])] for u in users]  # fmt: skip
        import torch

        with torch.inference_mode():
            vectors = model.user_vectors_of(windows)
        return dict(zip(users, vectors, strict=True))

    def recommend(
        self, state: UserState, k: int, user_vector: np.ndarray | None = None
    ) -> list[tuple[str, float]] | None:
        """The top ``k`` for this user (its recent items are the query and are left out); None while no
        snapshot with a ranker is loaded. With the user's vector from the snapshot's sequential model
        (``user_vectors``), the ranker's scores mixed with the model's (``InterestConfig.sequence_mix``),
        as ``evaluate``'s ``mix`` rows rank; without it, the ranker alone, as its ``default`` row."""
        return self.recommend_many({"": state}, k, {"": user_vector})[""]

    def recommend_many(
        self, states: dict[str, UserState], k: int, user_vectors: dict[str, np.ndarray | None]
    ) -> dict[str, list[tuple[str, float]] | None]:
        """``recommend`` for every user of a micro-batch: the same lists, with the text index searched
        once for all of them (``NextItemRanker.text_hits_many``) rather than twice per user."""
        ranker = self.ranker
        if ranker is None or k <= 0:
            return dict.fromkeys(states)
        users = list(states)
        interests = [states[u].embedding() for u in users]
        hits = ranker.text_hits_many([states[u].recent_items for u in users], interests)
        out: dict[str, list[tuple[str, float]] | None] = {}
        for user, interest, found in zip(users, interests, hits, strict=True):
            state, vector = states[user], user_vectors.get(user)
            sequence = None
            if vector is not None and self.item_vectors is not None:
                sequence = self.item_vectors @ np.asarray(vector, np.float32)
            out[user] = ranker.recommend(state.recent_items, interest, k, exclude=state.recent_items,
                                         sequence=sequence, hits=found)  # fmt: skip
        return out


def _event_topics(settings) -> dict[str, tuple[str | None, list[int]]]:  # noqa: ANN001
    """The event topics' ids and partitions, once they exist (created by ``ensure_topics`` or a producer).
    A topic's id (KIP-516) changes when it is deleted and created again, as on a broker that lost its data:
    offsets then number other records."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.broker)
    try:
        while True:
            described = admin.describe_topics(list(settings.event_topics))
            found = {t["name"]: (_id(t), sorted(p["partition_index"] for p in t["partitions"]))
                     for t in described if t["error_code"] == 0}  # fmt: skip
            if all(found.get(t, (None, []))[1] for t in settings.event_topics):
                return found
            time.sleep(0.5)
    finally:
        admin.close()


def _topic_ids_now(settings) -> dict[str, str | None] | None:  # noqa: ANN001
    """The event topics' and the model topic's ids (None for a topic that does not exist), or None when
    the broker does not answer within a few seconds (a trainer publishing through an outage must not wait
    long for this: its checkpoint is written meanwhile)."""
    from kafka import KafkaAdminClient
    from kafka.errors import RetriableError  # away, timed out, metadata not ready: not a wrong setting

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.broker, request_timeout_ms=5000,
                                 bootstrap_timeout_ms=3000)  # fmt: skip
    except RetriableError:
        return None
    try:
        described = admin.describe_topics([*settings.event_topics, settings.model_topic])
    except RetriableError:
        return None
    finally:
        admin.close()
    return {t["name"]: _id(t) if t["error_code"] == 0 else None for t in described}


def _id(described: dict) -> str | None:
    return None if described["topic_id"] is None else str(described["topic_id"])


def recreated_topics(saved_ids: dict[str, str | None], ids: dict[str, str | None]) -> list[str]:
    """Topics whose id is not the one saved (both known): deleted and created again in between."""
    return sorted(t for t, i in ids.items() if i is not None and saved_ids.get(t) not in (None, i))


CLAIM_KEY = b"trainer"
"""The model topic's record naming the trainer that publishes to it (``Trainer._producer``)."""


READ_MODEL_TOPIC_S = 120.0
"""How long reading the model topic to its end may take (a trainer's start, a fenced trainer)."""


def _model_topic(settings) -> Iterator[tuple[bytes | None, bytes | None]]:  # noqa: ANN001
    """The model topic's committed records, oldest first, as a worker reads them (blocking), up to its
    end as of the call (its last stable offset: an open transaction's records are not waited for).
    To the end, not until records stop coming for a while: a trainer that stopped reading early on a slow
    broker would miss the newest snapshot, and go on from an older one or learn everything again."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.broker, group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed",
                             max_partition_fetch_bytes=16 * 1024**2)  # fmt: skip
    try:
        partitions = consumer.partitions_for_topic(settings.model_topic) or set()
        tps = [TopicPartition(settings.model_topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + READ_MODEL_TOPIC_S
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                late = f"the model topic {settings.model_topic} was not read to its end within "
                raise kafka.errors.KafkaTimeoutError(f"{late}{READ_MODEL_TOPIC_S:.0f} s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    yield record.key, record.value
    finally:
        consumer.close()


def last_claim(settings) -> dict | None:  # noqa: ANN001
    """The newest committed claim on the model topic: which trainer instance publishes there now."""
    claim = None
    for key, value in _model_topic(settings):
        if key == CLAIM_KEY and value is not None:
            claim = json.loads(value)
    return claim


def latest_snapshot(settings) -> tuple[dict, bytes] | None:  # noqa: ANN001
    """The newest complete snapshot on the model topic (manifest, bytes): what workers serve now."""
    reader, found = SnapshotAssembler(), None
    for key, value in _model_topic(settings):
        reader.apply(key, value)
        raw = reader.take()
        if raw is not None:
            found = (reader.manifest, raw)
    return found


async def _bounded(work: Awaitable[None], what: str, timeout_s: float) -> None:
    """``work`` within ``timeout_s`` (``Settings.model_publish_timeout_s``), else ``KafkaTimeoutError``."""
    try:
        await asyncio.wait_for(work, timeout_s)
    except TimeoutError:
        raise KafkaTimeoutError(f"{what} did not finish within {timeout_s:g} s") from None


async def _send_all(producer, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:  # noqa: ANN001
    """``records`` to ``topic`` in one transaction of ``producer``, committed once each is delivered.

    Nothing waits for the records of a transaction that fails or is cancelled: readers never see them
    (``read_committed``), and the producer is dropped, so none is written after the next one's start."""
    await producer.begin_transaction()
    sent = [await producer.send(topic, key=key, value=value) for key, value in records]
    results = await asyncio.gather(*sent, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    await producer.commit_transaction()


async def _stop_quietly(producer) -> None:  # noqa: ANN001
    """Stop a producer that may be fenced or cut off from its broker: what it left open, the next
    producer with its transactional id aborts."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 5.0)


def quiet_fences(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """An event loop exception handler: aiokafka leaves ``ProducerFenced`` set on internal futures that
    nobody awaits, and asyncio reports each as "Future exception was never retrieved" at ERROR. For a
    trainer that another one fenced, that is the expected end, said once in its own words
    (``TrainerReplaced``); everything else goes to the default handler."""
    fenced = isinstance(context.get("exception"), ProducerFenced)
    if fenced and "never retrieved" in context.get("message", ""):
        return
    loop.default_exception_handler(context)


class TrainerReplaced(Exception):
    """Another trainer (the same ``app_id``) started and claimed the model topic: this one stops, so that
    one trainer publishes (as in a rolling update, where the new one replaces the old)."""


class InputRecreated(Exception):
    """An event topic the trainer is reading was deleted and created again (the broker lost its data)
    while it ran: its positions may point into other records. It exits without a checkpoint, and the
    restarted trainer reads the new topic from its beginning (``resume_positions``)."""


def resume_positions(
    saved: dict[tuple[str, int], int],
    saved_ids: dict[str, str | None],
    ids: dict[str, str | None],
    ends: dict[tuple[str, int], int],
) -> tuple[dict[tuple[str, int], int | None], list[str]]:
    """Where a trainer resumes each input partition of ``ends`` (None: from its beginning), and what it
    should say about it.

    ``saved``/``saved_ids``: the checkpoint's positions and the topic ids they were read in; ``ids`` and
    ``ends``: the broker's now. A partition resumes at its saved position, except:

    - its topic's id changed (the topic was recreated: a broker that lost its data, a topic deleted and
      created again): every record in it is new, so from its beginning. Offsets alone cannot tell, once
      the new topic holds as many records as the old one did;
    - its saved position is past its end: records the trainer read are gone. In the same topic (its id
      unchanged) records written later take the offsets from the end on, so from the end; with no saved
      id (a checkpoint from before ids were kept) a recreated topic is the likely cause, so from its
      beginning, as the consumer's reset did before.
    """
    out: dict[tuple[str, int], int | None] = {}
    notes: list[str] = []
    read = {topic for topic, _ in ends}
    recreated = recreated_topics(saved_ids, {t: i for t, i in ids.items() if t in read})
    for topic in recreated:
        notes.append(f"input topic {topic} was recreated (its id was {saved_ids[topic]}, is {ids[topic]}; "
                     "did the broker lose its data?): reading it from its beginning")  # fmt: skip
    for tp, end in sorted(ends.items()):
        position = saved.get(tp)
        if position is None or tp[0] in recreated:
            out[tp] = None
        elif position > end:
            same = saved_ids.get(tp[0]) is not None
            out[tp] = end if same else None
            notes.append(f"input {tp[0]}[{tp[1]}] ends at {end}, below the checkpoint's position {position}: "
                         f"the broker lost records; going on from its "
                         f"{'end' if same else 'beginning (the checkpoint has no topic ids)'}")  # fmt: skip
        else:
            out[tp] = position
    return out, notes


class Trainer:
    """Learns the sequential model from the event topics and publishes it (see the module docstring)."""

    def __init__(self, settings, core, catalog, checkpoint_dir: Path) -> None:  # noqa: ANN001
        self.settings, self.core, self.catalog = settings, core, catalog
        from models.encoder import resolve_device
        from models.sequence import SequenceModel

        self.checkpoint = checkpoint_dir / "trainer-checkpoint.pt"
        # INTEREST_DEVICE=cuda puts the trainer's steps on the GPU too; its snapshots are float32 on the
        # CPU either way, so CPU workers load them (benchmarks/gpu_sequence.py measures what it buys).
        self.device = resolve_device(settings.device)
        self.model = SequenceModel(core.dim, device=self.device)
        self._train_as_set()
        self.ranker = NextItemRanker(core.config, core.dim)
        self.recent = RecentItems(core.config.history_len)
        self.snapshot_id = 0
        self.skipped = 0
        self.positions: dict[tuple[str, int], int] = {}  # input read up to here, as checkpointed
        self.topic_ids: dict[str, str | None] = {}  # the input topics' ids those positions belong to
        self.model_topic_id: str | None = None  # the model topic that holds the last snapshot published
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        """This process, as its claim and its snapshots' manifests name it."""
        self.producer = None  # transactional, started by ``_producer``
        if self.checkpoint.exists():
            self._restore()

    def _restore(self) -> None:
        import torch

        from models.sequence import SequenceModel

        # our own file, written by _save; read onto the CPU (the optimiser moves its moments to the
        # model's device), so a checkpoint written on a GPU resumes on a CPU and back
        saved = torch.load(self.checkpoint, weights_only=False, map_location="cpu")
        self.model = SequenceModel.from_bytes(saved["weights"], self.device)
        self.model.opt.load_state_dict(saved["optimizer"])
        self.model.restore_histories(saved["histories"])
        self._train_as_set()  # the steps set now, not those the checkpoint was learned with
        self.snapshot_id = saved["snapshot_id"]
        self.positions = saved["positions"]
        self.topic_ids = saved.get("topic_ids", {})  # absent before ids were kept
        self.model_topic_id = saved.get("model_topic_id")
        if "ranker" in saved:
            self.ranker = NextItemRanker.from_bytes(saved["ranker"], self.core.config)
            if "recent_items" in saved:
                self.recent.restore(saved["recent_items"], self.ranker.ids)
            else:  # a checkpoint from before they were saved as arrays
                self.recent.of = {u: [tuple(e) for e in h] for u, h in saved["recent"].items()}
        else:
            log.warning(
                "the trainer's checkpoint has no next-item ranker (written before it had one): the "
                "ranker counts from here on; delete %s to learn everything again",
                self.checkpoint,
            )
        log.info("trainer resumed from its checkpoint: snapshot %d, %d events learned", self.snapshot_id,
                 self.model.learned_events)  # fmt: skip

    def _train_as_set(self) -> None:
        """``INTEREST_TRAINER_STEPS`` (0: the model's default, even where the checkpoint was learned with
        another). A training setting only: a worker's use of a snapshot ignores it."""
        from models.sequence import SequenceConfig

        steps = self.settings.trainer_steps or SequenceConfig.steps
        self.model.config = dataclasses.replace(self.model.config, steps=steps)

    def _save(self, weights: bytes, ranker: bytes) -> None:
        """The checkpoint, with the model's and the ranker's bytes as the snapshot publishes them."""
        import torch

        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save({"weights": weights, "optimizer": self.model.opt.state_dict(),
                    "histories": self.model.dump_histories(), "snapshot_id": self.snapshot_id,
                    "positions": self.positions, "topic_ids": self.topic_ids, "ranker": ranker,
                    "recent_items": self.recent.dump(self.ranker.index),
                    "model_topic_id": self.model_topic_id}, tmp)  # fmt: skip
        tmp.replace(self.checkpoint)

    def decode(
        self, topic: str, partition: int, key: bytes | None, value: bytes
    ) -> tuple[Event, Item] | None:
        try:
            event = decode_event(self.settings, topic, partition, key, value, None)
            return event, resolve_item(event, self.catalog.get)
        except (InvalidEvent, ValueError):
            self.skipped += 1  # the workers dead-letter it; the trainer just does not learn it
            return None

    def learn(self, pairs: list[tuple[Event, Item]]) -> None:
        if not pairs:
            return
        pairs.sort(key=lambda p: event_order(p[0]))
        embeddings = self.core.embed([item for _, item in pairs])
        self.model.add_items([(e.item_id, embeddings[i.encoder_text]) for e, i in pairs])
        for event, item in pairs:  # the ranker's query: the user's items before this event
            self.ranker.learn(self.recent.items(event.user_id), event.item_id, embeddings[item.encoder_text])
            self.recent.add(event.user_id, event.ts, event.item_id)
        self.model.learn(pairs)

    def remember(self, pairs: list[tuple[Event, Item]]) -> None:
        """What ``learn`` does to the users' windows (the model's and the ranker's queries) and the
        model's catalogue rows, without learning: for events a published snapshot has learned already.
        Text vectors come from the snapshot's ranker (float32, as ``learn`` gave them) where it has them,
        so a trainer on a new volume does not encode its catalogue again."""
        pairs.sort(key=lambda p: event_order(p[0]))
        new = {e.item_id: item for e, item in pairs if e.item_id not in self.model.index}
        known, rows = self.ranker.text_vectors(), self.ranker.index
        rest = [item for item_id, item in new.items() if item_id not in rows]
        embedded = self.core.embed(rest) if rest else {}
        vectors = {i: known[rows[i]] if i in rows else embedded[item.encoder_text] for i, item in new.items()}
        self.model.add_items(list(vectors.items()))
        self.ranker.add_items((i, v) for i, v in vectors.items() if i not in rows)  # as learning would
        for event, _ in pairs:
            self.recent.add(event.user_id, event.ts, event.item_id)
        self.model.remember(pairs)

    def add_catalogue(self, budget_s: float = math.inf) -> tuple[int, int]:
        """Make catalogue items rankable (by their text) before anyone acted on them, as ``evaluate``
        does, for at most about ``budget_s`` of encoding (whole chunks: at least one); returns how many
        were added and how many are left for the next call (their texts go through the embedding cache).

        Bounded because a new trainer encodes a whole catalogue before its first snapshot: 9,742
        MovieLens titles took ~25 s on two cores, a catalogue of 100,000 items would take minutes, in which
        workers serve no model and a stopping trainer's last publish runs out its grace."""
        started = time.monotonic()
        new = [(i, item) for i, item in self.catalog.items() if i not in self.ranker.index]
        added = 0
        while added < len(new) and (not added or time.monotonic() - started < budget_s):
            chunk = new[added : added + 256]
            embeddings = self.core.embed([item for _, item in chunk])
            self.ranker.add_items((i, embeddings[item.encoder_text]) for i, item in chunk)
            added += len(chunk)
        return added, len(new) - added

    def catalogue_pending(self) -> bool:
        """Whether the catalogue holds items the ranker lacks, once the model has learned something: what
        the last snapshot had no time to add, or items published since. An idle trainer then publishes
        anyway, so that workers can recommend a new item (by its text) without waiting for the next event.
        A scan of the catalogue's keys, not of its items: nothing is parsed."""
        index = self.ranker.index
        return bool(self.model.learned_events) and any(i not in index for i in self.catalog.ids())

    async def publish(self, consumer) -> None:  # noqa: ANN001 - an aiokafka consumer
        """Checkpoint, publish, commit: in that order, so the checkpoint (weights *and* the input
        positions they have learned up to) is what a restart resumes from, and the committed offsets
        only show the trainer's lag. Before the checkpoint, that the input topics are still the ones its
        positions count in (``InputRecreated`` if not, and nothing is written)."""
        loop = asyncio.get_running_loop()
        ids_now = loop.run_in_executor(None, _topic_ids_now, self.settings)  # meanwhile: the bytes
        budget = self.settings.model_sync_s / 2  # learning goes on between the parts of a large catalogue
        added, left = await loop.run_in_executor(None, self.add_catalogue, budget)
        if added:
            to_come = f"; {left} to come in the next snapshots" if left else ""
            log.info("ranker: %d catalogue items added (%d in all%s)", added, self.ranker.n_items, to_come)
        self.snapshot_id += 1
        self.positions = {
            (tp.topic, tp.partition): await consumer.position(tp) for tp in consumer.assignment()
        }
        weights, ranker = self.model.to_bytes(), self.ranker.to_bytes()  # once, for both uses
        ids = await ids_now
        if ids is not None and ids[self.settings.model_topic] is None:
            # deleted, or a broker that lost its data: declared again (compacted, large records), not
            # left to a broker's auto-creation with its defaults
            log.warning("the model topic %s does not exist: creating it", self.settings.model_topic)
            await loop.run_in_executor(None, ensure_topics, self.settings)
            ids = await loop.run_in_executor(None, _topic_ids_now, self.settings)
        if ids is not None:
            self._inputs_unchanged(ids, "read them")
            self.model_topic_id = ids[self.settings.model_topic]
        self._save(weights, ranker)
        raw = bundle(weights, ranker)
        records = snapshot_records(raw, self.snapshot_id, self.model.learned_events, self.instance,
                                   self.positions, self.topic_ids)  # fmt: skip
        await self._in_transaction(records)
        log.info("published model snapshot %d (%.1f MB, %d events learned)", self.snapshot_id, len(raw) / 1e6,
                 self.model.learned_events)  # fmt: skip
        try:
            await consumer.commit()
        except KafkaError as exc:  # the offsets only show the lag; a restart goes on from the checkpoint
            log.warning("could not commit the trainer's offsets (%r); its checkpoint holds them", exc)

    def _inputs_unchanged(self, ids: dict[str, str | None], doing: str) -> None:
        """``InputRecreated`` if an input topic's id (``ids``: the broker's now) is not the one the
        trainer's positions count in."""
        changed = recreated_topics(self.topic_ids, ids)
        if changed:
            raise InputRecreated(f"input topics recreated while the trainer {doing}: {changed}")

    async def _producer(self):  # noqa: ANN202 - an aiokafka producer
        """The transactional producer; started, with this trainer's claim written, if there is none.

        Its transactional id is one per app, so its start fences the producer of any older trainer (the
        broker aborts that one's open transaction; its next one fails with ``ProducerFenced``). The
        claim then names this trainer on the model topic: a fenced trainer reads it to tell another
        trainer taking over from its own transaction outliving the broker's timeout."""
        if self.producer is None:
            from aiokafka import AIOKafkaProducer

            s = self.settings
            producer = AIOKafkaProducer(bootstrap_servers=s.broker, acks="all", max_request_size=2 * 1024**2,
                                        transactional_id=f"{s.app_id}-trainer")  # fmt: skip
            claim = json.dumps({"instance": self.instance, "since": time.time()}).encode()

            async def start_and_claim() -> None:
                await producer.start()
                await _send_all(producer, s.model_topic, [(CLAIM_KEY, claim)])

            try:
                await _bounded(start_and_claim(), "starting the trainer's producer",
                               s.model_publish_timeout_s)  # fmt: skip
            except BaseException:
                await _stop_quietly(producer)
                raise
            log.info("trainer %s claimed the model topic %s", self.instance, s.model_topic)
            self.producer = producer
        return self.producer

    async def _in_transaction(self, records: Iterator[tuple[bytes, bytes]]) -> None:
        """Send ``records`` to the model topic as one transaction: readers (``read_committed``) see all
        of them or none. Bounded by ``Settings.model_publish_timeout_s``: a producer
        that does not finish is dropped, and the next one's start has the broker abort what it left open
        (the same transactional id)."""
        producer = await self._producer()
        try:
            s = self.settings
            await _bounded(_send_all(producer, s.model_topic, records), "the snapshot's transaction",
                           s.model_publish_timeout_s)  # fmt: skip
        except ProducerFenced:
            raise
        except BaseException:
            self.producer = None
            await _stop_quietly(producer)
            raise

    async def _fenced(self) -> None:
        """After ``ProducerFenced``: stop if another trainer claimed the topic, else start a new producer
        at the next publish."""
        loop = asyncio.get_running_loop()
        claim = await loop.run_in_executor(None, last_claim, self.settings)
        if claim is not None and claim.get("instance") != self.instance:
            raise TrainerReplaced(
                f"trainer {claim.get('instance')} took over the model topic "
                f"{self.settings.model_topic} (claimed at {claim.get('since')})"
            )
        log.warning("this trainer's producer was fenced but the model topic's claim is its own (a "
                    "transaction that outlived the broker's timeout): a new producer claims the topic "
                    "again")  # fmt: skip
        producer, self.producer = self.producer, None
        if producer is not None:
            await _stop_quietly(producer)

    async def go_on_from_topic(self, consumer, ids: dict[str, str | None], ends: dict) -> bool:  # noqa: ANN001
        """Take the model topic's newest snapshot in place of the checkpoint where it has learned more
        (no checkpoint: a new volume, a lost disk; an old one: a backup, a trainer that was replaced), and
        rebuild the users' windows from the input topics up to the positions its manifest names. Returns
        whether it did.

        Learning everything again from the topics' beginnings, as a trainer without a checkpoint did,
        loses from the model whatever retention has deleted, and publishes younger models than the one
        workers serve until it has caught up. Going on from the snapshot loses neither; what it does not
        carry starts afresh: the optimiser's moments and the random streams (so the weights learned from
        here differ from an uninterrupted trainer's, as any restart's order of batches may), and the
        windows of events that retention deleted."""
        from models.sequence import SequenceModel

        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(None, latest_snapshot, self.settings)
        if found is None or found[0]["learned_events"] <= self.model.learned_events:
            return False
        manifest, raw = found
        mine = (
            f"its checkpoint's {self.model.learned_events}" if self.checkpoint.exists() else "no checkpoint"
        )
        if "positions" not in manifest:
            log.warning("the model topic's snapshot %s has learned %d events (this trainer: %s) but names no "
                        "input positions (published before they were kept): it cannot be gone on from",
                        manifest["id"], manifest["learned_events"], mine)  # fmt: skip
            return False
        started = time.monotonic()
        sequence, ranker = unbundle(raw)
        model = SequenceModel.from_bytes(sequence, self.device)
        text_dim = model.net.text_proj.in_features
        if text_dim != self.core.dim:
            log.warning("the model topic's snapshot %s was learned on %d-d text vectors, this trainer's "
                        "encoder gives %d-d: not gone on from", manifest["id"], text_dim,
                        self.core.dim)  # fmt: skip
            return False
        self.model = model
        self._train_as_set()
        self.ranker = (NextItemRanker(self.core.config, self.core.dim) if ranker is None
                       else NextItemRanker.from_bytes(ranker, self.core.config))  # fmt: skip
        self.recent = RecentItems(self.core.config.history_len)
        self.snapshot_id = int(manifest["id"])
        self.positions = {(topic, partition): offset for topic, partition, offset in manifest["positions"]}
        self.topic_ids = dict(manifest["topic_ids"])
        now = await loop.run_in_executor(None, _topic_ids_now, self.settings)
        self.model_topic_id = None if now is None else now[self.settings.model_topic]
        log.warning("trainer: %s, and the model topic's snapshot %d (by %s) has learned %d events: going on "
                    "from the model topic's snapshot; its optimiser's moments start afresh", mine,
                    self.snapshot_id, manifest.get("trainer") or "an unnamed trainer",
                    manifest["learned_events"])  # fmt: skip
        # the windows: every event the snapshot learned that the topics still hold (recreated topics are
        # read whole and learned, ``resume_positions``)
        upto = {tp: min(self.positions.get(tp, 0), end) for tp, end in ends.items()
                if self.topic_ids.get(tp[0]) == ids.get(tp[0])}  # fmt: skip
        events = await self._remember_upto(consumer, upto)
        log.info("trainer: rebuilt %d users' windows from %d events in %.1f s", len(self.recent.of), events,
                 time.monotonic() - started)  # fmt: skip
        return True

    async def _remember_upto(self, consumer, upto: dict[tuple[str, int], int]) -> int:  # noqa: ANN001
        """Read each input partition from its beginning to its offset in ``upto``, ``remember``-ing the
        events; returns how many."""
        from aiokafka import TopicPartition

        todo = {TopicPartition(*tp): end for tp, end in upto.items() if end > 0}
        for tp in todo:
            await consumer.seek_to_beginning(tp)
        seen, idle = 0, 0
        while todo:
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
            if not todo:
                break
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=self.settings.max_batch)
            decoded = (self.decode(tp.topic, tp.partition, r.key, r.value)
                       for tp, records in batch.items() if tp in todo
                       for r in records if r.offset < todo[tp])  # fmt: skip
            pairs = [pair for pair in decoded if pair is not None]
            if pairs:
                await asyncio.get_running_loop().run_in_executor(None, self.remember, pairs)
            seen += len(pairs)
            idle = 0 if batch else idle + 1
            if idle >= 20:  # 10 s without a record below the positions: what is left is not there
                log.warning("trainer: input %s ended below the snapshot's positions while rebuilding windows",
                            sorted((tp.topic, tp.partition) for tp in todo))  # fmt: skip
                break
        return seen

    async def snapshot_lost(self) -> bool:
        """Whether the model topic no longer holds the last snapshot published (deleted, or recreated by a
        broker that lost its data): workers starting now would serve no model until the trainer next
        learned something, so an idle trainer asks every ``model_sync_s`` and publishes it again. Raises
        ``InputRecreated`` as ``publish`` does when the input topics were recreated meanwhile."""
        if not self.model.learned_events:
            return False
        try:
            ids = await asyncio.get_running_loop().run_in_executor(None, _topic_ids_now, self.settings)
        except kafka.errors.KafkaError as exc:  # asked again a round later
            log.warning("could not check the model topic (%r)", exc)
            return False
        if ids is None:
            return False
        self._inputs_unchanged(ids, "waited for events")
        now = ids[self.settings.model_topic]
        if now is not None and now == self.model_topic_id:
            return False
        where = "it does not exist" if now is None else f"its id is {now}"
        log.warning("the model topic %s does not hold the last snapshot (%s; it was published to the topic "
                    "with id %s): publishing it again", self.settings.model_topic, where,
                    self.model_topic_id)  # fmt: skip
        return True

    async def try_publish(self, consumer) -> bool:  # noqa: ANN001 - an aiokafka consumer
        """``publish``; True when the snapshot went out. A broker that does not take it (away, or not
        answering within the producer's request timeout) is not a reason to die: what was learned is in
        the checkpoint, and the next round tries again."""
        try:
            await self.publish(consumer)
        except ProducerFenced:
            await self._fenced()  # TrainerReplaced if another trainer took over
            return False
        except (KafkaError, kafka.errors.KafkaError) as exc:  # aiokafka's, and the admin client's
            log.warning("could not publish model snapshot %d (%r); its checkpoint is written, the next try "
                        "is in %.0f s", self.snapshot_id, exc, self.settings.model_sync_s)  # fmt: skip
            return False
        return True

    async def run(self, stop: asyncio.Event | None = None) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        catalog_task = asyncio.ensure_future(self.catalog.run())
        # Every partition, assigned (not subscribed): one trainer learns from all users. The group id
        # only records its progress (``kafka-consumer-groups --describe`` shows the trainer's lag).
        consumer = AIOKafkaConsumer(bootstrap_servers=s.broker, group_id=f"{s.app_id}-trainer",
                                    enable_auto_commit=False, auto_offset_reset="earliest")  # fmt: skip
        await consumer.start()
        await self._producer()
        try:
            topics = await asyncio.get_running_loop().run_in_executor(None, _event_topics, s)
            tps = [TopicPartition(t, p) for t, (_, ps) in topics.items() for p in ps]
            consumer.assign(tps)
            ids = {t: topic_id for t, (topic_id, _) in topics.items()}
            ends = {(tp.topic, tp.partition): end for tp, end in (await consumer.end_offsets(tps)).items()}
            while not await self.catalog.wait_caught_up(10.0):
                log.warning("trainer: waiting for the item catalog")
            await self.go_on_from_topic(consumer, ids, ends)
            starts, notes = resume_positions(self.positions, self.topic_ids, ids, ends)
            for note in notes:
                log.warning(note)
            self.topic_ids = ids
            for tp in tps:
                position = starts[(tp.topic, tp.partition)]
                if position is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, position)
            dirty = await self.snapshot_lost()  # a checkpoint whose snapshot the broker no longer has
            last_publish = time.monotonic() - (s.model_sync_s if dirty else 0.0)
            while stop is None or not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=s.max_batch)
                decoded = (self.decode(tp.topic, tp.partition, r.key, r.value)
                           for tp, records in batch.items() for r in records)  # fmt: skip
                pairs = [pair for pair in decoded if pair is not None]
                if pairs:
                    await asyncio.get_running_loop().run_in_executor(None, self.learn, pairs)
                dirty = dirty or bool(batch)
                if time.monotonic() - last_publish >= s.model_sync_s:
                    if not dirty:
                        loop = asyncio.get_running_loop()  # a scan of the catalogue's keys: off the loop
                        dirty = await loop.run_in_executor(None, self.catalogue_pending)
                        dirty = dirty or await self.snapshot_lost()
                    if dirty:
                        dirty = not await self.try_publish(consumer)
                    last_publish = time.monotonic()
            if dirty:
                await self.try_publish(consumer)
        finally:
            catalog_task.cancel()
            await consumer.stop()
            if self.producer is not None:
                await _stop_quietly(self.producer)
