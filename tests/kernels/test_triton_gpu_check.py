"""bench/gpu_check.sh (the one-shot GPU build, test and benchmark run) on a machine
without a GPU: it parses, its dry run lists every step, and the real run stops in the
preflight with a clear message instead of starting a build."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", **env})  # fmt: skip


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_dry_run_lists_the_steps():
    proc = run("--dry-run")
    assert proc.returncode == 0, proc.stderr
    for step in ("build", "tests", "bench", "summary"):
        assert f"== {step}" in proc.stdout
    assert "setup.py build_ext --inplace" in proc.stdout
    assert "pytest -q -m gpu" in proc.stdout
    assert "bench/kernels.py --device cuda" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_the_preflight_stops_with_a_reason():
    proc = run(PYTHON=sys.executable)
    assert proc.returncode == 1
    assert proc.stderr.startswith("gpu_check.sh: ")
    assert "== build" not in proc.stdout  # nothing was started
