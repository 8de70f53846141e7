"""A flow bot ends a live Twilio call: the model calls ``end_call``, the flow runtime lets the
goodbye play, and the bot server hangs the call up through Twilio's REST API.

Real processes in one event loop: the model service (reference backend on a tiny checkpoint
shaped to call ``end_call`` in its first reply, then say goodbye), the bot server
(``bots.server.create_app`` with a YAML flow and Twilio credentials pointing at the local fake
REST API), and the caller simulator speaking Twilio's Media Streams protocol with a valid stream
token. Only Twilio's cloud is a fake.
"""

from __future__ import annotations

import numpy as np
import pytest

from bots.server import create_app as create_bot_app
from bots.twilio.stream_auth import StreamAuth
from harness.callers import CallerTurn, CallOptions, StreamIdentity, run_call
from harness.checkpoints.tiny_checkpoint import (
    after_tool_script,
    build_tiny_checkpoint,
    tool_call_script,
)
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.backends.reference import load_reference_backend
from model_service.server import create_app as create_model_app
from model_service.server import serving
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer
from stepcall.settings import Settings

FLOW = """\
bot:
  name: closer
persona: You end every call at once.
greeting:
  who_speaks_first: bot
tools:
  - {name: end_call, kind: builtin}
tools_allowed: [end_call]
timeouts:
  silence_secs: 60
initial_node: bye
nodes:
  bye:
    instructions: Say goodbye and end the call.
"""


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(tok_dir)
    tok = StepAudio2Tokenizer.from_pretrained(tok_dir)
    first = tool_call_script(tok, name="end_call", arguments={}, filler="Thanks for calling.")
    after = after_tool_script(tok, first, text="Goodbye and have a nice day.")
    ckpt = build_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt"), script=first, after_tool_script=after
    )
    return load_reference_backend(ckpt, "cpu", "float32")


async def test_end_call_hangs_up_through_the_rest_api(backend, fake_twilio, tmp_path):
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "closer.yaml").write_text(FLOW)
    config = fake_twilio.config()
    async with serving(create_model_app(backend, token=None, max_sessions=2)) as model_url:
        settings = Settings(
            public_url=config.base_url,
            model_url=model_url,
            flows_dir=str(flows),
            twilio_account_sid=config.account_sid,
            twilio_auth_token=config.auth_token,
        )
        app = create_bot_app(settings, twilio=config)
        async with serving(app) as url:
            stream = url.replace("/v1/session", "/twilio/stream")
            identity = StreamIdentity()
            token = StreamAuth(config.stream_key).issue(identity.call_sid, "closer")
            options = CallOptions(
                params={"bot": "closer", "auth": token},
                identity=identity,
                greeting_wait_secs=20.0,
                wait_secs=3.0,
            )
            # the caller stays on the line (a silent turn) until the bot hangs up
            result = await run_call(
                stream,
                [CallerTurn(audio=np.zeros(8000 * 15, np.int16), expect_reply=False)],
                options,
            )
    assert result.greeting is not None and result.greeting.replied
    assert result.hung_up_by == "bot", (result.hung_up_by, result.errors)
    path = f"/2010-04-01/Accounts/{config.account_sid}/Calls/{identity.call_sid}.json"
    hang_ups = [r for r in fake_twilio.requests if r.path == path]
    assert len(hang_ups) == 1, fake_twilio.requests  # once: the serializer does not hang up too
    assert hang_ups[0].method == "POST" and hang_ups[0].form == {"Status": ["completed"]}


def test_the_serializer_leaves_the_hang_up_to_the_flow_runtime(tmp_path) -> None:
    """With a flow and a call control, only the flow runtime hangs up (after the goodbye);
    without a flow, the serializer does when the pipeline ends (credentials permitting)."""
    from bots.call import CallInfo
    from bots.profile import BotProfile, profile_from_flow
    from bots.twilio.call import twilio_serializer
    from pipeline.flows.call_control import CallControl, TransferResult
    from pipeline.flows.format import load_flow

    class Control(CallControl):
        async def hang_up(self, reason: str = "completed") -> None: ...

        async def transfer(self, to, *, warm=False, whisper=None) -> TransferResult:
            return TransferResult(True)

    path = tmp_path / "closer.yaml"
    path.write_text(FLOW)
    flow_bot, plain_bot = profile_from_flow(load_flow(path)), BotProfile()
    call = CallInfo("CA1", "MZ1")
    creds = Settings(twilio_account_sid="AC1", twilio_auth_token="tok")

    def auto(profile, settings, control):
        return twilio_serializer(call, profile, settings, control)._params.auto_hang_up

    assert auto(flow_bot, creds, Control("CA1")) is False
    assert auto(flow_bot, creds, None) is True
    assert auto(plain_bot, creds, Control("CA1")) is True
    assert auto(plain_bot, Settings(), None) is False
