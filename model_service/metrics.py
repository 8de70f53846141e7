"""The model service's metrics (``GET /metrics``): sessions, responses, tokens, audio, errors.

One :class:`ServiceMetrics` per app (``model_service/server.py``), updated by the sessions.
"""

from __future__ import annotations

from stepcall.runtime.metrics import Counter, Gauge, Histogram, Registry

TTFA_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class ServiceMetrics:
    """The metrics the model service exports on ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry.register
        self.ready = r(Gauge("stepcall_model_ready", "1 when the backend is loaded"))
        self.sessions_active = r(Gauge("stepcall_model_sessions_active", "Open sessions"))
        self.sessions_total = r(Counter("stepcall_model_sessions_total", "Sessions started"))
        self.sessions_rejected_busy = r(
            Counter(
                "stepcall_model_sessions_rejected_busy_total",
                "Sessions refused because max_sessions was reached",
            )
        )
        self.responses_active = r(
            Gauge("stepcall_model_responses_active", "Responses being generated")
        )
        self.queue_depth = r(
            Gauge(
                "stepcall_model_response_queue_depth",
                "Responses requested that have not produced their first output yet",
            )
        )
        self.responses_total = r(
            Counter("stepcall_model_responses_total", "Finished responses by status", ["status"])
        )
        self.tokens_generated = r(
            Counter("stepcall_model_tokens_generated_total", "Completion tokens generated")
        )
        self.audio_seconds = r(
            Counter("stepcall_model_audio_seconds_total", "Seconds of bot audio sent")
        )
        self.errors_total = r(
            Counter("stepcall_model_errors_total", "Error events sent to clients", ["code"])
        )
        self.turn_checks = r(
            Counter(
                "stepcall_model_turn_checks_total",
                "turn.check verdicts sent, by result (complete, incomplete, error)",
                ["result"],
            )
        )
        self.time_to_first_audio = r(
            Histogram(
                "stepcall_model_time_to_first_audio_seconds",
                "From response.create to the first bot audio sent",
                TTFA_BUCKETS,
            )
        )

    def render(self) -> str:
        """Prometheus text exposition of all metrics."""
        return self.registry.render()
