"""stepcall settings: the one place where environment variables are read.

Every setting has a default that works on a laptop; production overrides them with env vars.
Secrets (tokens, Twilio credentials) come only from the environment and are never logged:
``Settings.redacted()`` is what may be printed.

| env var | default | meaning |
|---|---|---|
| STEPCALL_HOST | 127.0.0.1 | bot server bind address |
| STEPCALL_PORT | 8080 | bot server port |
| STEPCALL_PUBLIC_URL | (http://HOST:PORT) | public base URL (Twilio webhook, widget) |
| STEPCALL_FLOWS_DIR | flows | folder of YAML flows |
| STEPCALL_DEFAULT_FLOW | (first flow) | flow used when a call names none |
| STEPCALL_MODEL_URL | ws://127.0.0.1:8090/v1/session | model service session endpoint |
| STEPCALL_MODEL_TOKEN | (none) | bearer token shared by bot servers and the model service |
| STEPCALL_MODEL_HOST | 127.0.0.1 | model service bind address |
| STEPCALL_MODEL_PORT | 8090 | model service port |
| STEPCALL_MODEL_PATH | stepfun-ai/Step-Audio-2-mini | checkpoint dir or hub id |
| STEPCALL_MODEL_BACKEND | auto | reference, vllm, cpu or auto |
| STEPCALL_MODEL_DEVICE | auto | cpu, cuda or auto |
| STEPCALL_MODEL_DTYPE | auto | float32, bfloat16, float16 or auto |
| STEPCALL_VLLM_GPU_MEMORY_UTILIZATION | 0.6 | vllm backend on a GPU: the share of GPU memory vLLM takes (the rest: token2wav) |
| STEPCALL_VLLM_CPU_KV_CACHE_GIB | 1 | vllm backend on CPU: KV cache size in whole GiB (vLLM's ``VLLM_CPU_KVCACHE_SPACE``) |
| STEPCALL_VLLM_MAX_NUM_SEQS | 32 | vllm backend: sequences decoded in one batch |
| STEPCALL_VLLM_MAX_MODEL_LEN | (the checkpoint's) | vllm backend: longest prompt + reply in tokens |
| STEPCALL_VLLM_MAX_AUDIO_CHUNKS | 64 | vllm backend: audio chunks (<= 25 s each) one prompt may carry; older turns are trimmed to fit |
| STEPCALL_VLLM_ENFORCE_EAGER | 0 | vllm backend: 1 = no torch.compile / CUDA graphs (faster start, slower decode) |
| STEPCALL_MAX_SESSIONS | 32 | model service admission limit |
| STEPCALL_MAX_CALLS | 100 | bot server concurrent-call limit |
| STEPCALL_MAX_CALL_SECS | 3600 | longest phone call; a longer media stream is ended (0 = no limit) |
| STEPCALL_STREAM_IDLE_SECS | 20 | a Twilio media stream silent this long is dead and ended |
| STEPCALL_WS_MAX_MESSAGE_BYTES | 65536 | largest WebSocket frame the bot server accepts |
| STEPCALL_MAX_REQUEST_BYTES | 1048576 | largest HTTP request body the bot server accepts (413 beyond) |
| STEPCALL_MODEL_IDLE_SECS | 900 | model service: a session with no message this long is closed |
| STEPCALL_VAD_STOP_SECS | 0.2 | Silero VAD stop time |
| STEPCALL_TURN_MODEL_THREADS | 0 (half the cores, at least 1) | bot server threads running Smart Turn for all calls |
| STEPCALL_TURN_MODEL_NICE | 10 | how much lower those threads' scheduling priority is (0-19): call audio comes first |
| STEPCALL_TURN_MODEL_AT | service | where a call's Smart Turn runs: service (the model service's, when it offers one; else the bot's) or bot |
| STEPCALL_MODEL_TURN_MODEL | smart-turn | model service: the turn model it runs for ``turn.check`` (smart-turn or none) |
| STEPCALL_MODEL_TURN_THREADS | 0 (half the cores, at least 1) | model service threads running that turn model for all sessions |
| STEPCALL_VAD_RUNTIME | numpy | how Silero VAD's network runs: numpy (stepcall/audio/silero.py, less CPU per call) or onnxruntime |
| STEPCALL_HOLDING_LINE_SECS | 2.0 | a response with no bot audio this long: the caller hears a short pre-rendered holding line ("One moment, please.") once (0 = off) |
| STEPCALL_TWILIO_AUDIO_LEAD_MS | 300 | bot audio kept queued at Twilio ahead of the caller's playout (covers server stalls; 100 = Pipecat's pacing) |
| STEPCALL_LOG_LEVEL | INFO | log level |
| TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN | (none) | Twilio credentials (REST API, signature validation) |
| TWILIO_FROM_NUMBER | (none) | caller ID of outbound calls when the flow lists no phone number |
| STEPCALL_TWILIO_API_URL | https://api.twilio.com | Twilio REST API base URL (a local fake in tests) |
| STEPCALL_STREAM_SECRET | (TWILIO_AUTH_TOKEN) | key of the per-call media-stream tokens |
| STEPCALL_API_TOKEN | (none) | bearer token of ``POST /calls/outbound``; unset = endpoint off |
| STEPCALL_ICE_SERVERS | (none) | widget ICE servers: JSON list or comma list of stun:/turn: URLs |
| STEPCALL_WEBRTC_OFFERS_PER_MINUTE | 10 | new widget calls per client IP per minute |
| STEPCALL_WIDGET_ORIGINS | * | comma list of web origins allowed to embed the widget |
| STEPCALL_WIDGET_SECRET | (none) | key of the widget's call tokens; unset = ``/webrtc/offer`` open |
| STEPCALL_WIDGET_TOKEN_TTL_SECS | 600 | lifetime of a widget call token |
| STEPCALL_DATABASE_URL | sqlite:///var/calls.db | call records (SQLite or PostgreSQL URL); ``none`` = off |
| STEPCALL_DASHBOARD_TOKEN | (none) | token of ``/dashboard``; unset = dashboard off |
| STEPCALL_RECORDINGS_DIR | var/recordings | folder of call recordings (flows with ``recording``) |
| STEPCALL_OTEL_EXPORTER | none | OpenTelemetry traces of calls: none, console or otlp (``OTEL_EXPORTER_OTLP_*``) |
| STEPCALL_CPU_LLM | qwen2.5-1.5b | cpu backend LLM: qwen2.5-1.5b or smollm2-135m |
| STEPCALL_CPU_ASR_MODEL / _LLM_MODEL / _TTS_VOICE | (package copies) | cpu backend model files given explicitly |
| STEPCALL_CPU_MODELS_DIR / STEPCALL_CACHE_DIR | var/models / ~/.cache/stepcall | where cpu backend models are looked up / assembled |
| STEPCALL_EVAL_CACHE | ~/.cache/stepcall/evals | ``stepcall eval``: where built tiny checkpoints are cached |

The cpu backend's model settings go to ``model_service/backends/cpu/model_files.py``, which
documents the order it looks the models up in. Settings built in code (``Settings()``) keep
call records off (``database_url=None``) so tests
and embedding apps write no database unless asked; ``from_env`` turns them on by default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields

_SECRET_FIELDS = {
    "model_token",
    "twilio_auth_token",
    "stream_secret",
    "api_token",
    "dashboard_token",
    "widget_secret",
    "database_url",  # a PostgreSQL URL may hold a password
}
DEFAULT_DATABASE_URL = "sqlite:///var/calls.db"
DEFAULT_RECORDINGS_DIR = "var/recordings"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from e


def _env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ValueError(f"{name} must be a number, got {raw!r}") from e
    if minimum is not None and not value >= minimum:  # also refuses nan
        raise ValueError(f"{name} must be >= {minimum:g}, got {raw!r}")
    return value


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default) or default
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


#: STEPCALL_VAD_RUNTIME values (stepcall.audio.inference.VAD_RUNTIMES).
VAD_RUNTIMES = ("numpy", "onnxruntime")
#: STEPCALL_TURN_MODEL_AT values.
TURN_MODEL_PLACES = ("service", "bot")
#: STEPCALL_MODEL_TURN_MODEL values: the bundled Smart Turn model, or none (no ``turn.check``).
MODEL_TURN_MODELS = ("smart-turn", "none")


@dataclass(frozen=True)
class Settings:
    """All runtime settings of the bot server and the model service."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    flows_dir: str = "flows"
    default_flow: str | None = None
    model_url: str = "ws://127.0.0.1:8090/v1/session"
    model_token: str | None = field(default=None, repr=False)
    model_host: str = "127.0.0.1"
    model_port: int = 8090
    model_path: str = "stepfun-ai/Step-Audio-2-mini"
    model_backend: str = "auto"
    model_device: str = "auto"
    model_dtype: str = "auto"
    vllm_gpu_memory_utilization: float = 0.6
    vllm_cpu_kv_cache_gib: int = 1
    vllm_max_num_seqs: int = 32
    vllm_max_model_len: int = 0  # 0: the checkpoint's max_position_embeddings
    vllm_max_audio_chunks: int = 64
    vllm_enforce_eager: bool = False
    max_sessions: int = 32
    max_calls: int = 100
    max_call_secs: float = 3600.0
    stream_idle_secs: float = 20.0
    ws_max_message_bytes: int = 65536
    max_request_bytes: int = 1_048_576
    model_idle_secs: float = 900.0
    vad_stop_secs: float = 0.2
    turn_model_threads: int = 0
    turn_model_nice: int = 10
    turn_model_at: str = "service"
    model_turn_model: str = "smart-turn"
    model_turn_threads: int = 0
    vad_runtime: str = "numpy"
    twilio_audio_lead_ms: float = 300.0
    holding_line_secs: float = 2.0
    log_level: str = "INFO"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    twilio_from_number: str | None = None
    twilio_api_url: str | None = None
    stream_secret: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    ice_servers: str | None = None
    webrtc_offers_per_minute: int = 10
    widget_origins: str = "*"
    widget_secret: str | None = field(default=None, repr=False)
    widget_token_ttl_secs: int = 600
    database_url: str | None = field(default=None, repr=False)
    dashboard_token: str | None = field(default=None, repr=False)
    recordings_dir: str = DEFAULT_RECORDINGS_DIR
    otel_exporter: str = "none"
    cpu_llm: str | None = None  # None: model_files.DEFAULT_LLM (qwen2.5-1.5b)
    cpu_asr_model: str | None = None
    cpu_llm_model: str | None = None
    cpu_tts_voice: str | None = None
    cpu_models_dir: str = "var/models"
    cache_dir: str = "~/.cache/stepcall"
    eval_cache_dir: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """Read every setting from the environment (defaults where unset)."""
        return cls(
            host=_env("STEPCALL_HOST", cls.host),
            port=_env_int("STEPCALL_PORT", cls.port),
            public_url=_env("STEPCALL_PUBLIC_URL"),
            flows_dir=_env("STEPCALL_FLOWS_DIR", cls.flows_dir),
            default_flow=_env("STEPCALL_DEFAULT_FLOW"),
            model_url=_env("STEPCALL_MODEL_URL", cls.model_url),
            model_token=_env("STEPCALL_MODEL_TOKEN"),
            model_host=_env("STEPCALL_MODEL_HOST", cls.model_host),
            model_port=_env_int("STEPCALL_MODEL_PORT", cls.model_port),
            model_path=_env("STEPCALL_MODEL_PATH", cls.model_path),
            model_backend=_env("STEPCALL_MODEL_BACKEND", cls.model_backend),
            model_device=_env("STEPCALL_MODEL_DEVICE", cls.model_device),
            model_dtype=_env("STEPCALL_MODEL_DTYPE", cls.model_dtype),
            vllm_gpu_memory_utilization=_env_float(
                "STEPCALL_VLLM_GPU_MEMORY_UTILIZATION", cls.vllm_gpu_memory_utilization
            ),
            vllm_cpu_kv_cache_gib=_env_int(
                "STEPCALL_VLLM_CPU_KV_CACHE_GIB", cls.vllm_cpu_kv_cache_gib
            ),
            vllm_max_num_seqs=_env_int("STEPCALL_VLLM_MAX_NUM_SEQS", cls.vllm_max_num_seqs),
            vllm_max_model_len=_env_int("STEPCALL_VLLM_MAX_MODEL_LEN", cls.vllm_max_model_len),
            vllm_max_audio_chunks=_env_int(
                "STEPCALL_VLLM_MAX_AUDIO_CHUNKS", cls.vllm_max_audio_chunks
            ),
            vllm_enforce_eager=_env_choice(
                "STEPCALL_VLLM_ENFORCE_EAGER", "0", ("0", "1", "false", "true")
            )
            in ("1", "true"),
            max_sessions=_env_int("STEPCALL_MAX_SESSIONS", cls.max_sessions),
            max_calls=_env_int("STEPCALL_MAX_CALLS", cls.max_calls),
            max_call_secs=_env_float("STEPCALL_MAX_CALL_SECS", cls.max_call_secs),
            stream_idle_secs=_env_float("STEPCALL_STREAM_IDLE_SECS", cls.stream_idle_secs),
            ws_max_message_bytes=_env_int(
                "STEPCALL_WS_MAX_MESSAGE_BYTES", cls.ws_max_message_bytes
            ),
            max_request_bytes=_env_int("STEPCALL_MAX_REQUEST_BYTES", cls.max_request_bytes),
            model_idle_secs=_env_float("STEPCALL_MODEL_IDLE_SECS", cls.model_idle_secs),
            vad_stop_secs=_env_float("STEPCALL_VAD_STOP_SECS", cls.vad_stop_secs),
            turn_model_threads=_env_int("STEPCALL_TURN_MODEL_THREADS", cls.turn_model_threads),
            turn_model_nice=_env_int("STEPCALL_TURN_MODEL_NICE", cls.turn_model_nice),
            turn_model_at=_env_choice(
                "STEPCALL_TURN_MODEL_AT", cls.turn_model_at, TURN_MODEL_PLACES
            ),
            model_turn_model=_env_choice(
                "STEPCALL_MODEL_TURN_MODEL", cls.model_turn_model, MODEL_TURN_MODELS
            ),
            model_turn_threads=_env_int("STEPCALL_MODEL_TURN_THREADS", cls.model_turn_threads),
            vad_runtime=_env_choice("STEPCALL_VAD_RUNTIME", cls.vad_runtime, VAD_RUNTIMES),
            holding_line_secs=_env_float(
                "STEPCALL_HOLDING_LINE_SECS", cls.holding_line_secs, minimum=0.0
            ),
            twilio_audio_lead_ms=_env_float(
                "STEPCALL_TWILIO_AUDIO_LEAD_MS", cls.twilio_audio_lead_ms, minimum=0.0
            ),
            log_level=_env("STEPCALL_LOG_LEVEL", cls.log_level),
            twilio_account_sid=_env("TWILIO_ACCOUNT_SID"),
            twilio_auth_token=_env("TWILIO_AUTH_TOKEN"),
            twilio_from_number=_env("TWILIO_FROM_NUMBER"),
            twilio_api_url=_env("STEPCALL_TWILIO_API_URL"),
            stream_secret=_env("STEPCALL_STREAM_SECRET"),
            api_token=_env("STEPCALL_API_TOKEN"),
            ice_servers=_env("STEPCALL_ICE_SERVERS"),
            webrtc_offers_per_minute=_env_int(
                "STEPCALL_WEBRTC_OFFERS_PER_MINUTE", cls.webrtc_offers_per_minute
            ),
            widget_origins=_env("STEPCALL_WIDGET_ORIGINS", cls.widget_origins),
            widget_secret=_env("STEPCALL_WIDGET_SECRET"),
            widget_token_ttl_secs=_env_int(
                "STEPCALL_WIDGET_TOKEN_TTL_SECS", cls.widget_token_ttl_secs
            ),
            database_url=_env("STEPCALL_DATABASE_URL", DEFAULT_DATABASE_URL),
            dashboard_token=_env("STEPCALL_DASHBOARD_TOKEN"),
            recordings_dir=_env("STEPCALL_RECORDINGS_DIR", cls.recordings_dir),
            otel_exporter=_env("STEPCALL_OTEL_EXPORTER", cls.otel_exporter),
            cpu_llm=_env("STEPCALL_CPU_LLM"),
            cpu_asr_model=_env("STEPCALL_CPU_ASR_MODEL"),
            cpu_llm_model=_env("STEPCALL_CPU_LLM_MODEL"),
            cpu_tts_voice=_env("STEPCALL_CPU_TTS_VOICE"),
            cpu_models_dir=_env("STEPCALL_CPU_MODELS_DIR", cls.cpu_models_dir),
            cache_dir=_env("STEPCALL_CACHE_DIR", cls.cache_dir),
            eval_cache_dir=_env("STEPCALL_EVAL_CACHE"),
        )

    def replace(self, **changes) -> Settings:
        """A copy with some fields changed (CLI flags override env vars)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values = asdict(self)
        values.update({k: v for k, v in changes.items() if v is not None})
        return Settings(**values)

    @property
    def base_url(self) -> str:
        """Public base URL of the bot server."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def redacted(self) -> dict:
        """Settings safe to log: secrets replaced by '***' (or None when unset)."""
        out = asdict(self)
        for name in _SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        return out
