"""Verbatim speech renders for ``POST /v1/speech``: a content-keyed LRU of 24 kHz audio.

A bot renders its greeting (and its holding line) once at start-up; the same text in the same
voice and style from the same model always gives the same audio, so renders are cached by
content: ``speech_key`` = sha256 of (model name, voice, style, text). ``SpeechCache.get`` returns
a cached render, joins a render of the same key already running (concurrent identical requests
share one), or starts one. A failed render is not cached; a render keeps running when the
request that started it goes away (whoever joined it still gets it, and it lands in the cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import numpy as np

from stepcall.audio.resample import StreamResampler

DEFAULT_ENTRIES = 64


def speech_key(model: str, voice: str | None, style: str | None, text: str) -> str:
    """The content key of a render."""
    blob = json.dumps([model, voice, style, text], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SpeechCache:
    """Renders (float32, 24 kHz) by content key; at most ``max_entries``, least recent out."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._done: OrderedDict[str, np.ndarray] = OrderedDict()
        self._running: dict[str, asyncio.Task[np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._done)

    def __contains__(self, key: str) -> bool:
        return key in self._done

    async def get(
        self, key: str, render: Callable[[], Awaitable[np.ndarray]]
    ) -> tuple[np.ndarray, bool]:
        """(audio, hit): ``hit`` is False only for the request whose call rendered it."""
        cached = self._done.get(key)
        if cached is not None:
            self._done.move_to_end(key)
            return cached, True
        task = self._running.get(key)
        hit = task is not None
        if task is None:
            task = asyncio.ensure_future(self._render(key, render))
            # read by whoever awaits it; this keeps an unawaited failure from being reported
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._running[key] = task
        return await asyncio.shield(task), hit

    async def _render(self, key: str, render: Callable[[], Awaitable[np.ndarray]]) -> np.ndarray:
        try:
            pcm = np.ascontiguousarray(np.asarray(await render(), dtype=np.float32).reshape(-1))
            pcm.setflags(write=False)  # shared by every later request
            self._done[key] = pcm
            self._done.move_to_end(key)
            while len(self._done) > self.max_entries:
                self._done.popitem(last=False)
            return pcm
        finally:
            self._running.pop(key, None)


def resample_once(pcm: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """A whole clip through the streaming resampler the session path uses (``StreamResampler``):
    ``len * out_rate / in_rate`` samples, aligned with the input."""
    if in_rate == out_rate:
        return pcm
    rs = StreamResampler(in_rate, out_rate)
    return np.concatenate([rs.process(pcm), rs.flush()]).astype(np.float32, copy=False)


__all__ = ["DEFAULT_ENTRIES", "SpeechCache", "resample_once", "speech_key"]
