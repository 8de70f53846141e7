"""``Token2Wav``: Step-Audio 2 speech codes -> 24 kHz audio, one-shot or streamed per session.

The instance holds only the (read-only) networks and a voice cache; every per-call thing lives in
a ``StreamState`` (pending codes, context codes, vocoder mel/audio tails, source phase), so one
instance serves any number of concurrent sessions and ``push_many`` can batch them.

Streaming algorithm (a documented simplification of the official KV-cache streaming):

* Codes are buffered until ``chunk + lookahead`` are pending (``first_chunk`` for the first one;
  ``lookahead`` = the flow's ``pre_lookahead_len`` = 3). The flow is then *recomputed* over
  ``prompt codes + up to max_context already-rendered codes + chunk + lookahead`` and only the
  chunk's ``2 x chunk`` new mel frames are kept. Because attention is per-frame causal (see
  ``flow.py``) and CFM noise is indexed by absolute frame, this mel equals the non-streaming mel
  exactly while the response fits in ``max_context``; past that, older context is dropped (a
  small approximation). Cost per chunk grows with prompt + context length instead of a cache.
* HiFT runs on ``last overlap_frames mel frames + new frames``; every non-final chunk withholds
  its last ``overlap_frames * 480`` samples, which the next chunk re-synthesises and crossfades
  (raised-cosine) with, as the official "streaming hift" does. The harmonic source phase and the
  source noise continue across chunks.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import MEL_BINS, SAMPLE_RATE, Token2WavConfig, load_config
from .flow import CausalMaskedDiffWithXvec
from .hift import HiFTGenerator
from .voice import PromptEncoders, Voice, load_voice_npz
from .weights import load_flow_weights, load_hift_weights

log = logging.getLogger(__name__)

REQUIRED_FILES = ("flow.yaml", "flow.pt", "hift.pt")
ONNX_FILES = ("campplus.onnx", "speech_tokenizer_v2_25hz.onnx")


class Token2WavFileError(FileNotFoundError):
    """A file of the token2wav directory is missing."""


@dataclass
class ChunkSchedule:
    """When a stream emits audio and how much context it recomputes.

    first_chunk / chunk: codes rendered per emitted chunk (the first may be smaller for a lower
    time-to-first-audio); each also waits for the flow's look-ahead codes (3).
    max_context: already-rendered codes re-fed to the flow as left context (50 codes = 100 mel
        frames, the same window upstream keeps in its attention cache besides the prompt).
    overlap_frames: mel frames of vocoder overlap; that many x 480 samples are withheld and
    crossfaded at every boundary (8 frames = 160 ms, as upstream).
    """

    first_chunk: int = 10
    chunk: int = 25
    max_context: int = 50
    overlap_frames: int = 8

    def __post_init__(self) -> None:
        if self.first_chunk < 1 or self.chunk < 1:
            raise ValueError(
                f"ChunkSchedule: chunk sizes must be >= 1, got {self.first_chunk}/{self.chunk}"
            )
        if self.max_context < 0 or self.overlap_frames < 1:
            raise ValueError("ChunkSchedule: max_context >= 0 and overlap_frames >= 1 required")
        if self.overlap_frames > 2 * min(self.first_chunk, self.chunk):
            raise ValueError("ChunkSchedule: overlap_frames must be <= 2 x the smallest chunk")


_ids = itertools.count(1)


@dataclass
class StreamState:
    """Everything one streaming response owns. Never shared between sessions."""

    voice: Voice
    schedule: ChunkSchedule
    stream_id: int = field(default_factory=lambda: next(_ids))
    pending: list[int] = field(default_factory=list)  # received, not yet rendered
    context: list[int] = field(default_factory=list)  # rendered codes kept as flow context
    rendered: int = 0  # generated codes rendered so far
    chunks: int = 0
    dropped: int = 0  # out-of-range codes dropped
    mel_tail: torch.Tensor | None = None  # [80, overlap] last mel frames fed to HiFT
    audio_tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    phase: torch.Tensor | None = None  # [H+1] float64 source phase at the mel_tail start
    sample_pos: int = 0  # absolute sample index of the mel_tail start
    samples_out: int = 0
    closed: bool = False


@dataclass
class _FlowJob:
    state: StreamState
    codes: list[int]  # codes to render in this chunk
    lookahead: list[int]  # real look-ahead codes ([] on the final chunk)
    final: bool


def resolve_dtype(dtype: torch.dtype | str, device: str | torch.device) -> torch.dtype:
    """``torch.float16`` etc., or a name: "float32"/"float16"/"bfloat16"/"auto" (fp16 on CUDA)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"token2wav: unknown dtype {dtype!r}")
    return value


