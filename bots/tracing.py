"""OpenTelemetry traces of calls: one conversation span per call, one span per turn.

Off by default. ``STEPCALL_OTEL_EXPORTER`` turns it on for the bot server process:

- ``console``: spans printed to stdout (debugging);
- ``otlp``: spans sent over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the standard
  OpenTelemetry variables, e.g. ``http://collector:4318``, are read by the exporter itself).

The spans come from Pipecat's tracing (``PipelineWorker(enable_tracing=True)``: a conversation
span whose ``conversation.id`` is the call id, and a ``turn`` span per user/bot exchange with
its voice-to-voice latency); :func:`call_span_attributes` adds the bot and the numbers.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

EXPORTERS = ("none", "console", "otlp")

_enabled = False


def tracing_enabled() -> bool:
    """True once :func:`setup_tracing` installed a tracer provider in this process."""
    return _enabled


def enable_tracing_with(provider: Any) -> None:
    """Use an already configured OpenTelemetry ``TracerProvider`` (embedding apps, tests)."""
    global _enabled
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    _enabled = True


def setup_tracing(exporter: str | None, service_name: str = "stepcall-bots") -> bool:
    """Install the tracer provider for ``exporter`` (one of :data:`EXPORTERS`); False for none.

    Raises ``ValueError`` for an unknown exporter and ``RuntimeError`` when OpenTelemetry is not
    installed (``pip install 'pipecat-ai[tracing]'``).
    """
    global _enabled
    name = (exporter or "none").strip().lower()
    if name not in EXPORTERS:
        raise ValueError(f"STEPCALL_OTEL_EXPORTER must be one of {EXPORTERS}, got {exporter!r}")
    if name == "none":
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as e:
        raise RuntimeError(
            f"OpenTelemetry is not installed ({e}): pip install 'pipecat-ai[tracing]'"
        ) from e
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter: Any = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    enable_tracing_with(provider)
    logger.info(f"OpenTelemetry traces on: exporter {name}")
    return True


def call_span_attributes(call: Any, bot: str) -> dict[str, str]:
    """Attributes of a call's conversation span (no secrets, no audio)."""
    attrs = {"stepcall.call_id": str(call.call_id), "stepcall.bot": bot}
    if getattr(call, "from_number", None):
        attrs["stepcall.from_number"] = str(call.from_number)
    if getattr(call, "to_number", None):
        attrs["stepcall.to_number"] = str(call.to_number)
    return attrs
