"""The pieces of the WebRTC path: ICE server parsing, the per-IP offer limit, settings, and the
transcript relay (run in a real pipecat pipeline with ``pipecat.tests.utils.run_test``)."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputTransportMessageUrgentFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.tests.utils import run_test
from pipecat.utils.text.base_text_aggregator import TextType

from bots.webrtc.call import WebRTCCallControl
from bots.webrtc.config import (
    OfferRateLimiter,
    WebRTCConfig,
    ice_servers_for_browser,
    parse_ice_servers,
)
from bots.webrtc.transcript import TranscriptRelay, widget_message
from stepcall.settings import Settings


def test_ice_servers_from_comma_list_and_json():
    servers = parse_ice_servers("stun:stun.l.google.com:19302, turn:turn.example.org:3478")
    assert [s.urls for s in servers] == [
        "stun:stun.l.google.com:19302",
        "turn:turn.example.org:3478",
    ]
    servers = parse_ice_servers(
        '[{"urls": "turns:t.example.org:443", "username": "bot", "credential": "s3cret"}, "stun:s.example.org"]'
    )
    assert servers[0].username == "bot" and servers[0].credential == "s3cret"
    assert ice_servers_for_browser(servers) == [
        {"urls": "turns:t.example.org:443", "username": "bot", "credential": "s3cret"},
        {"urls": "stun:s.example.org"},
    ]
    assert parse_ice_servers(None) == [] and parse_ice_servers("  ") == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("http://stun.example.org", "entry 0 must be a stun:"),
        ("[1]", 'entry 0 needs "urls"'),
        ('[{"urls": "turn:x", "password": "p"}]', "unknown keys ['password']"),
        ('[{"urls": []}]', "entry 0 has no urls"),
        ("[not json", "not valid JSON"),
        ('{"urls": "stun:x"}', "entry 0 must be a stun:"),  # not a list: read as one comma entry
    ],
)
def test_bad_ice_servers_name_the_entry(raw, message):
    with pytest.raises(ValueError, match="STEPCALL_ICE_SERVERS") as e:
        parse_ice_servers(raw)
    assert message in str(e.value)


def test_config_reads_environment(monkeypatch):
    monkeypatch.setenv("STEPCALL_ICE_SERVERS", "stun:stun.example.org")
    monkeypatch.setenv("STEPCALL_WEBRTC_OFFERS_PER_MINUTE", "3")
    monkeypatch.setenv("STEPCALL_WIDGET_ORIGINS", "https://a.example, https://b.example/")
    config = WebRTCConfig.from_settings(Settings.from_env())
    assert [s.urls for s in config.ice_servers] == ["stun:stun.example.org"]
    assert config.offers_per_minute == 3
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    monkeypatch.setenv("STEPCALL_WEBRTC_OFFERS_PER_MINUTE", "lots")
    with pytest.raises(ValueError, match="STEPCALL_WEBRTC_OFFERS_PER_MINUTE"):
        Settings.from_env()


def test_offer_limit_is_per_ip_and_slides():
    now = [1000.0]
    limiter = OfferRateLimiter(2, window_secs=60, clock=lambda: now[0])
    assert limiter.check("1.1.1.1") == 0 and limiter.check("1.1.1.1") == 0
    retry = limiter.check("1.1.1.1")
    assert 59 < retry <= 60
    assert limiter.check("2.2.2.2") == 0  # another address has its own budget
    now[0] += 60.5
    assert limiter.check("1.1.1.1") == 0
    assert OfferRateLimiter(0).check("x") == 0  # 0 disables the limit


def test_widget_message_shape():
    assert widget_message("bot-tts-text", {"text": "hi"}) == {
        "label": "rtvi-ai",
        "type": "bot-tts-text",
        "data": {"text": "hi"},
    }
    with pytest.raises(ValueError):
        widget_message("")


def _messages(frames) -> list[dict]:
    return [f.message for f in frames if isinstance(f, OutputTransportMessageUrgentFrame)]


async def test_relay_sends_spoken_text_once_and_passes_frames_on():
    spoken = TTSTextFrame("Hello there.", text_type=TextType.SENTENCE)
    frames = [
        UserStartedSpeakingFrame(),
        LLMFullResponseStartFrame(),
        LLMTextFrame("Hello there."),  # the same text as TTSTextFrame: not sent twice
        spoken,
        LLMFullResponseEndFrame(),
    ]
    down, _up = await run_test(TranscriptRelay(), frames_to_send=frames)
    assert [type(f) for f in down if not isinstance(f, OutputTransportMessageUrgentFrame)] == [
        UserStartedSpeakingFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSTextFrame,
        LLMFullResponseEndFrame,
    ]
    assert [(m["type"], m["data"]) for m in _messages(down)] == [
        ("user-started-speaking", {}),
        ("bot-llm-started", {}),
        ("bot-tts-text", {"text": "Hello there."}),
        ("bot-llm-stopped", {}),
    ]


async def test_relay_reports_upstream_bot_speaking_downstream():
    down, up = await run_test(
        TranscriptRelay(),
        frames_to_send=[BotStartedSpeakingFrame()],
        frames_to_send_direction=FrameDirection.UPSTREAM,
    )
    assert [type(f) for f in up] == [BotStartedSpeakingFrame]
    assert [m["type"] for m in _messages(down)] == ["bot-started-speaking"]


async def test_call_control_hangs_up_and_refuses_transfers():
    ended: list[str] = []

    async def end(reason: str) -> None:
        ended.append(reason)

    control = WebRTCCallControl("web-1", end)
    await control.hang_up("goodbye said")
    result = await control.transfer("+15550100")
    assert ended == ["goodbye said"]
    assert not result.ok and "browser call" in result.detail
    assert control.events == ["hang_up:goodbye said", "transfer_refused:+15550100"]
