"""A text-aware sequential next-item model, learned online from the stream (test-then-train). No Kafka.

Why: the counting ranker knows only item ids it has counted, and the interest vector alone ranks below
popularity. Order matters (an offline SASRec beats both on denser logs), and text should let a model score
an item it has never seen. This model is SASRec-shaped but built for a stream:

- **Item**: ``r_i = P t_i + e[h(i)]``. ``t_i`` is the item's frozen unit text embedding (MiniLM), ``P``
  a learned projection, ``e`` an ID embedding over ``id_buckets`` hashed slots (no growing tables; an item
  first seen at run time is scored at once through its text).
- **New items by their text** (``id_needs_event``, off by default): the ID term counts only once an
  event on the item has been learned (a per-slot flag, carried in snapshots). Under a full softmax every
  item is a negative at every step, so the ID slot of an item nobody has touched yet learns "never
  chosen" and buries the item whatever its text says. With ``id_dropout`` each step also hides the ID
  term of that share of items, so the text path alone learns to score items as their IDs do (the
  DropoutNet idea). Both rank new items better among new items, and both cost validation Recall@10 over
  all items on MovieLens, where an item nobody has touched is mostly one nobody wants: validation keeps
  them off (docs/evaluation.md, "New items").
- **User**: a small causal transformer over the user's last ``max_len`` events, each the item's ``r_i``
  plus an event-type embedding, a time-gap bucket (log2 of seconds since the user's previous event) and
  a position. The user vector ``u`` is the output at the newest event; ``score(i) = u . r_i``.
- **Learning**: ``learn(batch)`` takes events in event-time order and appends them to their users'
  windows. Each Adam step (``steps`` per batch) trains each touched user's window on this batch's events
  of the user (each predicted from the events before it), plus the windows of ``replay`` earlier users at
  every position. Softmax over every known item while the catalogue is at most ``full_softmax_max``
  items; beyond, ``negatives`` sampled uniformly (uniform sampling needs no logQ correction). One pass
  over the stream, no epochs. Everything is seeded, so the same stream gives the same model.

Per-user memory: the last ``max_len + 1`` (item index, type, time) triples (the extra one is the target
of the newest window position).
"""

from __future__ import annotations

import json
import math
import random
import struct
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from models.config import EVENT_TYPES
from models.events import Event, Item
from models.ragged import lengths_of, spans

_N_GAPS = 24  # log2 buckets of seconds since the previous event: 0 s .. ~97 days and beyond
_SNAPSHOT_MAGIC = b"ISEQ1"
_STEP = np.dtype([("row", np.int32), ("type", np.int8), ("ts", np.float64)])  # a window's step, checkpointed


class Window:
    """One user's last ``maxlen`` steps (item row, event type, time), oldest first; iterated as tuples.

    In three small arrays, because a trainer holds one per user: a full window of 51 steps took 7.3 KB as
    a deque of tuples and takes about 1 KB so (``benchmarks/trainer_checkpoint.py`` measures both)."""

    __slots__ = ("maxlen", "rows", "ts", "types")
    COLUMNS = {"rows": "i", "types": "b", "ts": "d"}  # the arrays' type codes, in a step's order

    def __init__(self, maxlen: int, steps: Iterable[tuple[int, int, float]] = ()) -> None:
        self.maxlen = maxlen
        self.rows, self.types, self.ts = (array(code) for code in self.COLUMNS.values())
        for step in steps:
            self.append(step)

    @classmethod
    def of(cls, maxlen: int, rows: Sequence[int], types: Sequence[int], ts: Sequence[float]) -> Window:
        """A window holding these steps' columns (the last ``maxlen`` of them)."""
        window = cls(maxlen)
        window.rows.extend(rows[-maxlen:])
        window.types.extend(types[-maxlen:])
        window.ts.extend(ts[-maxlen:])
        return window

    def append(self, step: tuple[int, int, float]) -> None:
        row, kind, ts = step
        self.rows.append(row)
        self.types.append(kind)
        self.ts.append(ts)
        if len(self.rows) > self.maxlen:
            del self.rows[0], self.types[0], self.ts[0]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        return zip(self.rows, self.types, self.ts, strict=True)

    def __getitem__(self, k: int) -> tuple[int, int, float]:
        return self.rows[k], self.types[k], self.ts[k]


