"""Where the C++ kernels run their parallel loops: on torch's OpenMP team by default
(found among the loaded libraries, never a second runtime), on their own thread pool
with REWARD_ENGINE_CPU_THREADING=pool. Both give bit-identical results."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

import kernels
from kernels import _native

TORCH_USES_OPENMP = "OpenMP" in torch.__config__.parallel_info()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def work(seed=0):
    """Ops large enough to be split across threads."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 2 * 1536, generator=g).to(torch.bfloat16)
    h = torch.randn(512, 1024, generator=g).to(torch.bfloat16)
    w = torch.ones(1024, dtype=torch.bfloat16)
    return lambda: (kernels.silu_mul(x, backend="cpu"), kernels.rms_norm(h, w, 1e-5, backend="cpu"))


@pytest.mark.skipif(not TORCH_USES_OPENMP, reason="this torch build does not use OpenMP")
def test_default_is_the_openmp_runtime_torch_loaded(cpu_module):
    runtime = cpu_module.threading_runtime()
    assert runtime.startswith("openmp "), runtime
    path = runtime.removeprefix("openmp ")
    with open("/proc/self/maps") as maps:
        loaded = {line.split()[-1] for line in maps if "/" in line}
    assert path in loaded, f"{path} is not a library this process had loaded"


def test_pool_and_openmp_give_identical_results(cpu_module, two_threads):
    run = work()
    try:
        cpu_module.use_thread_pool()
        assert cpu_module.threading_runtime() == "pool"
        on_pool = run()
        cpu_module.use_process_openmp()
        on_openmp = run()
    finally:
        if os.environ.get(_native.THREADING_ENV) != "pool":
            cpu_module.use_process_openmp()
    for a, b in zip(on_pool, on_openmp, strict=True):
        assert torch.equal(a, b)


def test_concurrent_callers_each_get_their_own_result(cpu_module, two_threads):
    runs = [work(seed) for seed in range(4)]
    expected = [run() for run in runs]
    results: dict[int, tuple] = {}

    def call(i):
        for _ in range(5):
            results[i] = runs[i]()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, exp in enumerate(expected):
        for a, b in zip(results[i], exp, strict=True):
            assert torch.equal(a, b), f"caller {i}"


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_environment_variable_selects_the_pool(cpu_module):
    code = "from kernels import _native; print(_native.cpu_module().threading_runtime())"
    proc = run_python(code, REWARD_ENGINE_CPU_THREADING="pool")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pool"


def test_unknown_threading_value_is_a_clear_error(cpu_module):
    proc = run_python(
        "from kernels import _native; _native.cpu_module()", REWARD_ENGINE_CPU_THREADING="tbb"
    )
    assert proc.returncode != 0
    assert "REWARD_ENGINE_CPU_THREADING='tbb': expected 'openmp' or 'pool'" in proc.stderr
