"""The model service's metrics (``GET /metrics``): sessions, responses, tokens, audio, errors.

One :class:`ServiceMetrics` per app (``model_service/server.py``), updated by the sessions, on a
prometheus-client ``CollectorRegistry`` of its own (served by
``stepcall.runtime.metrics.metrics_response``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFA_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class ServiceMetrics:
    """The metrics the model service exports on ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.ready = Gauge("stepcall_model_ready", "1 when the backend is loaded", registry=r)
        self.sessions_active = Gauge("stepcall_model_sessions_active", "Open sessions", registry=r)
        self.sessions_total = Counter(
            "stepcall_model_sessions_total", "Sessions started", registry=r
        )
        self.sessions_rejected_busy = Counter(
            "stepcall_model_sessions_rejected_busy_total",
            "Sessions refused because max_sessions was reached",
            registry=r,
        )
        self.responses_active = Gauge(
            "stepcall_model_responses_active", "Responses being generated", registry=r
        )
        self.queue_depth = Gauge(
            "stepcall_model_response_queue_depth",
            "Responses requested that have not produced their first output yet",
            registry=r,
        )
        self.responses_total = Counter(
            "stepcall_model_responses_total", "Finished responses by status", ["status"], registry=r
        )
        self.tokens_generated = Counter(
            "stepcall_model_tokens_generated_total", "Completion tokens generated", registry=r
        )
        self.audio_seconds = Counter(
            "stepcall_model_audio_seconds_total", "Seconds of bot audio sent", registry=r
        )
        self.errors_total = Counter(
            "stepcall_model_errors_total", "Error events sent to clients", ["code"], registry=r
        )
        self.turn_checks = Counter(
            "stepcall_model_turn_checks_total",
            "turn.check verdicts sent, by result (complete, incomplete, error)",
            ["result"],
            registry=r,
        )
        self.speech_renders = Counter(
            "stepcall_model_speech_renders_total",
            "POST /v1/speech answers with audio, by cache (hit: cached or joined a render "
            "already running; miss: rendered for this request)",
            ["cache"],
            registry=r,
        )
        self.speech_errors = Counter(
            "stepcall_model_speech_errors_total",
            "POST /v1/speech refusals and failures by HTTP status (400, 500, 501)",
            ["status"],
            registry=r,
        )
        self.time_to_first_audio = Histogram(
            "stepcall_model_time_to_first_audio_seconds",
            "From response.create to the first bot audio sent",
            buckets=TTFA_BUCKETS,
            registry=r,
        )
