"""Lines the bot speaks word for word (a flow's ``greeting.say``, the holding line), rendered once.

The model service renders a line in the bot's own voice (``POST /v1/speech``, see
``stepcall/PROTOCOL.md``); :class:`SpokenLines` keeps the PCM by content (text, voice, style,
rate) for the life of the bot server, so every call plays it from memory: a greeting starts as
soon as the call connects instead of after a model response (seconds on the CPU backend).

- :meth:`SpokenLines.prerender` starts rendering at server start-up in the background; while
  the model service is still loading (503) or unreachable it retries, with a log line, until
  ``ready_timeout_secs`` has passed.
- :meth:`SpokenLines.get` answers from memory, else waits for the render under way (or starts
  one) for at most ``wait_secs``; ``None`` means "not available now" (the model service cannot
  render, or did not in time), and the caller falls back (e.g. a spoken instruction to the
  model). A failed render is not cached: the next ``get`` tries again.

Why our own small cache rather than a library: the entries are a handful of short PCM lines
that must be shared by concurrent waiters while they render (one request per line, not one per
call), and their lifetime is the process; ``asyncio`` futures in a dict do exactly that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from loguru import logger


@dataclass(frozen=True)
class SpokenLine:
    """One line to speak verbatim in one voice at one PCM rate."""

    text: str
    voice: str | None = None
    style: str | None = None
    sample_rate: int = 8000

    @property
    def key(self) -> str:
        """Content hash: the same words in the same voice, style and rate are one entry."""
        raw = "\x1f".join((self.text.strip(), self.voice or "", self.style or "", str(self.sample_rate)))
        return hashlib.sha256(raw.encode()).hexdigest()


class SpeechUnavailable(Exception):
    """The renderer cannot render now; ``retry`` says whether trying again later may work."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class LineRenderer(Protocol):
    """Turns a :class:`SpokenLine` into PCM16 mono bytes at its rate."""

    async def render(self, line: SpokenLine) -> bytes: ...


def speech_url(session_url: str) -> str:
    """``ws://host:port/v1/session`` -> ``http://host:port/v1/speech`` (wss -> https)."""
    parts = urlsplit(session_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rsplit("/", 1)[0] + "/speech" if "/" in parts.path else "/v1/speech"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class ModelServiceSpeech:
    """The model service's ``POST /v1/speech``: the line in the bot's voice, by the backend
    that serves the calls (Step-Audio 2 on the reference/vLLM backends, Piper on cpu)."""

    def __init__(self, session_url: str, token: str | None = None, timeout_secs: float = 60.0):
        self.url = speech_url(session_url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout_secs

    def __repr__(self) -> str:  # never show the token
        return f"ModelServiceSpeech({self.url!r})"

    async def render(self, line: SpokenLine) -> bytes:
        body = {
            "text": line.text,
            "voice": line.voice,
            "style": line.style,
            "sample_rate": line.sample_rate,
        }
        try:
            async with httpx.AsyncClient(timeout=self._timeout, trust_env=False) as client:
                answer = await client.post(self.url, json=body, headers=self._headers)
        except httpx.HTTPError as e:
            raise SpeechUnavailable(f"model service unreachable at {self.url}: {e}", retry=True) from e
        if answer.status_code == 200:
            pcm = answer.content
            if len(pcm) % 2 or not pcm:
                raise SpeechUnavailable(f"bad speech answer: {len(pcm)} bytes", retry=False)
            return pcm
        detail = answer.text[:200]
        # 503: still loading; 5xx: may pass. 4xx (bad line, token) and 501 (cannot render) stay.
        retry = answer.status_code == 503 or (answer.status_code >= 500 and answer.status_code != 501)
        raise SpeechUnavailable(
            f"model service answered {answer.status_code} to /v1/speech: {detail}", retry=retry
        )


class SpokenLines:
    """The bot server's rendered lines, by content (see the module docstring)."""

    def __init__(
        self,
        renderer: LineRenderer,
        *,
        retry_secs: float = 1.0,
        ready_timeout_secs: float = 600.0,
    ) -> None:
        self.renderer = renderer
        self._retry_secs = retry_secs
        self._ready_timeout = ready_timeout_secs
        self._pcm: dict[str, bytes] = {}
        self._pending: dict[str, asyncio.Task[bytes | None]] = {}
        self._refused: dict[str, str] = {}  # key -> why the renderer refused for good

    def status(self) -> dict[str, int]:
        """How many lines are rendered, rendering and refused (the bot server's /healthz)."""
        return {
            "rendered": len(self._pcm),
            "rendering": len(self._pending),
            "refused": len(self._refused),
        }

    def cached(self, line: SpokenLine) -> bytes | None:
        """The PCM if it is rendered already (no waiting)."""
        return self._pcm.get(line.key)

    def refused(self, line: SpokenLine) -> str | None:
        """Why the renderer refused ``line`` for good (None: it did not)."""
        return self._refused.get(line.key)

    def prerender(self, lines: Iterable[SpokenLine]) -> list[asyncio.Task[bytes | None]]:
        """Start rendering ``lines`` in the background (start-up); returns their tasks."""
        return [self._task(line, patient=True) for line in dict.fromkeys(lines)]

    async def get(self, line: SpokenLine, wait_secs: float = 3.0) -> bytes | None:
        """The line's PCM: from memory, else the render under way (or a new one) for at most
        ``wait_secs``; None when it is not available in that time (the render goes on)."""
        pcm = self._pcm.get(line.key)
        if pcm is not None:
            return pcm
        if line.key in self._refused:
            return None
        task = self._task(line, patient=False)
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(task), wait_secs)
        return None

    def _task(self, line: SpokenLine, *, patient: bool) -> asyncio.Task[bytes | None]:
        task = self._pending.get(line.key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._render(line, patient))
            self._pending[line.key] = task
            task.add_done_callback(lambda _t, key=line.key: self._pending.pop(key, None))
        return task

    async def _render(self, line: SpokenLine, patient: bool) -> bytes | None:
        """Render ``line``; a patient render (start-up) retries while the service loads."""
        started = time.monotonic()
        warned = False
        while True:
            t0 = time.monotonic()
            try:
                pcm = await self.renderer.render(line)
            except SpeechUnavailable as e:
                if not e.retry:
                    self._refused[line.key] = str(e)
                    logger.warning(f"spoken line {line.text[:40]!r} not rendered: {e}")
                    return None
                if not patient or time.monotonic() - started > self._ready_timeout:
                    logger.warning(f"spoken line {line.text[:40]!r} not rendered yet: {e}")
                    return None
                if not warned:
                    logger.info(f"waiting for the model service to render {line.text[:40]!r}: {e}")
                    warned = True
                await asyncio.sleep(self._retry_secs)
                continue
            except Exception as e:  # a renderer bug must not end the server's start-up
                logger.exception(f"spoken line {line.text[:40]!r}: render failed ({e})")
                return None
            self._pcm[line.key] = pcm
            secs = len(pcm) / 2 / line.sample_rate
            logger.info(
                f"spoken line rendered ({secs:.1f} s at {line.sample_rate} Hz, voice "
                f"{line.voice or 'default'}, {1000 * (time.monotonic() - t0):.0f} ms): "
                f"{line.text[:60]!r}"
            )
            return pcm
