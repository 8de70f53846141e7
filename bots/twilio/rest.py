"""The Twilio REST client, built the one way the project uses it.

:func:`rest_client` returns the official ``twilio.rest.Client`` on the library's asynchronous
HTTP client (aiohttp), so REST calls (``create_async`` / ``update_async``) never block the event
loop that carries the calls' audio. ``TwilioConfig.api_url`` replaces the API host: the library
builds every REST URL from its ``api`` domain's ``base_url`` (``https://api.twilio.com``), which
is how tests point it at a loopback fake of Twilio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from bots.twilio.config import DEFAULT_API_URL, TwilioConfig

REST_TIMEOUT_SECS = 10.0


class TwilioNotConfiguredError(RuntimeError):
    """Raised when a Twilio REST call is needed but TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN are unset."""


def rest_client(config: TwilioConfig) -> Client:
    """A Twilio REST client on the async HTTP client; create it inside a running event loop.

    Close it with :func:`close_rest_client` (it owns an aiohttp session).
    """
    if not config.has_credentials:
        raise TwilioNotConfiguredError(
            "the Twilio REST API needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
        )
    custom_host = config.api_url != DEFAULT_API_URL
    client = Client(
        config.account_sid,
        config.auth_token,
        http_client=AsyncTwilioHttpClient(timeout=REST_TIMEOUT_SECS),
    )
    if custom_host:
        client.api.base_url = config.api_url
        # TWILIO_EDGE / TWILIO_REGION rewrite the host name: meaningless for a custom host.
        client.edge = None
        client.region = None
    return client


async def close_rest_client(client: Client) -> None:
    """Close the client's HTTP session."""
    close = getattr(client.http_client, "close", None)
    if close is not None:
        await close()


@asynccontextmanager
async def open_rest_client(config: TwilioConfig) -> AsyncIterator[Client]:
    """``async with open_rest_client(config) as client:`` a client closed on exit."""
    client = rest_client(config)
    try:
        yield client
    finally:
        await close_rest_client(client)
