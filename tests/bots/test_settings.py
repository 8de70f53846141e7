"""Settings come from env vars, CLI overrides win, secrets never appear in redacted output."""

import pytest

from stepcall.settings import Settings


def test_defaults_and_env(monkeypatch):
    monkeypatch.setenv("STEPCALL_PORT", "9001")
    monkeypatch.setenv("STEPCALL_MODEL_TOKEN", "s3cret")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tw-secret")
    s = Settings.from_env()
    assert s.port == 9001 and s.model_token == "s3cret"
    assert s.host == "127.0.0.1" and s.max_sessions == 32
    red = s.redacted()
    assert red["model_token"] == "***" and red["twilio_auth_token"] == "***"
    assert "s3cret" not in repr(s) and "tw-secret" not in repr(s)


def test_bad_number_names_the_variable(monkeypatch):
    monkeypatch.setenv("STEPCALL_PORT", "eighty")
    with pytest.raises(ValueError, match="STEPCALL_PORT"):
        Settings.from_env()


def test_replace_overrides_and_rejects_unknown():
    s = Settings().replace(port=1234, host=None)
    assert s.port == 1234 and s.host == "127.0.0.1"
    with pytest.raises(TypeError, match="nope"):
        Settings().replace(nope=1)


def test_base_url():
    assert Settings(port=8081).base_url == "http://127.0.0.1:8081"
    assert Settings(public_url="https://bots.example.com/").base_url == "https://bots.example.com"


def test_turn_model_pool_settings(monkeypatch):
    assert (Settings().turn_model_threads, Settings().turn_model_nice) == (0, 10)
    monkeypatch.setenv("STEPCALL_TURN_MODEL_THREADS", "3")
    monkeypatch.setenv("STEPCALL_TURN_MODEL_NICE", "4")
    s = Settings.from_env()
    assert (s.turn_model_threads, s.turn_model_nice) == (3, 4)
    monkeypatch.setenv("STEPCALL_TURN_MODEL_THREADS", "two")
    with pytest.raises(ValueError, match="STEPCALL_TURN_MODEL_THREADS"):
        Settings.from_env()


def test_twilio_audio_lead_setting(monkeypatch):
    assert Settings().twilio_audio_lead_ms == 300.0
    monkeypatch.setenv("STEPCALL_TWILIO_AUDIO_LEAD_MS", "150")
    assert Settings.from_env().twilio_audio_lead_ms == 150.0
    for bad in ("-5", "nan", "soon"):
        monkeypatch.setenv("STEPCALL_TWILIO_AUDIO_LEAD_MS", bad)
        with pytest.raises(ValueError, match="STEPCALL_TWILIO_AUDIO_LEAD_MS"):
            Settings.from_env()


def test_vad_runtime_setting(monkeypatch):
    from stepcall.audio.inference import VAD_RUNTIMES
    from stepcall.settings import VAD_RUNTIMES as SETTING_CHOICES

    assert SETTING_CHOICES == VAD_RUNTIMES
    assert Settings().vad_runtime == "numpy"
    monkeypatch.setenv("STEPCALL_VAD_RUNTIME", "onnxruntime")
    assert Settings.from_env().vad_runtime == "onnxruntime"
    monkeypatch.setenv("STEPCALL_VAD_RUNTIME", "torch")
    with pytest.raises(ValueError, match="STEPCALL_VAD_RUNTIME must be one of numpy, onnxruntime"):
        Settings.from_env()


def test_cpu_backend_model_settings(monkeypatch):
    s = Settings()
    assert (s.cpu_llm, s.cpu_asr_model, s.cpu_llm_model, s.cpu_tts_voice) == (None,) * 4
    assert (s.cpu_models_dir, s.cache_dir) == ("var/models", "~/.cache/stepcall")
    env = {
        "STEPCALL_CPU_LLM": "smollm2-135m",
        "STEPCALL_CPU_ASR_MODEL": "/m/whisper",
        "STEPCALL_CPU_LLM_MODEL": "/m/llm.gguf",
        "STEPCALL_CPU_TTS_VOICE": "/m/voice.onnx",
        "STEPCALL_CPU_MODELS_DIR": "/m",
        "STEPCALL_CACHE_DIR": "/c",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings.from_env()
    assert (s.cpu_llm, s.cpu_asr_model, s.cpu_llm_model, s.cpu_tts_voice) == (
        "smollm2-135m", "/m/whisper", "/m/llm.gguf", "/m/voice.onnx"
    )
    assert (s.cpu_models_dir, s.cache_dir) == ("/m", "/c")
