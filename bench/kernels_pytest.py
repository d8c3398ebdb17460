"""bench/kernels.py's cases under pytest-benchmark: every op, every backend that runs
here and its PyTorch baseline, one benchmark group per op and shape (pytest-benchmark
prints each group with every member's time relative to the group's fastest).

    pytest bench/kernels_pytest.py                          # CPU, the quick shapes
    BENCH_FULL=1 pytest bench/kernels_pytest.py             # the report's shapes
    BENCH_DEVICE=cuda pytest bench/kernels_pytest.py        # the GPU backends
    pytest bench/kernels_pytest.py -k "fused_add_rms_norm"  # one op
    pytest bench/kernels_pytest.py --benchmark-save=base    # then --benchmark-compare

bench/kernels.py stays the report (rooflines and targets measured in the same run,
implementations timed in turns so that load from other processes hits them alike);
this file measures the same work the pytest-benchmark way, for saving and comparing
runs. `make test` does not collect it (pytest's testpaths is tests/).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/kernels.py imports its sibling microbench.py
# loaded by path under another name: as `kernels` it would shadow the kernels package
_spec = importlib.util.spec_from_file_location("bench_kernels", HERE / "kernels.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
QUICK = os.environ.get("BENCH_FULL", "0") != "1"


def _params():
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason="no CUDA GPU"))]
    builders, _ = bench.plan(DEVICE, QUICK)
    params = []
    for build in builders:
        for case in build():
            for impl, fn in case.runs.items():
                params.append(pytest.param(case, impl, fn, id=f"{case.op}|{case.shape}|{impl}"))
    return params


@pytest.mark.parametrize("case, impl, fn", _params())
def test_kernel(benchmark, case, impl, fn):
    benchmark.group = f"{case.op}: {case.shape}, {str(case.dtype)[6:]}"
    benchmark.extra_info.update(
        impl=impl, baseline=case.baseline, bytes=case.bytes, flops=case.flops
    )
    if DEVICE.type == "cuda":

        def run():
            fn()
            torch.cuda.synchronize(DEVICE)

        benchmark(run)
    else:
        benchmark(fn)
