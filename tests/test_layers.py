"""The layer contracts of pyproject.toml ([tool.importlinter]) hold, and catch a wrong import.

`lint-imports` (import-linter) reads the contracts and the code's imports; this test runs it on
the tree as it is, then on a copy with one import planted against each contract, so a contract
that stopped biting (a typo in a module name, a too-wide ignore) fails here, not in review.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stepcall", "model_service", "pipeline", "bots", "harness")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_tree(dst: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_tree_keeps_every_layer_contract() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("stepcall/settings.py", "import bots.server", "harness > bots"),
        ("model_service/sessions.py", "import pipeline.step_audio2.service", "harness > bots"),
        ("pipeline/step_audio2/client.py", "import model_service.sessions", "harness > bots"),
        ("pipeline/flows/runtime.py", "import bots.call", "harness > bots"),
        ("bots/server.py", "import harness.loopback_phone", "proving kit"),
    ],
)
def test_a_planted_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, planted: str, contract: str
) -> None:
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    run = _lint(root)
    assert run.returncode != 0, run.stdout
    assert "BROKEN" in run.stdout and contract in run.stdout, run.stdout
    assert planted.split()[1] in run.stdout  # the report names the wrong import
