"""Fixtures for the browser-call tests: the real model service (reference backend on the demo
checkpoint, in-process) and the bot server with the WebRTC routes, served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi import FastAPI

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app as create_bot_app
from bots.webrtc.config import WebRTCConfig
from bots.webrtc.routes import add_webrtc_routes
from model_service.backends.reference import ReferenceBackend, load_reference_backend
from model_service.server import create_app as create_model_app
from model_service.server import serving
from stepcall.settings import Settings


@pytest.fixture(scope="session")
def demo_backend(tmp_path_factory) -> ReferenceBackend:
    """Reference backend on the demo checkpoint: every reply speaks DEMO_REPLY."""
    from harness.checkpoints.demo_checkpoint import build_demo_checkpoint

    ckpt = build_demo_checkpoint(tmp_path_factory.mktemp("webrtc-demo"))
    return load_reference_backend(ckpt, "cpu", "float32")


@pytest.fixture(scope="session")
def speech() -> Callable[[str, int], np.ndarray]:
    """``speech(text, rate) -> int16 PCM`` (flite); skips the test without a speech engine."""
    from stepcall.audio.speech import SpeechUnavailableError, synthesize

    def make(text: str, rate: int) -> np.ndarray:
        try:
            return synthesize(text, rate=rate)
        except SpeechUnavailableError as e:
            pytest.skip(f"no speech engine: {e}")

    return make


@dataclass
class BotServer:
    """A bot server with the WebRTC routes, served on loopback, and its model service."""

    app: FastAPI
    url: str  # http://127.0.0.1:PORT


@pytest.fixture
def bot_server_factory(demo_backend):
    """``async with bot_server_factory(profile=..., config=...) as server`` runs both services."""
    import contextlib

    @contextlib.asynccontextmanager
    async def make(
        profile: BotProfile | None = None, config: WebRTCConfig | None = None, **settings_kw
    ) -> AsyncIterator[BotServer]:
        model_app = create_model_app(demo_backend, token=None, max_sessions=4)
        async with serving(model_app) as model_url:
            settings = Settings(model_url=model_url, **settings_kw)
            registry = BotRegistry.single(profile or BotProfile(name="front", smart_turn=False))
            app = create_bot_app(settings, registry)
            add_webrtc_routes(app, settings, registry, config=config or WebRTCConfig())
            async with serving(app) as url:
                yield BotServer(app, url.replace("ws://", "http://").replace("/v1/session", ""))

    return make
