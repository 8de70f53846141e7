"""Fixtures for the call-record tests: a fresh SQLite store per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bots.records.store import CallStore


@pytest.fixture
def store(tmp_path) -> Iterator[CallStore]:
    """A migrated SQLite store in a temp folder (closed after the test)."""
    s = CallStore.open(f"sqlite:///{tmp_path}/calls.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def demo_backend(tmp_path_factory):
    """Reference model backend on the demo checkpoint (every reply ~3.2 s of audio + text)."""
    from harness.checkpoints.demo_checkpoint import build_demo_checkpoint
    from model_service.backends.reference import load_reference_backend

    ckpt = build_demo_checkpoint(tmp_path_factory.mktemp("records-demo"))
    return load_reference_backend(ckpt, "cpu", "float32")


@pytest.fixture(scope="session")
def caller_speech():
    """``caller_speech(text) -> int16 PCM at 8 kHz`` (flite); skips without flite."""
    from stepcall.audio.speech import SpeechUnavailableError, synthesize

    def make(text: str):
        try:
            return synthesize(text, 8000)
        except SpeechUnavailableError as e:
            pytest.skip(str(e))

    return make
