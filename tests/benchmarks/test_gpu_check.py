"""``benchmarks/gpu_check.py`` on tiny configs, so the GPU check never rots between lent GPUs.

The script runs in a subprocess the way the GPU machine runs it (``python benchmarks/gpu_check.py``
from the repo root), with every installed module outside torch's, transformers' and numpy's
requirements hidden: the lent machine has nothing else, so an import of e.g. pydantic, soxr or
soundfile on the check's path shows up here as a failed section.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "benchmarks/gpu_check.py"

# Run SCRIPT with sys.modules[name] = None for every installed top-level module that is neither
# the standard library, ours, nor in the requirement closure of torch, transformers and numpy
# (an import then raises ModuleNotFoundError and importlib.util.find_spec says "not installed").
# pydantic is hidden too: here it comes with transformers' typer, which the lent machine's
# transformers 5.17 may not pull in, and our stepcall.protocol (via model_service.sampling and
# stepaudio2.generate) needs it.
_GUARD = r"""
import importlib.metadata as md, re, runpy, sys

def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()

dists, todo = set(), ["torch", "transformers", "numpy"]
while todo:
    name = canon(todo.pop())
    if name in dists:
        continue
    dists.add(name)
    try:
        reqs = md.requires(name) or []
    except md.PackageNotFoundError:
        continue
    todo += [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]
ours = {"benchmarks", "bots", "harness", "model_service", "pipeline", "stepcall"}
allowed = set(sys.stdlib_module_names) | ours
for mod, owners in md.packages_distributions().items():
    if mod not in allowed and mod not in sys.modules and not any(canon(o) in dists for o in owners):
        sys.modules[mod] = None
for mod in ("pydantic", "pydantic_core"):
    sys.modules.setdefault(mod, None)
sys.argv[0] = "benchmarks/gpu_check.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(*args: str, timeout: float = 120) -> tuple[int, list[dict], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _GUARD, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines, proc.stderr


def _expected_figures() -> set[tuple]:
    plan = gpu_check.tiny_plan()
    keys: set[tuple] = set()
    for n in plan.prefill_tokens:
        keys |= {("llm_prefill_ms", "tokens", n), ("llm_decode_token_ms", "context", n)}
    keys |= {("audio_encoder_ms", "audio_s", s) for s in plan.encoder_seconds}
    for n in plan.streams:
        keys |= {("token2wav_first_chunk_ms", "streams", n), ("token2wav_rtf", "streams", n)}
    return keys


def _key(line: dict) -> tuple | None:
    for param in ("tokens", "context", "audio_s", "streams"):
        if param in line:
            return (line["figure"], param, line[param])
    return None


def test_tiny_run_prints_every_figure_with_only_torch_transformers_numpy(tmp_path: Path):
    out = tmp_path / "gpu_check.jsonl"
    code, lines, stderr = _run("--tiny", "--out", str(out))
    assert code == 0, stderr[-4000:]
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines  # --out = stdout
    assert not [x for x in lines if "error" in x or "skipped" in x], lines
    env = lines[0]
    assert env["figure"] == "environment" and env["mode"] == "tiny"
    assert env["stubbed_modules"] == ["soundfile", "soxr"]  # hidden: token2wav got placeholders
    figures = {_key(x): x for x in lines[1:]}
    assert set(figures) == _expected_figures()
    for key, line in figures.items():
        p50, p95 = line["p50"], line["p95"]
        assert math.isfinite(p50) and math.isfinite(p95) and 0 < p50 <= p95, (key, line)
        assert line["device"].startswith("cpu")


def test_a_failing_section_is_an_error_line_and_the_others_still_run():
    code, lines, stderr = _run(
        "--tiny", "--sections", "llm,audio_encoder", "--inject-failure", "llm"
    )
    assert code == 1, stderr[-4000:]
    errors = [x for x in lines if "error" in x]
    assert errors == [
        {"figure": "llm", "error": "RuntimeError: injected failure (--inject-failure llm)"}
    ]
    assert {x["figure"] for x in lines} == {"environment", "llm", "audio_encoder_ms"}
    assert all(x["p50"] > 0 for x in lines if x["figure"] == "audio_encoder_ms")


def test_sections_past_the_budget_are_skipped_with_a_line_each():
    code, lines, _ = _run("--tiny", "--budget", "0")
    assert code == 3
    assert [x["figure"] for x in lines if "skipped" in x] == list(gpu_check.SECTIONS)


def test_the_real_plan_is_step_audio2_mini_at_full_size():
    model = gpu_check.step_audio2_on_meta(gpu_check.real_plan())  # meta: no memory, no init
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == pytest.approx(8.315e9, rel=1e-3)  # 16.63 GB of bf16 shards
    assert count(model.encoder) == pytest.approx(0.637e9, rel=1e-3)
    assert model.dtype == gpu_check.torch.bfloat16
    t = model.config.text
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (3584, 28, 28)
    assert (t.num_key_value_heads, t.intermediate_size, t.vocab_size) == (4, 18944, 158720)
