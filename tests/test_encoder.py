import subprocess
import sys

import numpy as np
import pytest

from models import encoder as encoder_module
from models.cache import CachedEncoder
from models.encoder import TextEncoder
from models.events import Item


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
