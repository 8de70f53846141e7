"""Webhook tools against a real HTTP server on loopback: timeouts, retries, methods, headers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from pipeline.flows.format.model import ToolSpec
from pipeline.flows.tools.webhook import WebhookTool, expand_env, webhook_deadline


class Endpoint:
    """A loopback HTTP server whose answers the test scripts per request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[float, int, Any]] = []  # (delay, status, body) per request

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.requests.append(
            {
                "method": request.method,
                "query": dict(request.query),
                "json": body,
                "auth": request.headers.get("Authorization"),
            }
        )
        delay, status, answer = self.script.pop(0) if self.script else (0.0, 200, {"ok": True})
        await asyncio.sleep(delay)
        if isinstance(answer, str):
            return web.Response(status=status, text=answer)
        return web.json_response(answer, status=status)


@pytest.fixture
async def endpoint():
    ep = Endpoint()
    app = web.Application()
    app.router.add_route("*", "/hook", ep.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield ep, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


def tool(url: str, **kw: Any) -> ToolSpec:
    fields: dict[str, Any] = {
        "name": "lookup",
        "kind": "webhook",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {}},
        "url": url,
        "timeout_secs": 0.3,
    }
    fields.update(kw)
    return ToolSpec(**fields)


async def test_post_sends_json_and_returns_the_parsed_body(endpoint) -> None:
    ep, url = endpoint
    ep.script = [(0.0, 200, {"in_stock": True})]
    hook = WebhookTool(tool(url))
    try:
        assert await hook({"item": "pepperoni", "n": 2}) == {"in_stock": True}
    finally:
        await hook.close()
    assert ep.requests == [
        {"method": "POST", "query": {}, "json": {"item": "pepperoni", "n": 2}, "auth": None}
    ]


async def test_timeout_then_retry_succeeds(endpoint) -> None:
    ep, url = endpoint
    ep.script = [(1.0, 200, {"late": True}), (0.0, 200, {"fresh": True})]
    hook = WebhookTool(tool(url, retries=1))
    try:
        assert await hook({}) == {"fresh": True}
    finally:
        await hook.close()
    assert [a.outcome for a in hook.attempts] == ["timeout", "ok"]


async def test_server_errors_retry_until_exhausted(endpoint) -> None:
    ep, url = endpoint
    ep.script = [(0.0, 503, "busy")] * 3
    hook = WebhookTool(tool(url, retries=2))
    try:
        result = await hook({})
    finally:
        await hook.close()
    assert result == {"error": "lookup failed: HTTP 503: busy"}
    assert len(ep.requests) == 3


async def test_client_errors_are_not_retried(endpoint) -> None:
    ep, url = endpoint
    ep.script = [(0.0, 404, {"detail": "no such item"})]
    hook = WebhookTool(tool(url, retries=3))
    try:
        result = await hook({})
    finally:
        await hook.close()
    assert result == {"error": 'lookup failed: HTTP 404: {"detail": "no such item"}'}
    assert len(ep.requests) == 1


async def test_get_uses_the_query_string_and_env_headers(endpoint, monkeypatch) -> None:
    ep, url = endpoint
    monkeypatch.setenv("HOOK_TOKEN", "s3cret")
    hook = WebhookTool(tool(url, method="GET", headers={"Authorization": "Bearer ${HOOK_TOKEN}"}))
    try:
        assert await hook({"city": "Paris", "days": 2}) == {"ok": True}
    finally:
        await hook.close()
    assert ep.requests[0]["query"] == {"city": "Paris", "days": "2"}
    assert ep.requests[0]["auth"] == "Bearer s3cret"
    assert ep.requests[0]["json"] is None


async def test_missing_env_var_and_unreachable_host() -> None:
    hook = WebhookTool(tool("http://127.0.0.1:9/hook", headers={"X-Key": "${NOT_SET_ANYWHERE}"}))
    assert await hook({}) == {
        "error": "header X-Key of tool 'lookup': environment variable NOT_SET_ANYWHERE is not set"
    }
    closed = WebhookTool(tool("http://127.0.0.1:9/hook"))  # port 9: nothing listens
    try:
        result = await closed({})
    finally:
        await closed.close()
    assert result["error"].startswith("lookup failed: connection failed:")


def test_deadline_and_env_expansion() -> None:
    spec = tool("http://x/hook", timeout_secs=2.0, retries=2)
    assert webhook_deadline(spec) == pytest.approx(2.0 * 3 + 0.2 + 0.4 + 1.0)
    assert expand_env("a ${X} b", {"X": "1"}) == "a 1 b"
    with pytest.raises(KeyError, match="environment variable Y is not set"):
        expand_env("${Y}", {})
