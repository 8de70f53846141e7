"""The model service refuses sessions without its bearer token (close 4401), checked before any
message is read; the right token (header or ``?token=``) gets a session."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from model_service.server import create_app, serving
from stepcall import protocol as p

TOKEN = "model-token-123"
START = json.dumps({"type": "session.start", "protocol": 1, "input_sample_rate": 16000,
                    "output_sample_rate": 16000})


async def _close_code(url: str, **kw) -> int:
    async with connect(url, **kw) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.send(START)
            while True:
                await ws.recv()
        return ws.close_code


async def test_missing_or_wrong_token_is_refused_and_the_right_one_admitted(demo_backend):
    app = create_app(demo_backend, token=TOKEN, max_sessions=2)
    async with serving(app) as url:
        assert await _close_code(url) == p.CLOSE_UNAUTHORIZED
        assert await _close_code(url + "?token=wrong") == p.CLOSE_UNAUTHORIZED
        bearer = {"additional_headers": {"Authorization": "Bearer wrong"}}
        assert await _close_code(url, **bearer) == p.CLOSE_UNAUTHORIZED
        assert app.state.service.sessions == {}  # no refused peer got a session
        ok = {"additional_headers": {"Authorization": f"Bearer {TOKEN}"}}
        async with connect(url, **ok) as ws:
            await ws.send(START)
            started = p.parse_server_event(await ws.recv())
            assert isinstance(started, p.SessionStarted)
        async with connect(url + f"?token={TOKEN}") as ws:
            await ws.send(START)
            assert isinstance(p.parse_server_event(await ws.recv()), p.SessionStarted)