class Token2Wav:
    """Flow-matching + HiFT detokenizer with per-session streaming and cross-session batching.

    The flow runs in ``dtype`` (fp16/bf16 fine on GPU); HiFT always runs in float32. Methods are
    synchronous and CPU/GPU-heavy: call them from a worker thread (or use ``Token2WavBatcher``).
    Concurrent calls on *different* streams are safe; one stream must not be used by two threads.
    """

    def __init__(
        self,
        cfg: Token2WavConfig,
        flow: CausalMaskedDiffWithXvec,
        hift: HiFTGenerator,
        model_dir: Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> None:
        dtype = resolve_dtype(dtype, device)
        self.cfg = cfg
        self.flow = flow.to(device=device, dtype=dtype).eval()
        self.hift = hift.to(device=device, dtype=torch.float32).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.dir = model_dir
        self.lookahead = cfg.flow.pre_lookahead_len
        self.up = cfg.flow.up_stride
        self.hop = cfg.hift.hop
        self.sample_rate = SAMPLE_RATE
        self._voices: dict[tuple, Voice] = {}
        self._voice_lock = threading.Lock()
        base = model_dir or Path(".")
        self._encoders = PromptEncoders(
            base / "speech_tokenizer_v2_25hz.onnx", base / "campplus.onnx"
        )

    # ------------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ) -> Token2Wav:
        """Load ``<model_dir>/token2wav/`` (or ``model_dir`` itself if it holds ``flow.yaml``)."""
        root = Path(model_dir)
        t2w = (
            root
            if (root / "flow.yaml").exists() and not (root / "token2wav").is_dir()
            else root / "token2wav"
        )
        if not t2w.is_dir():
            raise Token2WavFileError(f"token2wav: directory {t2w} not found")
        for name in REQUIRED_FILES:
            if not (t2w / name).exists():
                raise Token2WavFileError(f"token2wav: missing {t2w / name}")
        for name in ONNX_FILES:
            if not (t2w / name).exists():
                log.info("token2wav: %s absent; voices must come as precomputed .npz", t2w / name)
        cfg = load_config(t2w)
        flow = CausalMaskedDiffWithXvec(cfg.flow)
        hift = HiFTGenerator(cfg.hift)
        load_flow_weights(flow, t2w / "flow.pt")
        load_hift_weights(hift, t2w / "hift.pt")
        return cls(cfg, flow, hift, model_dir=t2w, device=device, dtype=dtype)

    def default_voice_path(self) -> Path | None:
        """``token2wav/voices/default.wav`` (or ``.npz``) when the checkpoint ships one."""
        if self.dir is None:
            return None
        for name in ("default.wav", "default.npz"):
            p = self.dir / "voices" / name
            if p.exists():
                return p
        return None

    # ------------------------------------------------------------------------ voices

    def prepare_voice(self, prompt_wav_path: str | Path) -> Voice:
        """A cached ``Voice`` for a prompt wav (or ``.npz``); re-read when the file changes."""
        path = Path(prompt_wav_path)
        npz = path if path.suffix == ".npz" else path.with_suffix(".npz")
        if not path.exists() and not npz.exists():
            raise FileNotFoundError(f"voice prompt {path} not found")
        key = tuple((str(p.resolve()), p.stat().st_mtime_ns) for p in (path, npz) if p.exists())
        with self._voice_lock:
            hit = self._voices.get(key)
        if hit is not None:
            return hit
        if npz.exists():
            voice = load_voice_npz(npz, name=path.stem)
            if voice.codes.size == 0:
                raise ValueError(f"voice {npz}: no prompt codes")
        else:
            voice = self._encoders.voice_from_wav(path)
        bad = (voice.codes < 0) | (voice.codes >= self.cfg.flow.vocab_size)
        if bad.any():
            raise ValueError(
                f"voice {path}: prompt codes out of range [0, {self.cfg.flow.vocab_size})"
            )
        if voice.embedding.shape[0] != self.cfg.flow.spk_embed_dim:
            raise ValueError(
                f"voice {path}: embedding has {voice.embedding.shape[0]} dims, model wants "
                f"{self.cfg.flow.spk_embed_dim}"
            )
        with self._voice_lock:
            self._voices = {k: v for k, v in self._voices.items() if k[0][0] != key[0][0]}
            self._voices[key] = voice
        return voice

    # ------------------------------------------------------------------------ helpers

    def _clean(self, codes: Iterable[int], state: StreamState | None = None) -> list[int]:
        out: list[int] = []
        bad = 0
        limit = self.cfg.flow.vocab_size
        for c in codes:
            ci = int(c)
            if 0 <= ci < limit:
                out.append(ci)
            else:
                bad += 1
        if bad:
            log.debug("token2wav: dropped %d out-of-range code(s)", bad)
            if state is not None:
                state.dropped += bad
        return out

    def _run_flow(self, rows: Sequence[tuple[Voice, list[int], int, int]]) -> list[torch.Tensor]:
        """One batched (right-padded) flow pass.

        Each row is ``(voice, gen_codes, gen_start, skip)``: ``gen_codes`` are the generated codes
        fed after the prompt (context + chunk + look-ahead), ``gen_start`` the absolute index of
        ``gen_codes[0]`` in the response (for noise positions), ``skip`` how many leading
        ``gen_codes`` are context. Returns per row the mel [80, 2 * (len(gen_codes) - skip)] of
        ``gen_codes[skip:]``; the caller trims look-ahead frames.
        """
        up = self.up
        seqs, lens, spks, conds, fidx = [], [], [], [], []
        for voice, gen_codes, gen_start, _ in rows:
            p = len(voice.codes)
            seqs.append(np.concatenate([voice.codes, np.asarray(gen_codes, dtype=np.int64)]))
            lens.append(len(seqs[-1]))
            spks.append(voice.embedding)
            conds.append(voice.mel)
            fidx.append(
                np.concatenate(
                    [np.arange(up * p), up * p + up * gen_start + np.arange(up * len(gen_codes))]
                )
            )
        T = max(lens)
        b = len(rows)
        tokens = np.zeros((b, T), dtype=np.int64)
        cond = np.zeros((b, MEL_BINS, up * T), dtype=np.float32)
        frame_index = np.zeros((b, up * T), dtype=np.int64)
        for i in range(b):
            tokens[i, : lens[i]] = seqs[i]
            cond[i, :, : conds[i].shape[0]] = conds[i].T
            frame_index[i, : len(fidx[i])] = fidx[i]
        dev = self.device
        mel = self.flow.infer(
            torch.from_numpy(tokens).to(dev),
            torch.tensor(lens, device=dev),
            torch.from_numpy(np.stack(spks)).to(dev),
            torch.from_numpy(cond).to(dev),
            torch.from_numpy(frame_index).to(dev),
        ).float()
        out = []
        for i, (voice, _gen, _start, skip) in enumerate(rows):
            a = up * (len(voice.codes) + skip)
            out.append(mel[i, :, a : up * lens[i]])
        return out

    # ------------------------------------------------------------------------ one-shot

    def mel(self, voice: Voice, codes: Sequence[int]) -> torch.Tensor:
        """Non-streaming mel [80, 2n] for ``codes`` (prompt-conditioned)."""
        clean = self._clean(codes)
        if not clean:
            return torch.zeros(MEL_BINS, 0)
        return self._run_flow([(voice, clean, 0, 0)])[0]

    def synthesize(self, voice: Voice, codes: Sequence[int]) -> np.ndarray:
        """Non-streaming: all codes -> float32 mono 24 kHz audio (960 samples per code)."""
        mel = self.mel(voice, codes)
        if mel.shape[1] == 0:
            return np.zeros(0, np.float32)
        audio, _ = self.hift(mel[None].to(self.device))
        return audio[0].cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------------ streaming

    def new_stream(self, voice: Voice, schedule: ChunkSchedule | None = None) -> StreamState:
        return StreamState(voice=voice, schedule=schedule or ChunkSchedule())

    def _next_job(self, st: StreamState, final: bool) -> _FlowJob | None:
        if st.closed:
            return None
        n = st.schedule.first_chunk if st.chunks == 0 else st.schedule.chunk
        if len(st.pending) >= n + self.lookahead:
            job = _FlowJob(st, st.pending[:n], st.pending[n : n + self.lookahead], final=False)
            del st.pending[:n]
            return job
        if final:
            job = _FlowJob(st, list(st.pending), [], final=True)
            st.pending.clear()
            return job
        return None

    def _render(self, jobs: list[_FlowJob]) -> list[np.ndarray]:
        """Run flow (one batch) then HiFT (batched by equal mel length) for one chunk per job."""
        flow_rows = []
        flow_idx = []
        for i, job in enumerate(jobs):
            if job.codes:
                st = job.state
                ctx = st.context[-st.schedule.max_context :] if st.schedule.max_context else []
                gen_start = st.rendered - len(ctx)
                flow_rows.append((st.voice, ctx + job.codes + job.lookahead, gen_start, len(ctx)))
                flow_idx.append(i)
        mels: list[torch.Tensor | None] = [None] * len(jobs)
        if flow_rows:
            for i, m in zip(flow_idx, self._run_flow(flow_rows), strict=False):
                n = len(jobs[i].codes)
                mels[i] = m[:, : self.up * n]

        # vocoder inputs per job
        hift_in: list[tuple[int, torch.Tensor]] = []
        outputs: list[np.ndarray] = [np.zeros(0, np.float32)] * len(jobs)
        for i, job in enumerate(jobs):
            st = job.state
            parts = [t for t in (st.mel_tail, mels[i]) if t is not None and t.shape[1] > 0]
            if mels[i] is None or mels[i].shape[1] == 0:
                # nothing new: on the final chunk release the withheld tail as is
                if job.final:
                    outputs[i] = st.audio_tail
                    st.audio_tail = np.zeros(0, np.float32)
                continue
            hift_in.append((i, torch.cat(parts, dim=1)))
        groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for i, m in hift_in:
            groups.setdefault(m.shape[1], []).append((i, m))
        for items in groups.values():
            idx = [i for i, _ in items]
            mel_b = torch.stack([m for _, m in items]).to(self.device)
            phases = torch.stack(
                [
                    jobs[i].state.phase
                    if jobs[i].state.phase is not None
                    else self.hift.m_source.initial_phase(1)[0]
                    for i in idx
                ]
            ).to(self.device)
            offsets = torch.tensor(
                [jobs[i].state.sample_pos for i in idx], dtype=torch.long, device=self.device
            )
            audio_b, ph_b = self.hift(mel_b, phases, offsets)
            audio_np = audio_b.cpu().numpy().astype(np.float32)
            for row, i in enumerate(idx):
                outputs[i] = self._finish_chunk(jobs[i], mel_b[row], audio_np[row], ph_b[row])
        for job in jobs:
            st = job.state
            if job.codes:
                st.context.extend(job.codes)
                if len(st.context) > st.schedule.max_context:
                    del st.context[: len(st.context) - st.schedule.max_context]
                st.rendered += len(job.codes)
                st.chunks += 1
            if job.final:
                st.closed = True
        for i, job in enumerate(jobs):
            job.state.samples_out += len(outputs[i])
        return outputs

    def _finish_chunk(
        self, job: _FlowJob, mel_in: torch.Tensor, audio: np.ndarray, phase: torch.Tensor
    ) -> np.ndarray:
        st = job.state
        tail = st.audio_tail
        if tail.size:
            n = tail.size
            w = np.sin(0.5 * np.pi * (np.arange(n) + 0.5) / n) ** 2  # raised-cosine fade-in
            audio = audio.copy()
            audio[:n] = audio[:n] * w + tail * (1.0 - w)
        if job.final:
            st.audio_tail = np.zeros(0, np.float32)
            st.mel_tail = None
            return audio.astype(np.float32)
        ov = min(st.schedule.overlap_frames, mel_in.shape[1])
        ov_s = ov * self.hop
        keep = len(audio) - ov_s
        st.audio_tail = audio[keep:].astype(np.float32)
        st.mel_tail = mel_in[:, -ov:].clone()  # stays on the model device
        st.phase = phase[:, keep].cpu()
        st.sample_pos += keep
        return audio[:keep].astype(np.float32)

    def push(self, state: StreamState, codes: Iterable[int]) -> list[np.ndarray]:
        """Buffer codes; return the audio chunks (24 kHz float32) that became ready."""
        return self.push_many([(state, codes)])[0]

    def push_many(
        self, items: Sequence[tuple[StreamState, Iterable[int]]]
    ) -> list[list[np.ndarray]]:
        """``push`` for several sessions; ready chunks of all sessions share one flow pass per round."""
        if len({id(st) for st, _ in items}) != len(items):
            raise ValueError("push_many: the same StreamState appears twice")
        for st, codes in items:
            if st.closed:
                raise RuntimeError(f"stream {st.stream_id} is already flushed")
            st.pending.extend(self._clean(codes, st))
        results: list[list[np.ndarray]] = [[] for _ in items]
        while True:
            jobs, owners = [], []
            for k, (st, _) in enumerate(items):
                job = self._next_job(st, final=False)
                if job is not None:
                    jobs.append(job)
                    owners.append(k)
            if not jobs:
                return results
            for k, audio in zip(owners, self._render(jobs), strict=False):
                if audio.size:
                    results[k].append(audio)

    def flush(self, state: StreamState) -> np.ndarray:
        """End of response: render everything still buffered and release the withheld tail."""
        return self.flush_many([state])[0]

    def flush_many(self, states: Sequence[StreamState]) -> list[np.ndarray]:
        """``flush`` for several sessions (full chunks first, then one batched final pass)."""
        outs: list[list[np.ndarray]] = [[] for _ in states]
        jobs, owners = [], []
        for k, st in enumerate(states):
            if st.closed:
                continue
            job = self._next_job(st, final=True)
            while job is not None and not job.final:  # full chunks still buffered
                outs[k].extend(a for a in self._render([job]) if a.size)
                job = self._next_job(st, final=True)
            if job is not None:
                jobs.append(job)
                owners.append(k)
        if jobs:
            for k, audio in zip(owners, self._render(jobs), strict=False):
                if audio.size:
                    outs[k].append(audio)
        return [np.concatenate(o) if o else np.zeros(0, np.float32) for o in outs]

    def stream_step(
        self, states_and_codes: Sequence[tuple[StreamState, Iterable[int]]], last: bool = False
    ) -> list[np.ndarray]:
        """ARCHITECTURE.md's form: push (and, if ``last``, flush) each session; one array each."""
        pushed = self.push_many(states_and_codes)
        flushed = self.flush_many([st for st, _ in states_and_codes]) if last else None
        out = []
        for k, chunks in enumerate(pushed):
            parts = list(chunks)
            if flushed is not None and flushed[k].size:
                parts.append(flushed[k])
            out.append(np.concatenate(parts) if parts else np.zeros(0, np.float32))
        return out


__all__ = ["ChunkSchedule", "StreamState", "Token2Wav", "Token2WavFileError", "resolve_dtype"]
