"""Fixtures for the Triton backend tests.

`device_dtype` runs a test on CPU tensors through Triton's interpreter (fp32, fp16) and
on CUDA tensors with compiled kernels (also bf16; marked `gpu`). Triton picks its mode
once per process, when it is first imported: tests/conftest.py sets TRITON_INTERPRET=1
on machines without a GPU, so there the interpreter cases run and the CUDA cases skip;
with a GPU the CUDA cases run and the interpreter cases skip (run them in a process
started with TRITON_INTERPRET=1 and CUDA_VISIBLE_DEVICES=""). The interpreter has no
bf16 arithmetic and rounds FP8 unreliably: bf16 and FP8 are tested on a GPU only.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_GPU = torch.cuda.is_available()

requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

_GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")]
# (device, dtype): the interpreter in fp32/fp16, the GPU in fp32/fp16/bf16
DEVICE_DTYPES = [
    pytest.param(("cpu", torch.float32), id="interpreter-fp32"),
    pytest.param(("cpu", torch.float16), id="interpreter-fp16"),
    pytest.param(("cuda", torch.float32), id="cuda-fp32", marks=_GPU_MARKS),
    pytest.param(("cuda", torch.float16), id="cuda-fp16", marks=_GPU_MARKS),
    pytest.param(("cuda", torch.bfloat16), id="cuda-bf16", marks=_GPU_MARKS),
]


@pytest.fixture(params=DEVICE_DTYPES)
def device_dtype(request, monkeypatch) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) to run the triton backend on, or a skip saying why it cannot run."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (it is in the `test` extra)")
    from kernels.triton import _launch

    device, dtype = torch.device(request.param[0]), request.param[1]
    reason = _launch.unavailable_reason(device)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.delenv("REWARD_ENGINE_KERNEL_BACKEND", raising=False)
    return device, dtype
