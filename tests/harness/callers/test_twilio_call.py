"""The caller simulator against a scripted Twilio-speaking bot on loopback."""

from __future__ import annotations

import asyncio
import base64
import re
import wave

import numpy as np

from harness.callers import CallerTurn, CallOptions, StreamIdentity, run_call
from harness.callers.twilio_messages import new_sid


def tone(secs: float, freq: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(secs * 8000)) / 8000
    return (amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


FAST = dict(pause_secs=0.1, quiet_secs=0.3, greeting_wait_secs=0.0, wait_secs=3.0,
            hangup_delay_secs=0.05)


def _speech(secs: float = 0.4, freq: float = 300.0) -> CallerTurn:
    # tone + trailing silence, so the caller's speech end is a known frame
    return CallerTurn(text="tone", audio=np.concatenate([tone(secs, freq), np.zeros(800, np.int16)]))


async def test_protocol_messages_are_exactly_twilios(twilio_bot):
    bot = await twilio_bot(reply_secs=0.3)
    opt = CallOptions(params={"bot": "support"}, from_number="+15550001111",
                      to_number="+15550002222", **FAST)
    result = await run_call(bot.url, [_speech(), CallerTurn(dtmf="1#")], opt)
    assert result.ok, result.errors

    msgs = bot.messages
    assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = msgs[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    s = start["start"]
    assert start["streamSid"] == s["streamSid"] == result.stream_sid
    assert re.fullmatch(r"MZ[0-9a-f]{32}", s["streamSid"])
    assert re.fullmatch(r"AC[0-9a-f]{32}", s["accountSid"])
    assert re.fullmatch(r"CA[0-9a-f]{32}", s["callSid"])
    assert s["tracks"] == ["inbound"]
    assert s["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert s["customParameters"] == {"bot": "support", "from_number": "+15550001111",
                                     "to_number": "+15550002222"}

    # every message after `connected` is numbered 1, 2, 3, ... and carries our streamSid
    assert [m["sequenceNumber"] for m in msgs[1:]] == [str(k) for k in range(1, len(msgs))]
    assert all(m["streamSid"] == result.stream_sid for m in msgs[1:])

    media = bot.events("media")
    assert len(media) == result.frames_sent > 20
    for k, m in enumerate(media):
        assert set(m) == {"event", "sequenceNumber", "media", "streamSid"}
        assert m["media"]["track"] == "inbound"
        assert m["media"]["chunk"] == str(k + 1)
        assert m["media"]["timestamp"] == str(20 * k)
        assert len(base64.b64decode(m["media"]["payload"])) == 160

    dtmf = bot.events("dtmf")
    assert [d["dtmf"] for d in dtmf] == [{"track": "inbound_track", "digit": "1"},
                                        {"track": "inbound_track", "digit": "#"}]
    assert msgs[-1]["event"] == "stop"
    assert msgs[-1]["stop"] == {"accountSid": s["accountSid"], "callSid": s["callSid"]}
    assert result.hung_up_by == "caller"

    # both turns (speech, then DTMF ending in #) got a reply on our streamSid
    assert [t.replied for t in result.turns] == [True, True]
    assert result.stream_sids_seen == [result.stream_sid]


async def test_marks_are_echoed_after_their_audio_has_played(twilio_bot):
    bot = await twilio_bot(reply_secs=0.6, reply_delay=0.1)
    result = await run_call(bot.url, [_speech()], CallOptions(**FAST))
    assert result.ok, result.errors
    echoes = bot.events("mark")
    assert [e["mark"] for e in echoes] == [{"name": "reply-1"}]
    mark = result.marks[0]
    assert mark.name == "reply-1" and not mark.cleared
    # the whole 0.6 s reply was sent in one burst; the echo waits for it to play out
    echo_at = bot.recv_times[bot.messages.index(echoes[0])]
    assert 0.55 <= echo_at - bot.reply_sent_at[0] <= 0.75
    assert result.turns[0].bot_played_bytes == result.turns[0].bot_bytes == 0.6 * 8000


async def test_caller_waits_for_the_answer_after_a_holding_line(twilio_bot):
    """A ``holding-N`` mark ("One moment, please.") tells the caller the answer is still to
    come: it waits through a silence longer than ``quiet_secs`` and hears the answer in the
    same turn; without the mark the same silence ends its turn after the holding line."""
    script = dict(reply_secs=0.5, reply_delay=0.1, holding_secs=0.3, holding_gap=1.0)
    turns = [_speech(), _speech(freq=400.0)]

    bot = await twilio_bot(**script)
    result = await run_call(bot.url, turns, CallOptions(**FAST))
    assert result.ok, result.errors
    first = result.turns[0]
    assert first.held
    assert first.bot_audio_secs >= 0.3 + 0.5 - 0.05  # the holding line and the answer
    # the caller spoke again only after the answer had played
    second_start = bot.recv_times[0] + result.turns[1].speech_start_ms / 1000.0
    assert second_start >= bot.reply_sent_at[0] + 0.5 - 0.05

    control = await twilio_bot(**script, holding_mark=False)
    result = await run_call(control.url, turns, CallOptions(**FAST))
    first = result.turns[0]
    assert not first.held
    assert first.bot_audio_secs < 0.3 + 0.1  # the turn ended after the holding line


async def test_pacing_is_real_time_without_drift(twilio_bot):
    bot = await twilio_bot(reply_secs=0.1)
    audio = tone(1.6, 300.0)
    result = await run_call(bot.url, [CallerTurn(audio=audio)], CallOptions(**FAST))
    assert result.ok, result.errors
    times = [t for m, t in zip(bot.messages, bot.recv_times, strict=True) if m["event"] == "media"]
    n = len(times)
    assert n >= 80  # 1.6 s of speech alone is 80 frames
    span = times[-1] - times[0]
    assert abs(span - (n - 1) * 0.02) < 0.06, f"{n} frames took {span:.3f} s"
    # steady: no frame arrives much earlier than its slot on the clock (no bursts)
    slots = np.array(times) - times[0] - 0.02 * np.arange(n)
    assert slots.min() > -0.03
    assert result.max_send_lag_ms < 100


async def test_voice_to_voice_latency_matches_the_bots_delay(twilio_bot):
    delay = 0.5
    # the bot streams silent frames while idle: they must not count as its reply
    bot = await twilio_bot(reply_delay=delay, reply_secs=0.3, idle_silence=True)
    result = await run_call(bot.url, [_speech(), _speech(freq=450)], CallOptions(**FAST))
    assert result.ok, result.errors
    # the bot's real delay, on the shared loop clock (a loaded machine may oversleep a little)
    actual = [(sent - heard) * 1000 for sent, heard in
              zip(bot.reply_sent_at, bot.voiced_end_at, strict=True)]
    assert len(actual) == 2 and all(a >= delay * 1000 for a in actual)
    for t, a in zip(result.turns, actual, strict=True):
        assert t.latency_ms is not None
        assert abs(t.latency_ms - a) <= 60, (t.latency_ms, a)
        assert abs(t.latency_ms - delay * 1000) <= 200, t.latency_ms
        assert t.bot_bytes > 0.3 * 8000  # the reply plus idle silence


async def test_clear_discards_the_playout_buffer_and_echoes_pending_marks(twilio_bot):
    # 3 s of reply sent at once, then `clear` 0.4 s later: only ~0.4 s may be heard
    bot = await twilio_bot(reply_secs=3.0, reply_delay=0.1, clear_after=0.4)
    result = await run_call(bot.url, [_speech()], CallOptions(**FAST))
    assert result.ok, result.errors
    turn = result.turns[0]
    assert turn.bot_bytes == 3 * 8000 and turn.clears == 1
    assert 0.3 * 8000 <= turn.bot_played_bytes <= 0.6 * 8000
    assert result.marks[0].cleared and result.marks[0].echoed_ms is not None
    assert [e["mark"]["name"] for e in bot.events("mark")] == ["reply-1"]
    # the call ended well before the 3 s of audio could have played out
    assert result.duration_ms < 0.4 * 1000 + 3000


async def test_barge_in_starts_next_turn_while_bot_talks(twilio_bot):
    bot = await twilio_bot(reply_secs=1.2, reply_delay=0.1, realtime=True,
                                     barge_in_clear=True)
    opt = CallOptions(barge_in_after=0.4, **FAST)
    result = await run_call(bot.url, [_speech(), _speech(freq=450)], opt)
    assert result.ok, result.errors
    first, second = result.turns
    assert first.barged_in
    gap = second.speech_start_ms - first.first_bot_media_ms
    assert 380 <= gap <= 520, gap
    assert second.clears == 1  # the bot cleared its reply when the caller spoke over it
    assert first.bot_bytes < 1.2 * 8000  # the first reply was cut short


async def test_recording_is_stereo_and_aligned_on_the_call_clock(twilio_bot, tmp_path):
    bot = await twilio_bot(reply_delay=0.3, reply_secs=0.5)
    out = tmp_path / "call.wav"
    result = await run_call(bot.url, [_speech(0.5)], CallOptions(record_path=out, **FAST))
    assert result.ok, result.errors
    with wave.open(str(out), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert pcm.shape[0] == result.frames_sent * 160
    left, right = pcm[:, 0].astype(float), pcm[:, 1].astype(float)

    def active(x: np.ndarray) -> np.ndarray:
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)
        return np.nonzero(np.sqrt((frames**2).mean(axis=1)) > 200)[0]

    caller, heard = active(left), active(right)
    turn = result.turns[0]
    assert len(caller) == 25 and len(heard) == 25  # 0.5 s each, whole frames
    # caller speech lies on the ticks it was sent; bot audio starts at the first tick after receipt
    assert abs(caller[-1] * 20 - turn.speech_end_ms) <= 25
    assert 0 <= heard[0] * 20 - turn.first_bot_media_ms <= 45
    assert heard[0] > caller[-1]
    # right channel is the bot's 1 kHz tone, left the caller's 300 Hz tone
    spec = np.abs(np.fft.rfft(right[heard[0] * 160:(heard[0] + 10) * 160]))
    assert abs(np.argmax(spec) * 8000 / 1600 - 1000) < 10


async def test_unanswered_turn_and_wrong_stream_sid_fail_the_call(twilio_bot):
    silent = await twilio_bot(reply_delay=10.0)
    opt = CallOptions(**{**FAST, "wait_secs": 0.3})
    result = await run_call(silent.url, [_speech()], opt)
    assert not result.ok and result.unanswered_turns == [1] and result.turns[0].timed_out

    wrong = await twilio_bot(stream_sid=new_sid("MZ"), reply_secs=0.2)
    ident = StreamIdentity()
    result = await run_call(wrong.url, [_speech()], CallOptions(identity=ident, **FAST))
    assert result.turns[0].replied and not result.ok
    assert result.stream_sids_seen and result.stream_sids_seen[0] != ident.stream_sid
    assert any("streamSid" in e for e in result.errors)


async def test_bot_hang_up_skips_remaining_turns(twilio_bot):
    bot = await twilio_bot(reply_secs=0.2, hang_up_after_replies=1)
    result = await run_call(bot.url, [_speech(), _speech(), _speech()], CallOptions(**FAST))
    assert result.hung_up_by == "bot" and result.close_code == 1000
    assert result.turns[0].replied
    assert result.turns[2].skipped
    assert not bot.events("stop")


async def test_greeting_is_heard_before_the_first_turn(twilio_bot):
    bot = await twilio_bot(greeting_secs=0.4, reply_secs=0.2)
    opt = CallOptions(**{**FAST, "greeting_wait_secs": 1.0})
    result = await run_call(bot.url, [_speech()], opt)
    assert result.ok, result.errors
    assert result.greeting is not None and result.greeting.bot_bytes == 0.4 * 8000
    # turn 1 began after the greeting had played and gone quiet
    assert result.turns[0].speech_start_ms > result.greeting.first_bot_media_ms + 400 + 300


async def test_connection_refused_is_reported_not_raised():
    result = await run_call("ws://127.0.0.1:9/none", [_speech()], CallOptions(connect_timeout=1))
    assert not result.ok and "could not connect" in result.errors[0]
    assert result.turns[0].skipped
    await asyncio.sleep(0)
