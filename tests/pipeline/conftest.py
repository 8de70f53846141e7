"""Fixtures for the call-pipeline tests: the real model service (reference backend, tiny
checkpoints) and caller speech from flite at 8 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.checkpoints.demo_checkpoint import DEMO_REPLY, build_demo_checkpoint
from harness.checkpoints.tiny_checkpoint import (
    after_tool_script,
    build_tiny_checkpoint,
    default_script,
    tool_call_script,
)
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.backends.reference import ReferenceBackend, load_reference_backend
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer

TOOL_FILLER = "One moment, let me check."
TOOL_ANSWER = "Sunny with 18 degrees today."


@pytest.fixture(scope="session")
def demo_backend(tmp_path_factory) -> ReferenceBackend:
    """Reference backend on the demo checkpoint: every reply is ~3.2 s of audio."""
    ckpt = build_demo_checkpoint(tmp_path_factory.mktemp("pipeline-demo"))
    return load_reference_backend(ckpt, "cpu", "float32")


@pytest.fixture(scope="session")
def demo_reply_len(tmp_path_factory) -> int:
    """Ids of the demo reply as the history stores it in full (the stop id dropped)."""
    tok_dir = tmp_path_factory.mktemp("pipeline-demo-tok")
    build_tiny_tokenizer(tok_dir)
    tok = StepAudio2Tokenizer.from_pretrained(tok_dir)
    return len(default_script(tok, text=DEMO_REPLY)) - 1


@pytest.fixture(scope="session")
def tool_backend(tmp_path_factory) -> ReferenceBackend:
    """Reference backend that says a filler and calls get_weather, then answers after it."""
    tok_dir = tmp_path_factory.mktemp("pipeline-tok")
    build_tiny_tokenizer(tok_dir)
    tok = StepAudio2Tokenizer.from_pretrained(tok_dir)
    first = tool_call_script(tok, filler=TOOL_FILLER)
    after = after_tool_script(tok, first, text=TOOL_ANSWER)
    ckpt: Path = build_tiny_checkpoint(
        tmp_path_factory.mktemp("pipeline-tool"), script=first, after_tool_script=after
    )
    return load_reference_backend(ckpt, "cpu", "float32")


@pytest.fixture(scope="session")
def speech():
    """``speech(text) -> int16 PCM at 8 kHz`` (flite), cached per text."""
    from stepcall.audio.speech import SpeechUnavailableError, synthesize

    cache: dict[str, np.ndarray] = {}

    def make(text: str) -> np.ndarray:
        if text not in cache:
            try:
                cache[text] = synthesize(text, 8000)
            except SpeechUnavailableError as e:  # pragma: no cover - flite is a test dependency
                pytest.skip(str(e))
        return cache[text]

    return make
