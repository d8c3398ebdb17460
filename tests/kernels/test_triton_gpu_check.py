"""bench/gpu_check.sh (the one-shot GPU build, test and benchmark run) on a machine
without a GPU: it parses, its dry run lists every step, the real run stops in the
preflight with a clear message instead of starting a build, and a whole run against
stand-ins for python3 and nvcc writes, prints and hands back its summary."""

from __future__ import annotations

import os
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
    for step in ("build", "tests", "bench", "e2e", "summary"):
        assert f"== {step}" in proc.stdout
    assert "setup.py build_ext --inplace" in proc.stdout
    assert "pytest -q -m gpu" in proc.stdout
    assert "bench/kernels.py --device cuda" in proc.stdout
    assert "bench/synthetic.py --device cuda --shape 70b --quantization fp8" in proc.stdout
    assert "--shape 8b --quantization none,fp8" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_the_preflight_stops_with_a_reason():
    proc = run(PYTHON=sys.executable)
    assert proc.returncode == 1
    assert proc.stderr.startswith("gpu_check.sh: ")
    assert "== build" not in proc.stdout  # nothing was started


# Plays python3 for every call the script makes, as a GPU machine would answer: the
# preflight finds everything, the build succeeds, one GPU test fails, the benchmark
# writes its report (with the two sections the summary carries).
FAKE_PYTHON = r"""#!/usr/bin/env bash
case "$1" in
  -)  script=$(cat)
      case "$script" in
        *get_device_capability*) echo "90a|Fake H100 80GB" ;;
        *) echo "" ;;
      esac ;;
  -c) case "$2" in
        *xdist*) exit 0 ;;
        *) echo "torch 2.11.0 (CUDA 13.0), triton 3.6.0, Python 3.12.3" ;;
      esac ;;
  setup.py) echo "REWARD_ENGINE_CUDA_ARCHS=$REWARD_ENGINE_CUDA_ARCHS"; echo "built" ;;
  -m) echo "args: $*"
      echo "FAILED tests/kernels/test_cuda_ops.py::test_x - AssertionError: 3 of 9 differ"
      echo "1 failed, 393 passed in 61.2s"; exit 1 ;;
  bench/kernels.py)
      while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
      printf '%s\n' "# Kernel microbenchmarks" "" "## Targets" "" "| target | met |" \
        "| rms_norm | yes |" "" "## Fastest GPU backend per op" "" "| op | faster |" \
        "| paged_prefill_attention | triton |" "" "## rms_norm: 70b, bf16" "" "| x |" > "$out.md"
      echo '{}' > "$out.json" ;;
  bench/synthetic.py)
      while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
      printf '%s\n' "# Synthetic" "" "| shape | weights | tok/s |" "|---|---|---|" \
        "| ${out##*_} | fp8 | 1234 |" > "$out.md"
      echo '{}' > "$out.json" ;;
  *) echo "unexpected call: $*" >&2; exit 3 ;;
esac
"""


def test_a_full_run_with_stand_ins_writes_the_summary_and_fills_out(tmp_path):
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    (tmp_path / "cuda" / "bin").mkdir(parents=True)
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.write_text("#!/usr/bin/env bash\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    for exe in (python, nvcc):
        exe.chmod(0o755)
    results, out = tmp_path / "results", tmp_path / "out"
    out.mkdir()
    proc = run(PYTHON=str(python), CUDA_HOME=str(tmp_path / "cuda"),
               GPU_CHECK_RESULTS=str(results), OUT=str(out))  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a GPU test failed
    assert "== build: ok" in proc.stdout and "== bench: ok" in proc.stdout
    assert "== e2e: ok" in proc.stdout
    assert "== tests: FAILED (exit 1)" in proc.stdout
    summary = next(results.glob("gpu_check_Fake_H100_80GB_*.md")).read_text()
    assert "# GPU check: Fake H100 80GB" in summary
    assert "built for sm_90a" in summary and "nvcc 13.0" in summary
    assert "| tests | FAILED (exit 1) |" in summary
    assert "FAILED tests/kernels/test_cuda_ops.py::test_x" in summary  # the failure, named
    assert "| rms_norm | yes |" in summary  # the targets table
    assert "| paged_prefill_attention | triton |" in summary  # the fastest backend per op
    assert "rms_norm: 70b" not in summary  # and no more of the report
    assert "| 70b | fp8 | 1234 |" in summary and "| 8b | fp8 | 1234 |" in summary
    assert summary in proc.stdout  # printed, so it is in the run's output
    tests_log = next(results.glob("gpu_check_logs_*/tests.log")).read_text()
    workers = min(len(os.sched_getaffinity(0)), 8)  # xdist workers, where it is installed
    assert f"-m pytest -q -m gpu -p no:cacheprovider -rfE --tb=short -n {workers} " in tests_log
    copied = sorted(p.name for p in out.iterdir())
    assert len(copied) == 11, copied
    assert {"build.log", "tests.log", "bench.log", "e2e.log", "kernels_cuda_Fake_H100_80GB.md",
            "e2e_synthetic_Fake_H100_80GB_70b.md"} <= set(copied)  # fmt: skip