Step = tuple[str, np.ndarray | None, int, float]
"""One event of a user's window as a worker holds it: (item id, the item's text embedding or None when
not at hand, event-type index, event time)."""


@dataclass(frozen=True)
class SequenceConfig:
    dim: int = 64
    max_len: int = 50
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2
    lr: float = 5e-4  # validation Recall@10 on the MovieLens sample: 1e-3 0.105, 5e-4 0.112, 3e-3 0.082
    steps: int = 2  # Adam steps per micro-batch
    replay: int = 16  # windows of earlier users, trained at every position, mixed into each step
    id_buckets: int = 1 << 16
    full_softmax_max: int = 50_000
    negatives: int = 4096
    use_text: bool = True
    use_id: bool = True
    use_context: bool = True  # event types and time gaps
    id_needs_event: bool = False  # an item's ID term counts only once an event on it is learned
    id_dropout: float = 0.0  # share of items whose ID term each training step hides
    seed: int = 0


class CausalBlock(nn.Module):
    """Pre-LN transformer block (trains stably without warm-up) over ``allowed`` attention pairs."""

    def __init__(self, dim: int, n_heads: int, dropout: float, ffn_mult: int = 4) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim={dim} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ffn_mult * dim)
        self.ff2 = nn.Linear(ffn_mult * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        att = nnf.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff2(self.drop(nnf.gelu(self.ff1(self.ln2(x))))))


def causal_mask(real: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T): a position sees earlier real positions and always itself (no all-masked softmax row,
    which would give NaN; padding outputs are never read)."""
    t = real.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=real.device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=real.device)
    return ((causal & real[:, None, :]) | eye).unsqueeze(1)


def gap_bucket(seconds: float) -> int:
    return min(_N_GAPS - 1, int(math.log2(1.0 + max(seconds, 0.0))))


class _Net(nn.Module):
    def __init__(self, text_dim: int, cfg: SequenceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_proj = nn.Linear(text_dim, cfg.dim, bias=False)
        self.id_emb = nn.Embedding(cfg.id_buckets, cfg.dim)
        self.type_emb = nn.Embedding(len(EVENT_TYPES), cfg.dim)
        self.gap_emb = nn.Embedding(_N_GAPS, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        blocks = (CausalBlock(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_blocks))
        self.blocks = nn.ModuleList(blocks)
        self.ln = nn.LayerNorm(cfg.dim)
        # 1.0 for an ID slot whose term counts: all of them, or with ``id_needs_event`` those some learned
        # event's item hashes to. A buffer, so snapshots carry it; float32 like every snapshot tensor.
        self.register_buffer("id_learned", torch.full((cfg.id_buckets,), 0.0 if cfg.id_needs_event else 1.0))
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The text path starts as a random projection that keeps text similarity: an item never seen
        # gets a sensible vector from the first event on.
        nn.init.normal_(self.text_proj.weight, std=1.0 / math.sqrt(text_dim))

    def items(
        self, text: torch.Tensor, buckets: torch.Tensor, id_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Item vectors ``r`` (n, dim) from text embeddings (n, text_dim) and hashed id slots (n,); the
        ID term only for learned slots, and only where ``id_keep`` (n,) is 1 (ID dropout in training)."""
        r = torch.zeros(text.shape[0], self.cfg.dim, device=text.device)
        if self.cfg.use_text:
            r = r + self.text_proj(text)
        if self.cfg.use_id:
            use = self.id_learned[buckets]
            if id_keep is not None:
                use = use * id_keep
            r = r + self.id_emb(buckets) * use.unsqueeze(-1)
        return r

    def users(
        self, r: torch.Tensor, seq: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor
    ) -> torch.Tensor:
        """Hidden states (B, T, dim) for left-padded windows ``seq`` (item indices, -1 = padding)."""
        real = seq >= 0
        x = r[seq.clamp(min=0)]
        if self.cfg.use_context:
            x = x + self.type_emb(types) + self.gap_emb(gaps)
        t = seq.shape[1]
        pos = torch.arange(self.cfg.max_len - t, self.cfg.max_len, device=seq.device)
        x = (x + self.pos_emb(pos)) * real.unsqueeze(-1)
        x = self.drop(x)
        allowed = causal_mask(real)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln(x)


