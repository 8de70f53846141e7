"""Fixtures: one tiny random token2wav checkpoint per test session, loaded once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.checkpoints.tiny_token2wav import build_tiny_token2wav
from model_service.token2wav import Token2Wav, Voice, save_voice_npz


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The test box has 2 shared cores; intra-op threading on tiny tensors is ~20x slower there.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_t2w")
    build_tiny_token2wav(root)
    return root


@pytest.fixture(scope="session")
def t2w(tiny_dir: Path) -> Token2Wav:
    return Token2Wav.load(tiny_dir)


@pytest.fixture(scope="session")
def voice(t2w: Token2Wav) -> Voice:
    path = t2w.default_voice_path()
    assert path is not None
    return t2w.prepare_voice(path)


@pytest.fixture(scope="session")
def voice_b(t2w: Token2Wav, voice: Voice, tmp_path_factory: pytest.TempPathFactory) -> Voice:
    """A second voice with a different (shorter) prompt and speaker embedding."""
    rng = np.random.default_rng(7)
    n = 40
    other = Voice(
        name="other",
        codes=rng.integers(0, 6561, n).astype(np.int64),
        embedding=rng.standard_normal(192).astype(np.float32),
        mel=voice.mel[: 2 * n][::-1].copy(),
    )
    path = save_voice_npz(other, tmp_path_factory.mktemp("voices") / "other.npz")
    return t2w.prepare_voice(path)
