import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from models import encoder as encoder_module
from models.cache import CachedEncoder
from models.encoder import TextEncoder, cpu_has_bf16
from models.events import Item
from models.interest import model_tag
from models.sources import movielens_items


def test_real_model_ranks_related_products_closer(encoder):
    earbuds, headphones, hose = encoder.encode(["wireless earbuds", "bluetooth headphones", "garden hose"])
    assert earbuds @ headphones > earbuds @ hose + 0.2
    assert encoder.dim == 384


def test_embeddings_are_unit_float32_and_batch_order_free(encoder):
    texts = ["a", "a much longer text about running shoes and trail gear", "garden hose"]
    vecs = encoder.encode(texts)
    assert vecs.dtype == np.float32 and vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    alone = encoder.encode([texts[2]])[0]
    np.testing.assert_allclose(vecs[2], alone, atol=1e-5)


def test_model_identity_names_the_weights(encoder):
    assert encoder.name.startswith("all-minilm-l6-v2@")
    assert len(encoder.model_hash) == 12


MIXED_TEXTS = ["Heat (1995)", "Amélie (2001)", "東京物語 (1953)", "Se7en (a.k.a. Seven) (1995)", "",
               "trail running shoes " * 60, "🎬", "a", "Don't Look Up (2021)"] * 3  # fmt: skip


@pytest.fixture(scope="module")
def torch_encoder() -> TextEncoder:
    return TextEncoder(backend="torch", batch_size=5)


