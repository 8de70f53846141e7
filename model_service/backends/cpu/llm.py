"""The CPU backend's language model: a GGUF file run by llama.cpp through ``xllamacpp``.

``xllamacpp`` is a prebuilt wheel (no compile) around llama.cpp's server context. We use its
raw ``/completion`` handler: the prompt is rendered by us (``chat.render_chatml``) so the
history, barge-in cuts and tool calls stay under our control, and the reply streams piece by
piece to a callback that can stop it (cancellation). llama.cpp keeps the previous prompt's KV
cache (``cache_prompt``), so a follow-up turn only prefills the new suffix. Prompt processing
runs in batches of ``n_batch`` tokens and reports progress after each (``return_progress``),
so a barge-in stops a long prefill within one batch instead of after all of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_service.backends.base import SamplingParams

#: Strings that end a reply (ChatML end of turn, and the start of a hallucinated next turn).
STOP_STRINGS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]


@dataclass
class CompletionStats:
    """What one completion did."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    #: Prompt tokens processed (cache included) when the last progress report came.
    prompt_processed: int = 0
    finish_reason: str | None = None  # stop | length | cancelled
    error: str | None = None


class LlamaEngine:
    """One loaded GGUF model, one completion at a time (callers serialise; a lock enforces it).

    ``n_threads`` is the llama.cpp thread count for both prompt processing and decoding (2 on a
    laptop keeps the rest of the machine responsive).
    """

    #: Prompt tokens per llama.cpp batch: a cancel lands within one batch (~0.4 s on 2 cores);
    #: prefill is ~6 % slower than with 512-token batches.
    DEFAULT_N_BATCH = 64

    def __init__(
        self,
        gguf_path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 2,
        n_batch: int = DEFAULT_N_BATCH,
    ) -> None:
        import xllamacpp

        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {self.path}")
        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.n_batch = params.n_ubatch = n_batch
        params.warmup = True
        params.verbosity = -1  # llama.cpp logs stay quiet
        params.port = 0  # its (unused) HTTP listener binds a free loopback port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.server: Any = xllamacpp.Server(params)
        self._lock = threading.Lock()

    def complete(
        self,
        prompt: str,
        sampling: SamplingParams,
        on_piece: Callable[[str], bool],
        *,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> CompletionStats:
        """Stream a completion of ``prompt``; ``on_piece(text)`` returns True to stop early.

        ``cancelled()`` is also polled after each prompt batch, so a long prefill stops early.
        Blocks the calling thread (run it in an executor).
        """
        req: dict[str, Any] = {
            "prompt": prompt,
            "stream": True,
            "n_predict": int(max_tokens),
            "temperature": float(sampling.temperature),
            "top_p": float(sampling.top_p),
            "top_k": int(sampling.top_k),
            "repeat_penalty": float(sampling.repetition_penalty),
            "stop": list(stop if stop is not None else STOP_STRINGS),
            "cache_prompt": True,
            "return_progress": True,
        }
        if sampling.seed is not None:
            req["seed"] = int(sampling.seed)
        stats = CompletionStats()
        stopped = False

        def callback(chunk: Any) -> bool:
            nonlocal stopped
            if not isinstance(chunk, dict):
                return False
            if "error" in chunk:
                stats.error = str(chunk["error"])
                return True
            progress = chunk.get("prompt_progress")
            if isinstance(progress, dict):
                stats.prompt_processed = int(progress.get("processed", 0)) + int(
                    progress.get("cache", 0)
                )
                if cancelled is not None and cancelled():
                    stopped = True
                    return True
            choice = (chunk.get("choices") or [{}])[0]
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                stats.prompt_tokens = int(usage.get("prompt_tokens", 0))
                stats.completion_tokens = int(usage.get("completion_tokens", 0))
                details = usage.get("prompt_tokens_details") or {}
                stats.cached_tokens = int(details.get("cached_tokens", 0) or 0)
            if choice.get("finish_reason"):
                stats.finish_reason = choice["finish_reason"]
            text = choice.get("text") or ""
            if text:
                if on_piece(text):
                    stopped = True
                    return True
            return False

        with self._lock:
            if self.server is None:
                raise RuntimeError("the LLM engine is closed")
            # Errors arrive through the same callback as a dict with an "error" key.
            self.server.handle_completions(req, callback)
        if stopped:
            stats.finish_reason = "cancelled"
        if stats.error:
            raise RuntimeError(f"llama.cpp completion failed: {stats.error}")
        return stats

    def prefill(
        self, prompt: str, cancelled: Callable[[], bool] | None = None
    ) -> CompletionStats:
        """Process ``prompt`` into llama.cpp's prompt cache (one token decoded, discarded), so
        the next completion that starts with it only prefills what follows. ``cancelled()``
        stops it at the next prompt batch."""
        return self.complete(prompt, SamplingParams(temperature=0.0), lambda _piece: True,
                             max_tokens=1, cancelled=cancelled)

    def close(self) -> None:
        """Drop the model (llama.cpp frees it when the server object goes)."""
        with self._lock:
            self.server = None


__all__ = ["STOP_STRINGS", "CompletionStats", "LlamaEngine"]
