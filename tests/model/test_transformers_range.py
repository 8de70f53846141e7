"""The reference model on the lowest transformers stepcall allows (5.17; pyproject: >=5.17,<5.20).

The normal suite runs on the venv's own transformers (the highest allowed). ``make install``
also puts transformers 5.17.0 (with the huggingface_hub 1.x it needs) into
``$(VENV)/alt/transformers-5.17``; this test runs, in a subprocess with that folder first on
PYTHONPATH, the tests that prove the KV cache and the audio path, and checks that the very
process running them imported 5.17.0 from that folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

LOW_VERSION = "5.17.0"
#: Override with the folder's path where the venv is not ``sys.prefix``.
LOW_DIR_ENV = "STEPCALL_TRANSFORMERS_LOW_DIR"
REPO = Path(__file__).resolve().parents[2]
TESTS = [
    "tests/model/test_hf_compat.py",
    "tests/model/test_generate.py",
    "tests/model/test_modeling.py",
    "tests/model/test_loader.py",
    "tests/model/test_context_checkpoint.py",
]
# Runs the tests and, once pytest has loaded its plugins and before it collects, prints which
# transformers this process imported (the module the tests then use).
_RUNNER = """
import sys, pytest
class ReportTransformers:
    def pytest_sessionstart(self, session):
        import transformers
        print("TRANSFORMERS", transformers.__version__, transformers.__file__, flush=True)
sys.exit(pytest.main(sys.argv[1:], plugins=[ReportTransformers()]))
"""


def _low_dir() -> Path:
    return Path(os.environ.get(LOW_DIR_ENV) or Path(sys.prefix) / "alt" / "transformers-5.17")


def test_reference_model_tests_pass_on_lowest_transformers() -> None:
    low = _low_dir()
    if not (low / "transformers" / "__init__.py").is_file():
        pytest.fail(
            f"transformers {LOW_VERSION} is not installed in {low}: run `make install` (it puts "
            f"the lowest allowed transformers there), or set {LOW_DIR_ENV}"
        )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(low), *filter(None, [env.get("PYTHONPATH")])])
    # one seed of the context checkpoint is enough here (the normal suite runs both)
    args = ["-p", "no:cacheprovider", "-q", "-k", "not seed1", *TESTS]
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    m = re.search(r"^TRANSFORMERS (\S+) (\S+)$", proc.stdout, re.M)
    assert m, out[-3000:]
    version, path = m.groups()
    assert version == LOW_VERSION, f"the subprocess imported transformers {version} from {path}"
    assert Path(path).resolve().is_relative_to(low.resolve()), path
    summary = out.strip().splitlines()[-1]
    print(f"transformers {version}: {summary}")
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", summary)
    # 59 tests today; a much smaller count means a file or its tests went missing
    assert passed and int(passed.group(1)) >= 50 and "failed" not in summary, summary