def test_onnx_and_torch_backends_compute_the_same_vectors(torch_encoder, tmp_path):
    onnx = TextEncoder(backend="onnx", onnx_dir=tmp_path, batch_size=7)
    assert not onnx.onnx_path.exists()
    got, want = onnx.encode(MIXED_TEXTS), torch_encoder.encode(MIXED_TEXTS)  # exported, then run
    assert onnx.onnx_path.exists() and onnx.backend == "onnx"
    assert got.shape == want.shape == (len(MIXED_TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert onnx.name == torch_encoder.name  # one embedding-cache key for both


def test_an_export_that_disagrees_with_torch_is_refused_and_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(encoder_module, "EXPORT_TOLERANCE", 0.0)  # float32 graphs differ by ~1e-7
    onnx = TextEncoder(backend="onnx", onnx_dir=tmp_path)
    with pytest.raises(RuntimeError, match="differs from torch"):
        onnx.load()
    assert list(tmp_path.iterdir()) == [] and not onnx.loaded


def test_identity_is_known_without_loading_and_onnx_never_imports_torch(encoder):
    """A worker opens its embedding cache (which needs only the identity) before any model loads; with an
    exported graph, encoding happens without importing torch or transformers at all."""
    encoder.load()  # the session's encoder; its graph is exported by now if its backend is onnx
    script = (
        "import sys\n"
        "from models.encoder import TextEncoder\n"
        "e = TextEncoder()\n"
        "print(e.loaded, e.dim, e.name, 'torch' in sys.modules)\n"
        "e.encode(['garden hose'])\n"
        "print(e.loaded, e.backend, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    before, after = out.splitlines()
    assert before == f"False 384 {encoder.name} False"
    assert after == "True onnx False False"


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        TextEncoder(backend="tensorrt")


def test_item_text_is_title_then_text_and_ignores_categories():
    assert Item("Heat (1995)", "", ("Action",)).encoder_text == "Heat (1995)"
    assert Item("Heat", "bank heist", ("Crime",)).encoder_text == "Heat. bank heist"


class CountingEncoder:
    """Wraps the real encoder and records each call, to see what the cache sends through."""

    def __init__(self, inner):
        self.inner, self.dim, self.model_hash, self.name = inner, inner.dim, inner.model_hash, inner.name
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.inner.encode(texts)


def test_cache_encodes_each_text_once_and_survives_reopen(encoder, tmp_path):
    counting = CountingEncoder(encoder)
    cache = CachedEncoder(counting, tmp_path / "cache")
    first = cache.embed(["x", "y", "x"])
    assert counting.calls == [["x", "y"]]
    cache.embed(["y", "z"])
    assert counting.calls[-1] == ["z"]
    cache.close()
    reopened = CachedEncoder(counting, tmp_path / "cache")
    again = reopened.embed(["x", "y", "z"])
    assert len(counting.calls) == 2  # nothing re-encoded after the restart
    np.testing.assert_array_equal(again["x"], first["x"])
    reopened.close()


# -- int8, half precision, padding, threads, GPU fallback ------------------------------------------------


def first_1000_titles() -> list[str]:
    """The text of the first 1,000 MovieLens movies by id."""
    items = movielens_items()
    return [items[movie].encoder_text for movie in sorted(items, key=int)[:1000]]


@pytest.fixture(scope="module")
def movielens_vectors(torch_encoder) -> dict[str, np.ndarray]:
    """The first 1,000 MovieLens movies (by id) encoded by torch, the fp32 graph and the int8 graph."""
    texts = first_1000_titles()
    return {
        "torch": torch_encoder.encode(texts),
        "onnx": TextEncoder(backend="onnx").encode(texts),
        "onnx-int8": TextEncoder(backend="onnx-int8").encode(texts),
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _nearest_neighbour_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose nearest other row (by cosine) is the same under ``a`` and ``b``."""
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    return float((sa.argmax(1) == sb.argmax(1)).mean())


def test_onnx_fp32_matches_torch_on_1000_movielens_titles(movielens_vectors):
    assert _cosines(movielens_vectors["onnx"], movielens_vectors["torch"]).min() >= 0.9999
    assert _nearest_neighbour_agreement(movielens_vectors["onnx"], movielens_vectors["torch"]) == 1.0


INT8_FLOORS = {"min_cosine": 0.975, "median_cosine": 0.99, "nn_agreement": 0.80}
"""What dynamic int8 holds on the 1,000 titles (measured at batch 128: min 0.978, 1st percentile 0.987,
median 0.993, same nearest neighbour for 83%; at batch 64, the default since: 0.982, 0.987, 0.993, 84%).
Below the issue's targets (min 0.99, 95%): see test_int8_meets_the_issue_targets."""


def test_int8_stays_close_to_torch_on_1000_movielens_titles(movielens_vectors):
    int8, torch = movielens_vectors["onnx-int8"], movielens_vectors["torch"]
    cos = _cosines(int8, torch)
    assert cos.min() >= INT8_FLOORS["min_cosine"]
    assert np.median(cos) >= INT8_FLOORS["median_cosine"]
    assert _nearest_neighbour_agreement(int8, torch) >= INT8_FLOORS["nn_agreement"]


@pytest.mark.xfail(strict=True, reason="dynamic int8 (per-channel weights, per-tensor activations) reaches "
                   "min cosine 0.98 and 84% nearest-neighbour agreement, not 0.99 and 95%")  # fmt: skip
def test_int8_meets_the_issue_targets(movielens_vectors):
    """Kept failing on purpose: the targets stand, and a better quantisation turns this into an XPASS.

    Nearest neighbours are fragile here: for 10% of the titles the two closest others differ in cosine by
    under 0.005, and int8 moves cosines by about that much (bf16 torch, min cosine 0.9999, already keeps
    only 99.2%)."""
    int8, torch = movielens_vectors["onnx-int8"], movielens_vectors["torch"]
    assert _cosines(int8, torch).min() >= 0.99
    assert _nearest_neighbour_agreement(int8, torch) >= 0.95


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bfloat16 instructions")
def test_bf16_on_the_cpu_meets_the_targets_int8_misses(movielens_vectors):
    """torch in bfloat16 on a CPU with bfloat16 instructions: the fast CPU path that keeps parity."""
    bf16 = TextEncoder(backend="torch", dtype="bf16").encode(first_1000_titles())
    torch = movielens_vectors["torch"]
    assert _cosines(bf16, torch).min() >= 0.999
    assert _nearest_neighbour_agreement(bf16, torch) >= 0.95


def test_each_vector_variant_has_its_own_identity_and_cache_keys(tmp_path):
    """int8 and half-precision vectors are close to fp32 ones, not equal: a cache or a user state written
    by one variant must not be read by another, while torch and onnx fp32 (equal) share theirs."""
    fp32 = TextEncoder(backend="onnx")
    int8 = TextEncoder(backend="onnx-int8")
    half = TextEncoder(dtype="fp16")  # a half dtype picks torch, even on the CPU
    assert TextEncoder(backend="torch").name == fp32.name and fp32.model_hash == fp32.weights_hash
    assert (int8.name, int8.model_hash) == (fp32.name + "+int8", fp32.weights_hash + "+int8")
    assert (half.name, half.backend) == (fp32.name + "+fp16", "torch")
    assert TextEncoder(backend="torch", dtype="bf16").name == fp32.name + "+bf16"
    assert len({model_tag(e.name) for e in (fp32, int8, half)}) == 3  # states are rebased on a switch
    assert int8.int8_path.parent == fp32.onnx_path.parent and int8.onnx_path == fp32.onnx_path

    class Fixed:  # the identity of a real encoder, a constant vector per variant
        def __init__(self, like: TextEncoder, value: float) -> None:
            self.dim, self.model_hash, self.name, self.value = like.dim, like.model_hash, like.name, value

        def encode(self, texts):
            return np.full((len(texts), self.dim), self.value, dtype=np.float32)

    cache = CachedEncoder(Fixed(fp32, 1.0), tmp_path / "cache")
    cache.embed(["Heat (1995)"])
    cache.close()
    cache = CachedEncoder(Fixed(int8, 2.0), tmp_path / "cache")
    assert cache.embed(["Heat (1995)"])["Heat (1995)"][0] == 2.0 and cache.misses == 1
    cache.close()
    cache = CachedEncoder(Fixed(fp32, 3.0), tmp_path / "cache")
    assert cache.embed(["Heat (1995)"])["Heat (1995)"][0] == 1.0 and cache.hits == 1
    cache.close()


def test_onnx_is_fp32_only():
    with pytest.raises(ValueError, match="torch backend"):
        TextEncoder(backend="onnx-int8", dtype="bf16")
    with pytest.raises(ValueError, match="dtype"):
        TextEncoder(dtype="fp8")


def test_an_int8_graph_too_far_from_fp32_is_refused_and_not_kept(tmp_path, monkeypatch):
    fp32 = TextEncoder(backend="onnx").load()  # the shared fp32 graph, copied: quantising needs no torch
    shutil.copy(fp32.onnx_path, tmp_path / fp32.onnx_path.name)
    monkeypatch.setattr(encoder_module, "INT8_MIN_COSINE", 1.0)
    int8 = TextEncoder(backend="onnx-int8", onnx_dir=tmp_path)
    with pytest.raises(RuntimeError, match="int8 graph"):
        int8.load()
    assert [p.name for p in tmp_path.iterdir()] == [fp32.onnx_path.name] and not int8.loaded


def test_batches_are_cut_by_token_count_and_pad_to_their_own_longest(torch_encoder):
    onnx = TextEncoder(backend="onnx", batch_size=4).load()
    widths: list[int] = []
    run = onnx._run

    def spy(ids, mask):
        assert mask.sum(1).max() == ids.shape[1]  # no batch is wider than its longest text
        widths.append(ids.shape[1])
        return run(ids, mask)

    onnx._run = spy
    vecs = onnx.encode(MIXED_TEXTS)
    counts = sorted(len(ids) for ids in onnx.tokenize(MIXED_TEXTS))
    assert widths == [max(counts[i : i + 4]) for i in range(0, len(counts), 4)]
    np.testing.assert_allclose(vecs, torch_encoder.encode(MIXED_TEXTS), atol=1e-5)


@pytest.mark.parametrize("path", ["cpu: chunks in turn", "gpu: thread", "gpu: inline", "gpu: processes"])
def test_texts_tokenised_in_chunks_come_back_in_order(monkeypatch, path):
    monkeypatch.setattr(encoder_module, "CHUNK_BATCHES", 1)
    monkeypatch.setattr(encoder_module, "CPU_CHUNK_BATCHES", 1)
    onnx = TextEncoder(backend="onnx", batch_size=4).load()
    if path.startswith("gpu"):
        onnx.device_name = "cuda"  # only picks encode's chunking: the onnx session stays on the CPU
        onnx.tokenize_mode = path.split(": ")[1]
    texts = [f"{title} {n}" for n, title in enumerate(MIXED_TEXTS)]  # 27 texts: 7 chunks of <= 4
    try:
        np.testing.assert_allclose(onnx.encode(texts), onnx.encode_ids(onnx.tokenize(texts)), atol=1e-6)
        np.testing.assert_allclose(onnx.encode(texts)[5], onnx.encode([texts[5]])[0], atol=1e-5)
        assert (onnx._pool is not None) == (path == "gpu: processes")  # the pool did the tokenising
    finally:
        onnx.close()


def test_a_gpu_encoder_tokenises_in_processes_by_default(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only the constructor asks
    assert TextEncoder(device="cuda").tokenize_mode == "processes"
    assert TextEncoder().tokenize_mode == "thread"  # the CPU path tokenises inline whatever this says
    with pytest.raises(ValueError, match="tokenize_mode"):
        encoder = TextEncoder(backend="onnx", batch_size=2)
        encoder.device_name, encoder.tokenize_mode = "cuda", "fibers"
        encoder.encode(MIXED_TEXTS)


def test_padding_matches_a_row_by_row_reference():
    rng = np.random.default_rng(0)
    for _ in range(100):
        ids = [list(rng.integers(1, 30_000, rng.integers(0, 12))) for _ in range(rng.integers(0, 20))]
        out, mask = encoder_module._pad(ids, 7)
        width = max((len(row) for row in ids), default=0)
        assert out.shape == mask.shape == (len(ids), width) and out.dtype == mask.dtype == np.int64
        for r, row in enumerate(ids):
            assert out[r].tolist() == row + [7] * (width - len(row))
            assert mask[r].tolist() == [1] * len(row) + [0] * (width - len(row))


def test_thread_counts_are_set_on_purpose(monkeypatch):
    import onnxruntime
    import torch

    assert TextEncoder().threads == len(os.sched_getaffinity(0))
    seen = []
    session = onnxruntime.InferenceSession

    def spy(path, options, **kwargs):
        seen.append((options.intra_op_num_threads, options.inter_op_num_threads))
        return session(path, options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    TextEncoder(backend="onnx", threads=1).load()
    assert seen == [(1, 1)]
    before = torch.get_num_threads()
    try:
        TextEncoder(backend="torch", threads=1).load()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cuda_without_a_gpu_falls_back_to_the_cpu_with_one_warning(monkeypatch, caplog, torch_encoder):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also where a GPU is present
    with caplog.at_level(logging.WARNING, logger="interest_stream.encoder"):
        gpu = TextEncoder(device="cuda")
        vecs = gpu.encode(MIXED_TEXTS)
        gpu.encode(MIXED_TEXTS[:3])
    lines = [r for r in caplog.records if r.name == "interest_stream.encoder"]
    assert len(lines) == 1 and "CPU" in lines[0].getMessage() and lines[0].levelno == logging.WARNING
    # on the CPU: the CPU's default backend and fp32, so the fp32 identity and vectors
    assert (gpu.device_name, gpu.backend, gpu.dtype, gpu.name) == ("cpu", "onnx", "fp32", torch_encoder.name)
    np.testing.assert_allclose(vecs, torch_encoder.encode(MIXED_TEXTS), atol=1e-5)


def test_half_precision_torch_pools_in_fp32_and_stays_close(torch_encoder):
    """The GPU path's arithmetic, run on the CPU: fp16 weights, pooling and norm in fp32."""
    half = TextEncoder(backend="torch", dtype="fp16")
    vecs = half.encode(MIXED_TEXTS)
    assert vecs.dtype == np.float32 and np.isfinite(vecs).all()
    assert _cosines(vecs, torch_encoder.encode(MIXED_TEXTS)).min() >= 0.999
