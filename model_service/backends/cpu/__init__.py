"""The ``cpu`` backend: offline Whisper → llama.cpp → Piper cascade behind the backend interface.

Import ``CpuBackend`` / ``load_cpu_backend`` from here; the model runtimes (faster-whisper,
xllamacpp, piper-tts) are imported only when a backend is loaded.
"""

from __future__ import annotations

from model_service.backends.cpu.backend import CpuBackend, CpuSession, load_cpu_backend

__all__ = ["CpuBackend", "CpuSession", "load_cpu_backend"]
