"""``stepcall call`` end to end against the scripted bot: synthesised speech, JSON, WAV, exit code."""

from __future__ import annotations

import asyncio
import json
import wave

import pytest

from harness.callers.cli import main
from stepcall.audio.speech import available_engines


@pytest.mark.skipif(not available_engines(), reason="no TTS engine (CI: apt-get install -y flite)")
async def test_cli_call_with_synthesised_speech(twilio_bot, tmp_path, capsys):
    # pauses inside real speech must not look like the end of the caller's turn
    bot = await twilio_bot(reply_delay=0.2, reply_secs=0.4, end_silence_frames=25)
    out = tmp_path / "call.wav"
    argv = [bot.url, "--say", "Hello, I need help with my order.", "--dtmf", "4#",
            "--param", "bot=support", "--from", "+15550001111", "--pause", "0.1",
            "--quiet", "0.3", "--greeting-wait", "0", "--wait", "3", "--out", str(out), "--json"]
    rc = await asyncio.to_thread(main, argv)
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0, summary["errors"]
    assert summary["ok"] and summary["stream_sid_match"]
    assert [t["kind"] for t in summary["turns"]] == ["speech", "dtmf"]
    assert all(t["replied"] and t["latency_ms"] is not None for t in summary["turns"])
    assert summary["bot_bytes_total"] == 2 * 0.4 * 8000
    assert summary["turns"][0]["bot_bytes_during_speech"] == 0
    assert summary["marks"][0]["name"] == "reply-1"
    speech_turn = summary["turns"][0]
    assert speech_turn["speech_end_ms"] - speech_turn["speech_start_ms"] > 1000  # real speech
    start = bot.events("start")[0]["start"]
    assert start["customParameters"] == {"bot": "support", "from_number": "+15550001111"}
    with wave.open(str(out), "rb") as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000


async def test_cli_exits_non_zero_when_the_bot_never_answers(twilio_bot, capsys):
    bot = await twilio_bot(reply_delay=30.0)
    argv = [bot.url, "--dtmf", "1#", "--pause", "0", "--wait", "0.3", "--greeting-wait", "0"]
    rc = await asyncio.to_thread(main, argv)
    table = capsys.readouterr().out
    assert rc == 1
    assert "no reply" in table and "FAILED" in table


def test_cli_usage_errors(capsys):
    assert main(["ws://127.0.0.1:1/x"]) == 2
    assert "at least one --say" in capsys.readouterr().err
    assert main(["http://x", "--dtmf", "1"]) == 2
    assert "ws://" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ws://x", "--say", "hi", "--param", "novalue"])
