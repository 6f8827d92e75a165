"""How cost and size grow with the number of users and with the catalogue, without Kafka in the way.

    python benchmarks/growth.py [--users 10000,100000,1000000] [--items 10000,100000,1000000]
                                [--state-vector float32|float16]

Users: a RocksDB store (``rocksdict``, as the worker's table uses) first gets U users with 3 events each,
then 20,000 further events over those U users go through the core in batches of 256, every touched
state read from and written back to the store, as the worker does. Reported: events/s of that step,
the store's bytes on disk per user (after a flush and compaction) and the mean serialized state.

Catalogue: K synthetic items (MovieLens titles with a number, random genres) in a ``Catalog`` store and
K random unit vectors in an embedding cache (the encoder's cost is ``benchmarks/encoder.py``'s);
reported: bytes per item on disk for both, and lookups/s (``Catalog.get`` of random items, parsed-item
cache cold and warm; embedding-cache hits).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.synthetic import zipf_stream  # noqa: E402
from models.cache import CachedEncoder  # noqa: E402
from models.config import InterestConfig  # noqa: E402
from models.core import InterestCore  # noqa: E402
from models.events import Item, parse_event  # noqa: E402
from models.interest import UserState  # noqa: E402
from models.sources import movielens_items  # noqa: E402

DIM = 384


class _Encoder:
    dim = DIM
    name = "random@growth"
    model_hash = "growth"

    def encode(self, texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(abs(hash(texts[0])) % 2**32 if texts else 0)
        v = rng.normal(size=(len(texts), DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _apply(
    core: InterestCore, head, store, records, catalogue, embeddings, batch: int = 256, vector: str = "float32"
) -> float:
    """Seconds to apply ``records`` through the core with states read from and written to ``store``."""
    parsed = [(parse_event(json.dumps(e).encode(), t), catalogue[e["item_id"]]) for t, e in records]
    t0 = time.perf_counter()
    for start in range(0, len(parsed), batch):
        chunk = parsed[start : start + batch]
        states = {}
        for event, _ in chunk:
            raw = store.get(event.user_id.encode())
            if raw is not None:
                states[event.user_id] = UserState.from_bytes(raw)
        result = core.apply(chunk, embeddings, states, head)
        for user, state in result.states.items():
            store[user.encode()] = state.to_bytes(vector)
    return time.perf_counter() - t0


def users_growth(sizes: list[int], work: Path, events: int = 20_000, vector: str = "float32") -> list[dict]:
    from rocksdict import Rdict

    movies = movielens_items()
    catalogue = dict(movies)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(catalogue), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = {it.encoder_text: v for it, v in zip(catalogue.values(), vectors, strict=True)}
    out = []
    for users in sizes:
        path = work / f"users-{users}"
        store = Rdict(str(path))
        core = InterestCore(InterestConfig(), _Encoder())
        head = core.new_head()
        t0 = time.perf_counter()
        fill = list(zipf_stream(3 * users, users, seed=1))
        _apply(core, head, store, fill, catalogue, embeddings, 4096, vector)
        fill_s = time.perf_counter() - t0
        more = list(zipf_stream(events, users, seed=2))
        seconds = _apply(core, head, store, more, catalogue, embeddings, vector=vector)
        store.flush()
        store.compact_range(None, None)
        sample = [len(v) for _, v in zip(range(2000), store.values(), strict=False)]
        row = {
            "users": users,
            "state_vector": vector,
            "events_per_s": events / seconds,
            "disk_bytes_per_user": _disk_bytes(path) / users,
            "mean_state_bytes": float(np.mean(sample)),
            "fill_s": fill_s,
        }
        store.close()
        shutil.rmtree(path, ignore_errors=True)
        print(f"  users {users:,}: {row}", flush=True)
        out.append(row)
    return out


def catalogue_growth(sizes: list[int], work: Path, lookups: int = 20_000) -> list[dict]:
    from rocksdict import Rdict

    from streams.catalog import Catalog

    titles = [it.title for it in movielens_items().values()]
    genres = ["Drama", "Comedy", "Action", "Thriller", "Romance", "Sci-Fi", "Horror", "Animation"]
    out = []
    for size in sizes:
        rng = np.random.default_rng(size)
        path = work / f"items-{size}"
        catalog = Catalog("unused:9092", "items", path / "catalog")
        catalog.db = Rdict(str(path / "catalog"))
        cache = CachedEncoder(_Encoder(), path / "embedding-cache", lru_size=50_000)
        for start in range(0, size, 10_000):
            batch = []
            for n in range(start, min(start + 10_000, size)):
                cats = rng.choice(genres, size=2, replace=False).tolist()
                value = {"title": f"{titles[n % len(titles)]} #{n}", "categories": cats}
                catalog._apply(str(n).encode(), json.dumps(value).encode())
                batch.append(Item(value["title"], "", tuple(cats)))
            cache.embed([it.encoder_text for it in batch])
        catalog.db.flush()
        catalog.db.compact_range(None, None)
        picks = [str(i) for i in rng.integers(0, size, lookups)]
        catalog._parsed.clear()
        t0 = time.perf_counter()
        found = [catalog.get(i) for i in picks]
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in picks:
            catalog.get(i)
        warm_s = time.perf_counter() - t0
        texts = [it.encoder_text for it in found]
        cache._lru.clear()
        t0 = time.perf_counter()
        for start in range(0, len(texts), 256):
            cache.embed(texts[start : start + 256])
        embed_s = time.perf_counter() - t0
        row = {
            "items": size,
            "catalog_disk_bytes_per_item": _disk_bytes(path / "catalog") / size,
            "embedding_cache_disk_bytes_per_item": _disk_bytes(path / "embedding-cache") / size,
            "catalog_gets_per_s_cold": lookups / cold_s,
            "catalog_gets_per_s_parsed": lookups / warm_s,
            "embedding_cache_hits_per_s": lookups / embed_s,
        }
        cache.close()
        catalog.db.close()
        shutil.rmtree(path, ignore_errors=True)
        print(f"  items {size:,}: {row}", flush=True)
        out.append(row)
    return out


def run(users: list[int], items: list[int], work: Path | None = None, vector: str = "float32") -> dict:
    work = work or Path(tempfile.mkdtemp(prefix="interest-growth-"))
    try:
        return {"users": users_growth(users, work, vector=vector), "catalogue": catalogue_growth(items, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="10000,100000,1000000")
    ap.add_argument("--items", default="10000,100000,1000000")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--state-vector", choices=("float32", "float16"), default="float32",
                    help="how states store the interest vector (INTEREST_STATE_VECTOR)")  # fmt: skip
    args = ap.parse_args()
    from streams.cli import limit_blas_threads

    limit_blas_threads(1)
    items = [int(x) for x in args.items.split(",") if x]
    result = run([int(x) for x in args.users.split(",") if x], items, vector=args.state_vector)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "growth.json").write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
