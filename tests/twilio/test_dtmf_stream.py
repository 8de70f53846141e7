"""A Twilio ``dtmf`` event on an authenticated media stream reaches the model as caller text.

Real processes in one event loop: the model service (reference backend, tiny demo checkpoint),
the bot server (``bots.server.create_app``) and the caller simulator speaking Twilio's Media
Streams protocol with a valid stream token. Path under test: Twilio ``dtmf`` message →
``TwilioFrameSerializer`` → ``InputDTMFFrame`` → ``StepAudio2Service`` → ``input_text.append``
→ the model session's history.
"""

from __future__ import annotations

import asyncio

import pytest

from bots.profile import BotProfile
from bots.registry import BotRegistry
from bots.server import create_app as create_bot_app
from bots.twilio.config import TwilioConfig
from bots.twilio.stream_auth import StreamAuth
from harness.callers import CallerTurn, CallOptions, StreamIdentity, run_call
from model_service.backends.reference import ReferenceBackend, load_reference_backend
from model_service.server import create_app as create_model_app
from model_service.server import serving
from stepcall.settings import Settings

SECRET = "stream-secret"


@pytest.fixture(scope="module")
def backend(tmp_path_factory) -> ReferenceBackend:
    from harness.checkpoints.demo_checkpoint import build_demo_checkpoint

    checkpoint = build_demo_checkpoint(tmp_path_factory.mktemp("demo-ckpt"))
    return load_reference_backend(checkpoint, "cpu", "float32")


def _human_texts(backend: ReferenceBackend) -> set[str]:
    texts = set()
    for session in list(backend.sessions):
        for message in session.conversation.messages:
            if getattr(message, "role", None) == "human":
                texts.update(getattr(p, "text", p) for p in message.parts if not hasattr(p, "audio"))
    return {t for t in texts if isinstance(t, str)}


async def test_dtmf_digits_reach_the_model_through_an_authenticated_stream(backend):
    async with serving(create_model_app(backend, token=None, max_sessions=2)) as model_url:
        settings = Settings(public_url="https://bots.example.com", model_url=model_url)
        app = create_bot_app(
            settings,
            BotRegistry.single(BotProfile(name="front", smart_turn=False)),
            twilio=TwilioConfig(base_url=settings.base_url, stream_secret=SECRET),
        )
        async with serving(app) as url:
            stream = url.replace("/v1/session", "/twilio/stream")
            identity = StreamIdentity()
            token = StreamAuth(SECRET).issue(identity.call_sid, "front")
            options = CallOptions(
                params={"bot": "front", "auth": token}, identity=identity,
                greeting_wait_secs=1.5, pause_secs=0.1, wait_secs=1.0, quiet_secs=0.3,
                hangup_delay_secs=0.5,
            )
            call = asyncio.create_task(
                run_call(stream, [CallerTurn(dtmf="5#", expect_reply=False)], options)
            )
            seen: set[str] = set()
            while not call.done():
                seen |= _human_texts(backend)
                await asyncio.sleep(0.01)
            result = call.result()
    assert not result.errors, result.errors
    assert app.state.calls.total == 1  # the token was accepted: a pipeline ran
    assert {"The caller pressed 5.", "The caller pressed #."} <= seen, seen
