"""Item-embedding cache: every distinct item text is encoded once per model.

Keys are (model hash, text hash), so new weights never read stale vectors. The store is a local RocksDB
(``rocksdict``): it is derived data, rebuilt by re-encoding if lost, so it needs no changelog topic, and
a restarted worker does not re-encode the catalog. A small in-memory LRU sits in front for hot items.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np


class Encoder(Protocol):
    dim: int
    model_hash: str
    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


class CachedEncoder:
    """Wraps an encoder: ``embed(texts)`` dedupes, serves hits and encodes all misses in one call."""

    def __init__(self, encoder: Encoder, path: str | Path | None = None, lru_size: int = 50_000) -> None:
        self.encoder = encoder
        self.dim = encoder.dim
        self.name = encoder.name
        self._prefix = encoder.model_hash.encode() + b":"
        self._lru: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lru_size = lru_size
        self._db = None
        if path is not None:
            from rocksdict import Rdict

            Path(path).mkdir(parents=True, exist_ok=True)
            self._db = Rdict(str(path))
        self.hits = 0
        self.misses = 0

    def load_weights(self) -> None:
        """Load a lazily loading encoder's weights now rather than at the first cache miss."""
        load = getattr(self.encoder, "load", None)
        if load is not None:
            load()

    @property
    def weights_loaded(self) -> bool:
        return bool(getattr(self.encoder, "loaded", True))

    def _key(self, text: str) -> bytes:
        return self._prefix + hashlib.blake2b(text.encode(), digest_size=16).digest()

    def _remember(self, key: bytes, vec: np.ndarray) -> None:
        self._lru[key] = vec
        if len(self._lru) > self._lru_size:
            self._lru.popitem(last=False)

    def embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Unit vectors for the distinct texts given; cache misses go through the encoder together."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            key = self._key(text)
            vec = self._lru.get(key)
            if vec is None and self._db is not None:
                raw = self._db.get(key)
                if raw is not None:
                    vec = np.frombuffer(raw, dtype=np.float32)
                    self._remember(key, vec)
            if vec is None:
                missing.append(text)
            else:
                self._lru.move_to_end(key)
                found[text] = vec
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            vectors = self.encoder.encode(missing)
            for text, vec in zip(missing, vectors, strict=True):
                key = self._key(text)
                vec = np.ascontiguousarray(vec, dtype=np.float32)
                if self._db is not None:
                    self._db[key] = vec.tobytes()
                self._remember(key, vec)
                found[text] = vec
        return found

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
