"""Model service slow: a 2 s stall mid-call delays the reply but the call goes on (no apology,
no reconnect), because it is shorter than the bot's response timeout (8 s).

Real bot server, real Twilio-protocol caller (flite speech), the canned model service behind a
relay (``ModelProxy``) that holds the model's answer for 2 s. The same call without the stall is
the baseline.
"""

from __future__ import annotations

import numpy as np
import pytest

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app
from harness.callers import CallerTurn, CallOptions, run_call
from harness.canned_model_service import CannedModelService
from model_service.server import serving
from stepcall.settings import Settings

STALL_SECS = 2.0


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    from stepcall.audio.speech import SpeechUnavailableError, synthesize

    try:
        return synthesize("Hello, what time do you open tomorrow?", 8000)
    except SpeechUnavailableError as e:
        pytest.skip(str(e))


def _tone() -> bytes:
    t = np.arange(8000) / 8000
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


async def test_two_second_model_stall_delays_the_reply_without_apology(question, model_proxy):
    latencies = {}
    for stall in (0.0, STALL_SECS):
        canned = CannedModelService(_tone(), text="We open at nine.")
        async with canned.serving() as model_url:
            proxy = model_proxy(model_url)
            proxy.stall_secs = stall
            async with proxy.serving() as proxied:
                app = create_app(
                    Settings(model_url=proxied),
                    BotRegistry.single(BotProfile(name="front", smart_turn=False)),
                )
                async with serving(app) as url:
                    stream = url.removesuffix("/v1/session") + "/twilio/stream"
                    result = await run_call(
                        stream,
                        [CallerTurn(audio=question)],
                        CallOptions(greeting_wait_secs=0.5, wait_secs=8.0, quiet_secs=0.6,
                                    params={"bot": "front"}),
                    )
        assert not result.errors, result.errors
        assert result.turns[0].replied, f"no reply with a {stall} s stall"
        assert canned.sessions == 1, "the bot reconnected: the stall was treated as a failure"
        assert canned.responses == 1
        assert proxy.stalls == (1 if stall else 0)
        latencies[stall] = result.latency_ms[0] / 1000.0
    extra = latencies[STALL_SECS] - latencies[0.0]
    assert STALL_SECS - 0.3 < extra < STALL_SECS + 1.5, latencies
