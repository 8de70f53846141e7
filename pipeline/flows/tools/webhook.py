"""HTTP webhook tools: the arguments go to a URL, the response body comes back to the model.

Each attempt has its own timeout; timeouts, connection errors and 5xx answers are retried
(``retries`` times, with a short back-off); a 4xx answer is final. The call runs as an asyncio
task of the LLM service, so the call's audio keeps flowing while a slow endpoint thinks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
from loguru import logger

from pipeline.flows.format.model import ToolSpec

#: Seconds to wait before retry n (n = 1, 2, ...): RETRY_BACKOFF_SECS * n.
RETRY_BACKOFF_SECS = 0.2
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def webhook_deadline(spec: ToolSpec) -> float:
    """Upper bound for one webhook call with all its retries (the function-call timeout)."""
    backoff = sum(RETRY_BACKOFF_SECS * n for n in range(1, spec.retries + 1))
    return spec.timeout_secs * (spec.retries + 1) + backoff + 1.0


def expand_env(value: str, environ: dict[str, str] | None = None) -> str:
    """Replace ``${NAME}`` with the environment variable; a missing one is a ``KeyError``."""
    env = os.environ if environ is None else environ

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise KeyError(f"environment variable {name} is not set")
        return env[name]

    return _ENV_REF.sub(sub, value)


@dataclass
class WebhookAttempt:
    """One HTTP attempt, for logs and tests."""

    number: int
    outcome: str  # "ok", "timeout", "http 503", "error: ..."


class WebhookTool:
    """Calls one webhook tool; ``await tool(arguments)`` returns the result for the model."""

    def __init__(self, spec: ToolSpec, session: aiohttp.ClientSession | None = None) -> None:
        if spec.kind != "webhook" or not spec.url:
            raise ValueError(f"tool '{spec.name}' is not a webhook tool with a url")
        self.spec = spec
        self._session = session
        self._owns_session = session is None
        self.attempts: list[WebhookAttempt] = []

    async def close(self) -> None:
        """Close the HTTP session this tool created (if any)."""
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        for name, value in self.spec.headers.items():
            try:
                headers[name] = expand_env(value)
            except KeyError as e:
                raise RuntimeError(
                    f"header {name} of tool '{self.spec.name}': {e.args[0]}"
                ) from None
        return headers

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        """POST/PUT/... the arguments (query string for GET) and return the parsed answer.

        Failures come back as ``{"error": ...}`` so the model can tell the caller.
        """
        spec = self.spec
        try:
            headers = self._headers()
        except RuntimeError as e:
            return {"error": str(e)}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        attempts = spec.retries + 1
        last = "no attempt"
        for n in range(1, attempts + 1):
            if n > 1:
                await asyncio.sleep(RETRY_BACKOFF_SECS * (n - 1))
            try:
                status, body = await self._attempt(arguments, headers)
            except TimeoutError:
                last = f"timed out after {spec.timeout_secs:g} s"
                self.attempts.append(WebhookAttempt(n, "timeout"))
            except aiohttp.ClientError as e:
                last = f"connection failed: {e}"
                self.attempts.append(WebhookAttempt(n, f"error: {e}"))
            else:
                self.attempts.append(WebhookAttempt(n, "ok" if status < 400 else f"http {status}"))
                if status < 400:
                    return body
                last = f"HTTP {status}: {_short(body)}"
                if status < 500:
                    break  # the request itself is wrong: retrying will not help
            logger.warning(f"webhook {spec.name} attempt {n}/{attempts}: {last}")
        return {"error": f"{spec.name} failed: {last}"}

    async def _attempt(self, arguments: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
        assert self._session is not None and self.spec.url is not None
        method = self.spec.method.upper()
        kwargs: dict[str, Any] = {"headers": headers}
        if method == "GET":
            kwargs["params"] = {
                k: v if isinstance(v, str) else json.dumps(v) for k, v in arguments.items()
            }
        else:
            kwargs["json"] = arguments
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout_secs)
        async with asyncio.timeout(self.spec.timeout_secs):
            async with self._session.request(
                method, self.spec.url, timeout=timeout, **kwargs
            ) as response:
                text = await response.text()
                try:
                    body: Any = json.loads(text) if text else {}
                except ValueError:
                    body = text
                return response.status, body


def _short(body: Any, limit: int = 200) -> str:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."
