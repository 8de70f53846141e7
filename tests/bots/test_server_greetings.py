"""The bot server renders every bot's verbatim greeting when it starts, through the real model
service (reference backend on the demo checkpoint), and /healthz says how far it got (/readyz: ready once none renders)."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient

from bots.call import BROWSER_RATE, PHONE_RATE, greeting_line, holding_audio, holding_line
from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app, startup_lines
from harness.checkpoints.demo_checkpoint import build_demo_checkpoint
from model_service.backends.reference import load_reference_backend
from model_service.server import create_app as create_model_app
from model_service.server import serving
from stepcall.settings import Settings

FRONT = BotProfile(name="front", bot_speaks_first=True, greeting_say="Hello, this is the desk.")
SALES = BotProfile(name="sales", bot_speaks_first=True, greeting="Greet the caller.")
QUIET = BotProfile(name="quiet", greeting_say="Never said: the caller speaks first.")


@pytest.fixture(scope="module")
def demo_backend(tmp_path_factory):
    return load_reference_backend(
        build_demo_checkpoint(tmp_path_factory.mktemp("greet-demo")), "cpu", "float32"
    )


def test_startup_lines_are_the_verbatim_greetings_at_both_call_rates() -> None:
    registry = BotRegistry({p.name: p for p in (FRONT, SALES, QUIET)}, {}, "front")
    lines = startup_lines(registry)
    # greetings first (a call may wait for one), then the holding line once per voice/style
    assert [(line.text, line.style, line.sample_rate) for line in lines] == [
        ("Hello, this is the desk.", None, PHONE_RATE),
        ("Hello, this is the desk.", None, BROWSER_RATE),
        ("One moment, please.", None, PHONE_RATE),
        ("One moment, please.", None, BROWSER_RATE),
    ]
    assert greeting_line(SALES) is None and greeting_line(QUIET) is None


async def test_server_start_up_renders_the_greetings_through_the_model_service(
    demo_backend, tmp_path
) -> None:
    model_app = create_model_app(demo_backend, token="m-token", max_sessions=2)
    registry = BotRegistry({p.name: p for p in (FRONT, SALES)}, {}, "front")
    async with serving(model_app) as url:
        settings = Settings(
            model_url=url, model_token="m-token", database_url=f"sqlite:///{tmp_path}/c.db"
        )

        def start_and_wait() -> tuple[dict, object]:
            app = create_app(settings, registry)
            with TestClient(app) as client:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    body = client.get("/healthz").json()
                    if body["spoken_lines"]["rendering"] == 0:
                        ready = client.get("/readyz")  # none renders: ready for calls
                        assert ready.status_code == 200 and ready.json()["ready"] is True
                        return body, app
                    time.sleep(0.1)
            raise AssertionError("greetings still rendering after 60 s")

        body, app = await asyncio.to_thread(start_and_wait)
    # the greeting and the holding line (both bots speak with the same voice), at two rates
    assert body["spoken_lines"] == {"rendered": 4, "rendering": 0, "refused": 0}
    lines = app.state.spoken_lines
    phone = lines.cached(greeting_line(FRONT, PHONE_RATE))
    browser = lines.cached(greeting_line(FRONT, BROWSER_RATE))
    assert phone and browser
    # the same words at twice the rate: about twice the samples (the model service's cache)
    assert abs(len(browser) / len(phone) - 2.0) < 0.05

    # a slow answer's holding line is the one rendered in the bot's voice, not flite's
    held = await holding_audio(SALES, PHONE_RATE, lines)()
    assert held == lines.cached(holding_line(SALES, PHONE_RATE)) and held
    flite = await holding_audio(SALES, PHONE_RATE, None)()
    assert flite and flite != held


def test_readyz_is_503_while_a_greeting_renders_then_200() -> None:
    """Readiness follows the renders: a load balancer routes calls only once /readyz is 200."""
    import threading

    from pipeline.step_audio2.spoken_lines import SpokenLines

    release = threading.Event()

    class SlowRenderer:
        async def render(self, line):
            await asyncio.to_thread(release.wait, 30)
            return b"\0\0" * 800

    settings = Settings(model_url="ws://127.0.0.1:9/v1/session", database_url="none")
    registry = BotRegistry({FRONT.name: FRONT}, {}, FRONT.name)
    app = create_app(settings, registry, spoken_lines=SpokenLines(SlowRenderer()))
    with TestClient(app) as client:
        waiting = client.get("/readyz")
        assert waiting.status_code == 503 and waiting.json()["ready"] is False
        assert waiting.json()["spoken_lines"]["rendering"] > 0
        release.set()
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready after the renders finished"
            time.sleep(0.05)
        assert client.get("/readyz").json()["spoken_lines"]["rendering"] == 0
