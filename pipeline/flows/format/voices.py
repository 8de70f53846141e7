"""Voice resolution for flows: built-in voice names, a ``voices/`` library, or a prompt WAV path.

The voice library of a flow is the built-in names plus every entry of a ``voices/`` folder in the
flow's folder or in its parent (``flows/voices/`` or ``<repo>/voices/``): ``voices/alice.wav`` and
``voices/alice/`` both define the voice ``alice``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.flows.format import vocab


@dataclass(frozen=True)
class ResolvedVoice:
    """A voice as the runtime should use it: a name or an absolute WAV path, and its file."""

    voice: str
    path: Path | None


def voice_dirs(flow_dir: Path) -> list[Path]:
    """The ``voices/`` folders consulted for flows in ``flow_dir`` (existing ones only)."""
    candidates = [flow_dir / "voices", flow_dir.parent / "voices"]
    return [d for d in dict.fromkeys(c.resolve() for c in candidates) if d.is_dir()]


def voice_library(flow_dir: Path) -> dict[str, Path | None]:
    """Voice names available to flows in ``flow_dir`` and the file or folder behind each."""
    library: dict[str, Path | None] = {name: None for name in vocab.BUILTIN_VOICES}
    for folder in voice_dirs(flow_dir):
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                library.setdefault(entry.name, entry)
            elif entry.suffix.lower() == ".wav":
                library.setdefault(entry.stem, entry)
    return library


def looks_like_path(voice: str) -> bool:
    """True when ``voice`` names a file rather than a library voice."""
    return "/" in voice or "\\" in voice or voice.lower().endswith(".wav")


def resolve_voice(voice: str, flow_file: Path) -> ResolvedVoice | str:
    """Resolve ``voice`` for a flow file; a string is the reason it cannot be resolved."""
    if looks_like_path(voice):
        path = (flow_file.parent / voice).resolve()
        if not voice.lower().endswith(".wav"):
            return f"voice file '{voice}' must be a .wav prompt"
        if not path.is_file():
            return f"voice file '{voice}' not found (looked for {path})"
        return ResolvedVoice(str(path), path)
    library = voice_library(flow_file.parent)
    if voice not in library:
        from pipeline.flows.format.checker import did_you_mean

        known = ", ".join(sorted(library))
        return f"unknown voice '{voice}' (known: {known}){did_you_mean(voice, list(library))}"
    return ResolvedVoice(voice, library[voice])


def voice_descriptions(flow_dir: Path) -> dict[str, str]:
    """A description of every voice in the library of ``flow_dir`` (for voice search).

    Built-in voices have fixed descriptions; a library voice is described by
    ``voices/<name>/description.txt`` or ``voices/<name>.txt``, else by its name.
    """
    out: dict[str, str] = {}
    for name, entry in voice_library(flow_dir).items():
        text = vocab.BUILTIN_VOICE_DESCRIPTIONS.get(name)
        if entry is not None:
            candidates = (
                [entry / "description.txt"] if entry.is_dir() else [entry.with_suffix(".txt")]
            )
            for candidate in candidates:
                if candidate.is_file():
                    text = candidate.read_text(encoding="utf-8").strip() or text
        out[name] = text or name.replace("_", " ").replace("-", " ") + " voice"
    return out
