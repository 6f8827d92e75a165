import numpy as np

from models.cache import CachedEncoder
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
