"""Fixtures of the security suite: the reference model backend on the tiny demo checkpoint."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_backend(tmp_path_factory):
    """Reference backend on the demo checkpoint (a real model service backend, CPU, tiny)."""
    from harness.checkpoints.demo_checkpoint import build_demo_checkpoint
    from model_service.backends.reference import load_reference_backend

    ckpt = build_demo_checkpoint(tmp_path_factory.mktemp("security-demo"))
    return load_reference_backend(ckpt, "cpu", "float32")
