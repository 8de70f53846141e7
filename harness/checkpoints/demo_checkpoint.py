"""The shaped tiny checkpoint the demo and the end-to-end tests serve.

Greedy decoding of it speaks a scripted TA4 reply (text + audio codes) after a user turn. It is
the real architecture and file layout, loaded through the same loader as the real model; only the
weights are set by hand, so every call gets the same reply deterministically.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from harness.checkpoints.tiny_checkpoint import build_tiny_checkpoint, default_script
from harness.checkpoints.tiny_tokenizer import build_tiny_tokenizer
from model_service.stepaudio2.tokenizer import StepAudio2Tokenizer

DEMO_REPLY = "Hello! Thank you for calling the weather line. How may I help today?"


def build_demo_checkpoint(out_dir: str | Path, *, reply: str = DEMO_REPLY) -> Path:
    """Write the demo checkpoint into ``out_dir`` (whose greedy reply speaks ``reply``)."""
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_tokenizer(tmp)
        tokenizer = StepAudio2Tokenizer.from_pretrained(tmp)
        script = default_script(tokenizer, text=reply)
    return build_tiny_checkpoint(out_dir, script=script)
