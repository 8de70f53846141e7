"""Browser-call settings and admission checks: ICE servers, SDP offers, the per-IP rate limit.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipecat.transports.smallwebrtc.connection import IceServer

from bots.webrtc.tokens import DEFAULT_TTL_SECS
from stepcall.settings import Settings

#: A peer that has not connected this long after its offer is dropped.
CONNECT_TIMEOUT_SECS = 30.0


_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def _check_ice_url(url: Any, where: str) -> str:
    if not isinstance(url, str) or not url.strip().lower().startswith(_ICE_SCHEMES):
        raise ValueError(
            f"STEPCALL_ICE_SERVERS: {where} must be a stun:, turn: or turns: URL, got {url!r}"
        )
    return url.strip()


def parse_ice_servers(raw: str | None) -> list[IceServer]:
    """Parse ``STEPCALL_ICE_SERVERS``: a JSON list or a comma list of ICE URLs.

    JSON items are URLs or objects ``{"urls": URL | [URL...], "username"?, "credential"?}``
    (the browser's ``RTCIceServer`` shape). ``ValueError`` names the offending entry.
    """
    if raw is None or not raw.strip():
        return []
    text = raw.strip()
    if not text.startswith("["):
        return [
            IceServer(urls=_check_ice_url(part, f"entry {i}"))
            for i, part in enumerate(p for p in text.split(",") if p.strip())
        ]
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"STEPCALL_ICE_SERVERS is not valid JSON: {e}") from e
    if not isinstance(items, list):
        raise ValueError("STEPCALL_ICE_SERVERS must be a JSON list")
    servers: list[IceServer] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            servers.append(IceServer(urls=_check_ice_url(item, f"entry {i}")))
            continue
        if not isinstance(item, dict) or "urls" not in item:
            raise ValueError(f'STEPCALL_ICE_SERVERS: entry {i} needs "urls", got {item!r}')
        urls = item["urls"]
        url_list = urls if isinstance(urls, list) else [urls]
        if not url_list:
            raise ValueError(f"STEPCALL_ICE_SERVERS: entry {i} has no urls")
        checked = [_check_ice_url(u, f"entry {i} url") for u in url_list]
        unknown = set(item) - {"urls", "username", "credential"}
        if unknown:
            raise ValueError(f"STEPCALL_ICE_SERVERS: entry {i} has unknown keys {sorted(unknown)}")
        servers.append(
            IceServer(
                urls=checked if isinstance(urls, list) else checked[0],
                username=item.get("username"),
                credential=item.get("credential"),
            )
        )
    return servers


def ice_servers_for_browser(servers: list[IceServer]) -> list[dict[str, Any]]:
    """The ICE servers as the browser's ``RTCPeerConnection({iceServers})`` wants them."""
    out = []
    for server in servers:
        entry: dict[str, Any] = {"urls": server.urls}
        if server.username:
            entry["username"] = server.username
        if server.credential:
            entry["credential"] = server.credential
        out.append(entry)
    return out


@dataclass(frozen=True)
class WebRTCConfig:
    """What the WebRTC routes need beyond :class:`Settings`."""

    ice_servers: list[IceServer] = field(default_factory=list)
    offers_per_minute: int = 10
    allowed_origins: tuple[str, ...] = ("*",)
    connect_timeout_secs: float = CONNECT_TIMEOUT_SECS
    widget_secret: str | None = field(default=None, repr=False)
    widget_token_ttl_secs: int = DEFAULT_TTL_SECS
    api_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebRTCConfig:
        """Read ``ice_servers`` / ``webrtc_offers_per_minute`` / ``widget_origins`` from the
        settings (env vars STEPCALL_ICE_SERVERS, STEPCALL_WEBRTC_OFFERS_PER_MINUTE,
        STEPCALL_WIDGET_ORIGINS)."""
        origins = tuple(
            o.strip().rstrip("/") for o in settings.widget_origins.split(",") if o.strip()
        )
        return cls(
            ice_servers=parse_ice_servers(settings.ice_servers),
            offers_per_minute=settings.webrtc_offers_per_minute,
            allowed_origins=origins or ("*",),
            widget_secret=settings.widget_secret,
            widget_token_ttl_secs=settings.widget_token_ttl_secs,
            api_token=settings.api_token,
        )


#: Largest SDP offer accepted (a browser's audio offer is 2–6 KB).
MAX_SDP_BYTES = 32 * 1024


def sdp_offer_problem(sdp: str) -> str | None:
    """Why ``sdp`` cannot start a browser call (None when it looks like an audio offer).

    aiortc answers almost anything (even ``"v=0"`` alone, with no media); such a peer would hold
    a call slot and a model session until the connect timeout, so it is refused up front.
    """
    if len(sdp) > MAX_SDP_BYTES:
        return f"the SDP offer is over {MAX_SDP_BYTES} bytes"
    lines = [line.strip() for line in sdp.strip().splitlines()]
    if not lines or lines[0] != "v=0":
        return 'the SDP offer must start with "v=0"'
    if not any(line.startswith("m=audio ") for line in lines):
        return "the SDP offer has no audio (m=audio) section"
    return None


class OfferRateLimiter:
    """Sliding-window limit of new calls per client IP (``limit`` per ``window_secs``)."""

    def __init__(
        self, limit: int, window_secs: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``limit`` <= 0 disables the limit."""
        self.limit = limit
        self.window_secs = window_secs
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def check(self, key: str) -> float:
        """Record one offer from ``key``: 0.0 if allowed, else seconds until the next is."""
        if self.limit <= 0:
            return 0.0
        now = self._clock()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.window_secs:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(0.001, hits[0] + self.window_secs - now)
        hits.append(now)
        if len(self._hits) > 10_000:  # forget idle clients
            for stale in [
                k for k, v in self._hits.items() if not v or v[-1] <= now - self.window_secs
            ]:
                self._hits.pop(stale, None)
        return 0.0
