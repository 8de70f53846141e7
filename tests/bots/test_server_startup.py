"""What the bot server does once at start-up so that no live call's audio stalls later."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from bots.server import create_app
from model_service.server import serving
from stepcall.audio import inference as turn_models
from stepcall.runtime import realtime
from stepcall.runtime.realtime import freeze_startup_heap
from stepcall.settings import Settings


async def test_serving_freezes_the_start_up_heap_and_loads_the_turn_models(monkeypatch) -> None:
    import stepcall.runtime.realtime as heap

    gc.unfreeze()
    monkeypatch.setattr(heap, "_frozen", False)  # as in a fresh server process
    turn_models._session.cache_clear()
    app = create_app(Settings())
    async with serving(app):
        frozen = gc.get_freeze_count()
        loaded = turn_models._session.cache_info().currsize
    gc.unfreeze()
    # Pipecat, FastAPI and the turn models: far over 10,000 objects no full GC walks any more
    assert frozen > 10_000
    assert loaded == 2  # Silero VAD and Smart Turn, before the first call


def test_freeze_startup_heap_freezes_once_per_process(monkeypatch) -> None:
    import stepcall.runtime.realtime as heap

    gc.unfreeze()
    monkeypatch.setattr(heap, "_frozen", False)
    keep = [[i] for i in range(1000)]  # tracked containers alive across the freeze
    frozen = freeze_startup_heap()
    assert frozen >= len(keep)
    later = [[i] for i in range(1000)]  # a second server's objects: not frozen
    # (the count only shrinks, as frozen objects other threads drop are freed)
    assert freeze_startup_heap() <= frozen and len(later) == 1000
    gc.unfreeze()


def test_create_app_sets_the_turn_model_pool_from_settings() -> None:
    before = turn_models.inference_pool()
    try:
        create_app(Settings(turn_model_threads=3, turn_model_nice=7))
        pool = turn_models.inference_pool()
        assert (pool.threads, pool.nice) == (3, 7)
        with pytest.raises(ValueError, match="nice"):
            create_app(Settings(turn_model_nice=40))
    finally:
        turn_models.configure_inference(before.threads, before.nice)


def test_create_app_sets_the_vad_runtime_from_settings() -> None:
    from pipecat.audio.vad.silero import SileroOnnxModel

    from stepcall.audio.silero import SileroNumpyModel

    try:
        create_app(Settings(vad_runtime="onnxruntime"))
        assert isinstance(turn_models.silero_model(), SileroOnnxModel)
        create_app(Settings())
        assert isinstance(turn_models.silero_model(), SileroNumpyModel)
    finally:
        turn_models.configure_vad_runtime("numpy")


def test_create_app_shortens_the_gil_switch_interval() -> None:
    import sys

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        create_app(Settings())
        assert sys.getswitchinterval() == pytest.approx(realtime.GIL_SWITCH_SECS)
        sys.setswitchinterval(0.0005)  # already shorter: left alone
        create_app(Settings())
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)


def test_the_first_call_imports_no_llm_adapter_package() -> None:
    """Building a call's service must not import ``openai`` (~0.4 s with the loop blocked):
    checked in a fresh interpreter, where nothing imported it before."""
    code = (
        "import sys\n"
        "import pipeline.step_audio2.service as m\n"
        "before = set(sys.modules)\n"
        "m.StepAudio2Service(url='ws://127.0.0.1:1/v1/session', call_id='c1')\n"
        "print(sorted(n for n in set(sys.modules) - before if n.split('.')[0] == 'openai'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
