"""SpokenLines: a bot's verbatim lines rendered once by content, shared while they render, retried
while the model service loads, never cached when they fail.

The renderer here stands in for the model service's ``/v1/speech`` (the edge of the bot
server); the real endpoint is exercised in tests/pipeline/test_call_greeting.py."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.step_audio2.spoken_lines import (
    SpeechUnavailable,
    SpokenLine,
    SpokenLines,
    speech_url,
)


class Renderer:
    """Answers each render with the line's words as bytes, after ``delay``; the first
    ``loading`` calls fail as a loading model service does (503: retry)."""

    def __init__(self, delay: float = 0.0, loading: int = 0, refuse: bool = False) -> None:
        self.delay, self.loading, self.refuse = delay, loading, refuse
        self.calls: list[SpokenLine] = []

    async def render(self, line: SpokenLine) -> bytes:
        self.calls.append(line)
        await asyncio.sleep(self.delay)
        if self.refuse:
            raise SpeechUnavailable("501: this backend cannot render speech", retry=False)
        if self.loading > 0:
            self.loading -= 1
            raise SpeechUnavailable("503 loading", retry=True)
        words = f"{line.text}|{line.voice}|{line.sample_rate}".encode()
        return words + b"\0" * (len(words) % 2)


def test_speech_url_follows_the_session_url() -> None:
    assert speech_url("ws://127.0.0.1:8090/v1/session") == "http://127.0.0.1:8090/v1/speech"
    assert speech_url("wss://gpu.example:443/v1/session?x=1") == "https://gpu.example:443/v1/speech"


def test_the_key_is_the_content() -> None:
    a = SpokenLine("Hello there.", "default_female", None, 8000)
    assert a.key == SpokenLine(" Hello there. ", "default_female", None, 8000).key
    assert a.key != SpokenLine("Hello there!", "default_female", None, 8000).key
    assert a.key != SpokenLine("Hello there.", "default_male", None, 8000).key
    assert a.key != SpokenLine("Hello there.", "default_female", "calm", 8000).key
    assert a.key != SpokenLine("Hello there.", "default_female", None, 16000).key


async def test_concurrent_calls_share_one_render_and_later_ones_hit_memory() -> None:
    renderer = Renderer(delay=0.2)
    lines = SpokenLines(renderer)
    line = SpokenLine("Hello, this is Mia.", "v", None, 8000)
    got = await asyncio.gather(*(lines.get(line) for _ in range(5)))
    assert len(set(got)) == 1 and got[0].startswith(b"Hello, this is Mia.|v|8000")
    assert len(renderer.calls) == 1
    assert await lines.get(line, wait_secs=0) == got[0]  # memory: no wait, no render
    other = SpokenLine("Hello, this is Mia.", "v", None, 16000)
    assert (await lines.get(other)).startswith(b"Hello, this is Mia.|v|16000")
    assert len(renderer.calls) == 2


async def test_prerender_waits_for_a_loading_model_service() -> None:
    renderer = Renderer(loading=3)
    lines = SpokenLines(renderer, retry_secs=0.01)
    line = SpokenLine("Welcome.", None, None, 8000)
    (task,) = lines.prerender([line, line])  # one task per distinct line
    assert (await task).startswith(b"Welcome.")
    assert len(renderer.calls) == 4 and lines.cached(line) is not None


async def test_a_call_does_not_wait_past_its_bound_and_the_render_goes_on() -> None:
    renderer = Renderer(delay=0.3)
    lines = SpokenLines(renderer)
    line = SpokenLine("Slow line.", None, None, 8000)
    assert await lines.get(line, wait_secs=0.05) is None
    await asyncio.sleep(0.4)
    assert lines.cached(line) is not None and len(renderer.calls) == 1


async def test_a_refusal_is_remembered_and_a_call_does_not_wait_on_it() -> None:
    renderer = Renderer(refuse=True)
    lines = SpokenLines(renderer)
    line = SpokenLine("Hi.", None, None, 8000)
    assert await lines.get(line) is None
    assert "cannot render" in (lines.refused(line) or "")
    assert await lines.get(line) is None and len(renderer.calls) == 1


async def test_a_failed_impatient_render_is_not_cached() -> None:
    renderer = Renderer(loading=1)
    lines = SpokenLines(renderer, retry_secs=0.01)
    line = SpokenLine("Again.", None, None, 8000)
    assert await lines.get(line) is None  # a call does not retry a loading service
    assert (await lines.get(line)).startswith(b"Again.")
    assert len(renderer.calls) == 2


@pytest.mark.parametrize("status, retry", [(503, True), (500, True), (501, False), (400, False)])
async def test_model_service_answers_map_to_retry_or_not(status, retry, unused_tcp_port) -> None:
    from aiohttp import web

    from pipeline.step_audio2.spoken_lines import ModelServiceSpeech

    async def speech(request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == "Bearer t0k"
        body = await request.json()
        assert body == {"text": "Hi.", "voice": "v", "style": None, "sample_rate": 8000}
        return web.json_response({"error": "no"}, status=status)

    app = web.Application()
    app.router.add_post("/v1/speech", speech)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    try:
        client = ModelServiceSpeech(f"ws://127.0.0.1:{unused_tcp_port}/v1/session", "t0k")
        assert "t0k" not in repr(client)
        with pytest.raises(SpeechUnavailable) as info:
            await client.render(SpokenLine("Hi.", "v", None, 8000))
        assert info.value.retry is retry and str(status) in str(info.value)
    finally:
        await runner.cleanup()