class SequenceModel:
    """``learn(batch)`` then ``scores(user)`` / ``user_vector(user)``; items join with ``add_items``."""

    def __init__(self, text_dim: int, config: SequenceConfig | None = None, device: str = "cpu") -> None:
        """``device``: where the weights live and learn ("cuda" on a GPU, for a trainer or a benchmark);
        every array going in or out is numpy on the CPU either way. Not part of the config, so a snapshot
        taken on a GPU loads on a CPU worker."""
        self.config = cfg = config or SequenceConfig()
        self.device = torch.device(device)
        self._rng = random.Random(cfg.seed)
        # Its own torch random stream (initialisation, dropout), so a model learns the same whatever
        # else draws random numbers in the process (other models in an evaluation, say).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = _Net(text_dim, cfg).to(self.device)
            self._torch_rng = torch.get_rng_state()
        self._opt: torch.optim.Optimizer | None = None  # made at its first use (``opt``)
        self.index: dict[str, int] = {}  # item id -> row
        self._text: list[np.ndarray] = []
        self._buckets: list[int] = []
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self._item_vectors: np.ndarray | None = None  # cached between learning steps
        self.history: dict[str, Window] = {}
        self._seen_users: list[str] = []
        self.learned_events = 0

    @property
    def opt(self) -> torch.optim.Optimizer:
        """Adam over the weights, made at its first use (a learning step, a trainer's checkpoint). A
        worker's serving copy never learns, and making one imports torch's compiler stack: 0.93 s and
        +138 MB peak RSS in a worker whose encoder runs on onnxruntime (``INTEREST_ENCODER_BACKEND=onnx``,
        ``onnx-int8``; transformers' torch models import that stack themselves, so the torch backend
        gains nothing), and triton's "nanobind: leaked ..." report at its exit.

        fused: one kernel over each parameter instead of a dozen tensor operations, which on a CPU were a
        fifth of the trainer's time (mostly the 65,536-row ID table, dense in every step); the same update
        up to float rounding (``benchmarks/adam_kernels.py``)."""
        if self._opt is None:
            self._opt = torch.optim.Adam(self.net.parameters(), lr=self.config.lr, fused=True)
        return self._opt

    @opt.setter
    def opt(self, optimizer: torch.optim.Optimizer) -> None:
        self._opt = optimizer

    # -- catalogue -------------------------------------------------------------------------------------
    def add_items(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Register items with their text embeddings (already known items keep their row)."""
        for item_id, vec in items:
            if item_id not in self.index:
                self.index[item_id] = len(self._text)
                self._text.append(np.asarray(vec, np.float32))
                self._buckets.append(self.bucket(item_id))
                self._tensors = None

    def _catalogue(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tensors is None or len(self._tensors[1]) != len(self._buckets):
            text = torch.from_numpy(np.stack(self._text)).to(self.device)
            self._tensors = (text, torch.tensor(self._buckets, device=self.device))
        return self._tensors

    # -- windows ---------------------------------------------------------------------------------------
    def _window(self, events: Sequence[tuple[int, int, float]]) -> tuple[list[int], list[int], list[int]]:
        items = [e[0] for e in events]
        types = [e[1] for e in events]
        gaps = [0] + [gap_bucket(b[2] - a[2]) for a, b in zip(events, events[1:], strict=False)]
        return items, types, gaps

    def _pad(self, rows: Sequence[Sequence[int]], fill: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        out = np.full((len(rows), width), fill, dtype=np.int64)
        for k, r in enumerate(rows):
            if r:
                out[k, width - len(r) :] = r
        return torch.from_numpy(out).to(self.device)

    # -- scoring ---------------------------------------------------------------------------------------
    def user_vectors(self, users: Sequence[str]) -> np.ndarray:
        """(len(users), dim) user vectors from each user's current window (zeros for a user with none)."""
        out = np.zeros((len(users), self.config.dim), np.float32)
        known = [(k, self.history[u]) for k, u in enumerate(users) if self.history.get(u)]
        if not known:
            return out
        self.net.eval()
        with torch.no_grad():
            r = self.net.items(*self._catalogue())
            windows = [self._window(list(h)[-self.config.max_len :]) for _, h in known]
            seq = self._pad([w[0] for w in windows], -1)
            hidden = self.net.users(r, seq, self._pad([w[1] for w in windows], 0),
                                    self._pad([w[2] for w in windows], 0))  # fmt: skip
            out[[k for k, _ in known]] = hidden[:, -1].cpu().numpy()
        return out

    def item_vectors(self) -> np.ndarray:
        """(n_items, dim) item vectors in ``index`` order: ``scores = item_vectors @ user_vector``."""
        if self._item_vectors is None or len(self._item_vectors) != len(self._text):
            self.net.eval()
            with torch.no_grad():
                self._item_vectors = self.net.items(*self._catalogue()).cpu().numpy()
        return self._item_vectors

    def scores(self, user: str) -> np.ndarray:
        """Scores of every registered item (``index`` order) for ``user``'s next event."""
        return self.item_vectors() @ self.user_vectors([user])[0]

    # -- serving: windows held elsewhere (a worker's user states), weights from a snapshot --------------
    def item_vectors_of(self, item_ids: Sequence[str], text: np.ndarray) -> np.ndarray:
        """(n, dim) item vectors ``r_i`` for items that need not be registered (``text``: (n, text_dim);
        a row of zeros where the text is unknown, so the item is scored by its ID embedding alone)."""
        self.net.eval()
        with torch.no_grad():
            buckets = torch.tensor([self.bucket(i) for i in item_ids], dtype=torch.long, device=self.device)
            text_in = torch.from_numpy(np.asarray(text, np.float32)).to(self.device)
            return self.net.items(text_in, buckets).cpu().numpy()

    def user_vectors_of(self, windows: Sequence[Sequence[Step]]) -> np.ndarray:
        """(len(windows), dim) user vectors of windows given explicitly (oldest event first; the last
        ``max_len`` are read), as ``user_vectors`` computes them from the model's own histories."""
        cfg = self.config
        out = np.zeros((len(windows), cfg.dim), np.float32)
        rows = [(k, list(w)[-cfg.max_len :]) for k, w in enumerate(windows) if len(w)]
        if not rows:
            return out
        ids = [step[0] for _, w in rows for step in w]
        zero = np.zeros(self.net.text_proj.in_features, np.float32)
        text = np.stack([zero if step[1] is None else step[1] for _, w in rows for step in w])
        self.net.eval()
        with torch.no_grad():
            r = self.net.items(torch.from_numpy(text.astype(np.float32, copy=False)).to(self.device),
                               torch.tensor([self.bucket(i) for i in ids], device=self.device))  # fmt: skip
            seqs, types, gaps, start = [], [], [], 0
            for _, w in rows:
                items, t, g = self._window([(start + j, step[2], step[3]) for j, step in enumerate(w)])
                seqs.append(items), types.append(t), gaps.append(g)
                start += len(w)
            hidden = self.net.users(r, self._pad(seqs, -1), self._pad(types, 0), self._pad(gaps, 0))
            out[[k for k, _ in rows]] = hidden[:, -1].cpu().numpy()
        return out

    def served_copy(self) -> SequenceModel:
        """A copy of the weights as a snapshot carries them, sharing this model's catalogue and users'
        windows: what a worker scores with between two snapshots (``evaluate`` simulates staleness)."""
        copy = SequenceModel.from_bytes(self.to_bytes())
        copy.index, copy._text, copy._buckets = self.index, self._text, self._buckets
        copy.history = self.history
        return copy

    def bucket(self, item_id: str) -> int:
        return zlib.crc32(item_id.encode()) % self.config.id_buckets

    def to_bytes(self) -> bytes:
        """The weights (float32) with the config: what a trainer publishes and a worker loads. Histories
        and the optimiser's moments are not in it (a worker holds its users' windows itself)."""
        tensors = self.net.state_dict()
        header = {
            "config": asdict(self.config),
            "text_dim": self.net.text_proj.in_features,
            "learned_events": self.learned_events,
            "tensors": [[name, list(t.shape)] for name, t in tensors.items()],
        }
        head = json.dumps(header, sort_keys=True).encode()
        as_cpu = (t.detach().to("cpu", torch.float32).contiguous() for t in tensors.values())
        body = b"".join(t.numpy().tobytes() for t in as_cpu)
        return _SNAPSHOT_MAGIC + struct.pack("<I", len(head)) + head + body

    @classmethod
    def from_bytes(cls, raw: bytes, device: str = "cpu") -> SequenceModel:
        """A model with a snapshot's config and weights (for scoring; it can learn on from there too)."""
        if raw[: len(_SNAPSHOT_MAGIC)] != _SNAPSHOT_MAGIC:
            raise ValueError("not a sequence-model snapshot")
        (n,) = struct.unpack_from("<I", raw, len(_SNAPSHOT_MAGIC))
        start = len(_SNAPSHOT_MAGIC) + 4
        header = json.loads(raw[start : start + n])
        model = cls(int(header["text_dim"]), SequenceConfig(**header["config"]), device)
        state, off = {}, start + n
        for name, shape in header["tensors"]:
            count = math.prod(shape)
            state[name] = torch.from_numpy(np.frombuffer(raw, np.float32, count, off).reshape(shape).copy())
            off += 4 * count
        if off != len(raw):
            raise ValueError(f"snapshot has {len(raw) - off} bytes after its tensors")
        if "id_learned" not in state:  # a snapshot from before the flags: every ID term counted
            state["id_learned"] = torch.ones(model.config.id_buckets)
        model.net.load_state_dict(state)
        model.learned_events = int(header["learned_events"])
        return model

    def dump_histories(self) -> dict:
        """What a trainer checkpoints besides weights and optimiser: the catalogue rows (their text),
        the users' windows, the replay order and the random streams, so a resumed trainer learns on as
        if it had never stopped."""
        windows = list(self.history.values())
        lengths = lengths_of(windows)
        # one array of (row, type, time) steps, not a pickled tuple per step: with the ranker's recent
        # items saved likewise, 100,000 users' windows are written 9.7x faster (0.53 s against 5.17 s,
        # every INTEREST_MODEL_SYNC_S on the trainer's event loop; benchmarks/trainer_checkpoint.py)
        steps = np.zeros(int(lengths.sum()), _STEP)
        for field, (column, code) in zip(_STEP.names, Window.COLUMNS.items(), strict=True):
            joined = array(code)
            for window in windows:  # one array extended: 30x faster than a numpy view of each window's
                joined.extend(getattr(window, column))
            steps[field] = np.frombuffer(joined, np.dtype(code))
        return {
            "index": dict(self.index),
            "text": np.stack(self._text) if self._text else None,
            "users": list(self.history),  # in the order they were first seen: the replay's draw order
            "lengths": lengths,
            "steps": steps,
            "learned_events": self.learned_events,
            "rng": self._rng.getstate(),
            "torch_rng": self._torch_rng,
        }

    def restore_histories(self, saved: dict) -> None:
        self.index = dict(saved["index"])
        text = saved["text"]
        self._text = [] if text is None else [row.astype(np.float32) for row in text]
        self._buckets = [self.bucket(i) for i in sorted(self.index, key=self.index.__getitem__)]
        self._tensors, self._item_vectors = None, None
        keep = self.config.max_len + 1
        if "steps" in saved:
            steps = saved["steps"]
            rows, types, ts = (steps[name].tolist() for name in ("row", "type", "ts"))
            users = zip(saved["users"], spans(saved["lengths"]), strict=True)
            self.history = {u: Window.of(keep, rows[a:b], types[a:b], ts[a:b]) for u, (a, b) in users}
            self._seen_users = list(saved["users"])  # a user's window and place in the draw come together
        else:  # a checkpoint from before windows were saved as arrays
            self.history = {u: Window(keep, h) for u, h in saved["history"].items()}
            self._seen_users = list(saved["seen_users"])
        self.learned_events = int(saved["learned_events"])
        self._rng.setstate(saved["rng"])
        self._torch_rng = saved["torch_rng"]

    # -- learning --------------------------------------------------------------------------------------
    def learn(self, batch: Sequence[tuple[Event, Item]]) -> float:
        """Append the batch's events to their users' windows, then take ``steps`` Adam steps on: each
        touched user's window, predicting this batch's events of the user (each from the events before
        it), and ``replay`` earlier users' windows at every position. Returns the last step's loss."""
        cfg = self.config
        new, slots = self._append(batch)
        if slots:  # one indexed write, not one per event (each a kernel launch on a GPU)
            self.net.id_learned[torch.tensor(slots, device=self.device)] = 1.0
        self.learned_events += len(batch)
        self._item_vectors = None
        jobs = [(u, n) for u, n in new.items() if len(self.history[u]) >= 2]
        loss = float("nan")
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._torch_rng)
            for _ in range(cfg.steps if jobs else 0):
                replay = [self._seen_users[self._rng.randrange(len(self._seen_users))]
                          for _ in range(cfg.replay)]  # fmt: skip
                loss = self._step(jobs + [(u, cfg.max_len) for u in replay if len(self.history[u]) >= 2])
            self._torch_rng = torch.get_rng_state()
        return loss

    def remember(self, batch: Sequence[tuple[Event, Item]]) -> None:
        """Append the batch's events to their users' windows without learning from them: a trainer that
        goes on from a published snapshot (whose weights learned them already) rebuilds its windows so."""
        self._append(batch)

    def _append(self, batch: Sequence[tuple[Event, Item]]) -> tuple[dict[str, int], list[int]]:
        """Each event onto its user's window; (events per user, the events' ID slots)."""
        new: dict[str, int] = {}
        slots: list[int] = []
        for event, _ in batch:
            hist = self.history.get(event.user_id)
            if hist is None:
                hist = self.history[event.user_id] = Window(self.config.max_len + 1)
                self._seen_users.append(event.user_id)
            row = self.index[event.item_id]
            hist.append((row, EVENT_TYPES.index(event.type), event.ts))
            slots.append(self._buckets[row])
            new[event.user_id] = new.get(event.user_id, 0) + 1
        return new, slots

    def _step(self, jobs: Sequence[tuple[str, int]]) -> float:
        """One Adam step; ``jobs``: (user, how many of the window's last targets to learn)."""
        cfg = self.config
        windows = [self._window(list(self.history[u])) for u, _ in jobs]
        seq = self._pad([w[0][:-1] for w in windows], -1)
        target = self._pad([w[0][1:] for w in windows], -1)
        width = target.shape[1]
        counts = torch.tensor([n for _, n in jobs], device=self.device)
        keep = counts[:, None] > torch.arange(width - 1, -1, -1, device=self.device)[None, :]
        types = self._pad([w[1][:-1] for w in windows], 0)
        gaps = self._pad([w[2][:-1] for w in windows], 0)
        self.net.train()
        text, buckets = self._catalogue()
        id_keep = None
        if cfg.id_dropout > 0:
            id_keep = (torch.rand(len(buckets)).to(self.device) >= cfg.id_dropout).float()
        r = self.net.items(text, buckets, id_keep)
        hidden = self.net.users(r, seq, types, gaps)
        mask = (target >= 0) & keep
        h, y = hidden[mask], target[mask]
        n = r.shape[0]
        if n <= cfg.full_softmax_max:
            logits, labels = h @ r.T, y
        else:
            # Uniform negatives shared by the batch; the target sits in column 0.
            neg = torch.randint(0, n, (cfg.negatives,)).to(self.device)
            logits = torch.cat([(h * r[y]).sum(-1, keepdim=True), h @ r[neg].T], dim=1)
            logits[:, 1:][neg[None, :] == y[:, None]] = float("-inf")
            labels = torch.zeros(len(y), dtype=torch.long, device=self.device)
        loss = nnf.cross_entropy(logits, labels)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())
