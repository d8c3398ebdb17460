"""FP8 E4M3 quantization and the W8A8 GEMM in Triton (GPUs with FP8: sm_89 and newer).

Numerics are those of kernels/fp8.py (its module docstring), step by step:
fp8_quantize
1. dynamic scales: the amax of the finite |x| per row (`_amax_rows_kernel`, for
   "token" and, reduced once more, "tensor") or per column (`_amax_cols_kernel`,
   "channel"); scale = amax / 448 (1 where amax == 0, at least the smallest normal
   fp32), formed with the same torch ops as the reference so it is bit-identical;
2. q = x / scale in fp32 (div_rn: a correctly rounded division, never a reciprocal);
3. q clamped to [-448, 448] (NaN kept: the comparisons are false for it) and
   converted to E4M3 with round to nearest even (`_quantize_kernel`).
fp8_gemm
1. tiles of a [M, K] and b [N, K] (both K-major, as FP8 tensor cores want them) are
   multiplied by tl.dot with fp32 accumulation;
2. y = acc * (a_scale[m] * b_scale[n]) + bias[n] in fp32, rounded once to out_dtype.
The GEMM's tile shape is chosen by @triton.autotune per (M, N, K) among GEMM_CONFIGS;
REWARD_ENGINE_TRITON_GEMM_CONFIG=i pins GEMM_CONFIGS[i] instead (no tuning: for tests,
which would otherwise compile every config for every shape, and for deployments that
want no tuning pass at startup). Triton's interpreter rounds FP8 unreliably, so these
kernels are tested on GPUs only.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._launch import launch, next_power_of_2

FP8_MAX = 448.0
_TINY = torch.finfo(torch.float32).tiny
BLOCK_COLS = 1024


@triton.jit
def _amax_rows_kernel(amax_ptr, x_ptr, cols, x_stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    running = tl.zeros([BLOCK], tl.float32)
    for start in range(0, cols, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        a = tl.abs(tl.load(x_ptr + row * x_stride + offs, mask=offs < cols, other=0.0))
        a = a.to(tl.float32)
        running = tl.maximum(running, tl.where(a < float("inf"), a, 0.0))  # NaN, inf -> 0
    tl.store(amax_ptr + row, tl.max(running, axis=0))


@triton.jit
def _amax_cols_kernel(amax_ptr, x_ptr, rows, cols, x_stride, BLOCK_R: tl.constexpr,
                      BLOCK_C: tl.constexpr):  # fmt: skip
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    running = tl.zeros([BLOCK_C], tl.float32)
    for start in range(0, rows, BLOCK_R):
        offs_r = start + tl.arange(0, BLOCK_R)
        mask = (offs_r < rows)[:, None] & (offs_c < cols)[None, :]
        ptrs = x_ptr + offs_r[:, None].to(tl.int64) * x_stride + offs_c[None, :]
        a = tl.abs(tl.load(ptrs, mask=mask, other=0.0)).to(tl.float32)
        running = tl.maximum(running, tl.max(tl.where(a < float("inf"), a, 0.0), axis=0))
    tl.store(amax_ptr + offs_c, running, mask=offs_c < cols)


@triton.jit
def _quantize_kernel(out_ptr, x_ptr, scale_ptr, cols, out_stride, x_stride,
                     SCALE_MODE: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """SCALE_MODE 0: one scale; 1: one per row; 2: one per column."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * x_stride + offs, mask=mask, other=0.0).to(tl.float32)
    if SCALE_MODE == 0:
        scale = tl.load(scale_ptr)
    elif SCALE_MODE == 1:
        scale = tl.load(scale_ptr + row)
    else:
        scale = tl.load(scale_ptr + offs, mask=mask, other=1.0)
    q = tl.math.div_rn(x, scale)
    q = tl.where(q > 448.0, 448.0, tl.where(q < -448.0, -448.0, q))
    tl.store(out_ptr + row * out_stride + offs, q.to(tl.float8e4nv), mask=mask)


GEMM_CONFIG_ENV = "REWARD_ENGINE_TRITON_GEMM_CONFIG"
GEMM_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                  num_stages=stages, num_warps=warps)
    for bm, bn, bk, stages, warps in [
        (128, 256, 128, 3, 8), (256, 128, 128, 3, 8), (128, 128, 128, 4, 8),
        (128, 128, 128, 3, 4), (128, 64, 128, 4, 4), (64, 128, 128, 4, 4),
        (64, 64, 128, 4, 4), (128, 256, 64, 4, 8),
    ]
]  # fmt: skip


def pinned_gemm_config() -> triton.Config | None:
    """GEMM_CONFIGS[i] when REWARD_ENGINE_TRITON_GEMM_CONFIG=i is set, else None (tune)."""
    value = os.environ.get(GEMM_CONFIG_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) >= len(GEMM_CONFIGS):
        raise ValueError(
            f"{GEMM_CONFIG_ENV}={value!r}: give an index into GEMM_CONFIGS, 0 to "
            f"{len(GEMM_CONFIGS) - 1}, or unset it to autotune"
        )
    return GEMM_CONFIGS[int(value)]


@triton.jit
def _fp8_gemm_kernel(
    out_ptr, a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, bias_ptr,
    M, N, K, out_stride, a_stride, b_stride,
    A_PER_ROW: tl.constexpr, B_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # Grouped ordering: GROUP_M row tiles share each column tile while it is in L2.
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % group_rows
    pid_n = (pid % (GROUP_M * tiles_n)) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * a_stride + offs_k[None, :]
    b_ptrs = b_ptr + offs_n[:, None].to(tl.int64) * b_stride + offs_k[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k[None, :] < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & k_ok, other=0.0)
        b = tl.load(b_ptrs, mask=(offs_n[:, None] < N) & k_ok, other=0.0)
        acc = tl.dot(a, tl.trans(b), acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    m_ok, n_ok = offs_m < M, offs_n < N
    if A_PER_ROW:
        a_scale = tl.load(a_scale_ptr + offs_m, mask=m_ok, other=1.0)
    else:
        a_scale = tl.load(a_scale_ptr + tl.zeros([BLOCK_M], tl.int32))
    if B_PER_ROW:
        b_scale = tl.load(b_scale_ptr + offs_n, mask=n_ok, other=1.0)
    else:
        b_scale = tl.load(b_scale_ptr + tl.zeros([BLOCK_N], tl.int32))
    y = acc * (a_scale[:, None] * b_scale[None, :])
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * out_stride + offs_n[None, :]
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


_fp8_gemm_tuned = triton.autotune(configs=GEMM_CONFIGS, key=["M", "N", "K"])(_fp8_gemm_kernel)


def _require_fp8_gpu(op: str, device: torch.device) -> None:
    if device.type != "cuda":
        raise RuntimeError(
            f"triton {op}: FP8 kernels run on CUDA tensors only (Triton's interpreter rounds "
            "FP8 unreliably); use the cpu or reference backend on CPU"
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise RuntimeError(f"triton {op}: E4M3 needs sm_89 or newer, this GPU is sm_{major}{minor}")


def _dynamic_scale(amax: torch.Tensor) -> torch.Tensor:
    """Step 1's scale from the amax, with the reference's torch ops (bit-identical)."""
    return torch.where(amax > 0, amax / FP8_MAX, 1.0).clamp_min(_TINY)


def fp8_quantize_triton(x2, scale, granularity):
    """kernels.fp8_quantize's triton backend: x2 [rows, cols] with a unit column stride;
    scale None (dynamic) or fp32 shaped for the granularity (checked by kernels.fp8)."""
    _require_fp8_gpu("fp8_quantize", x2.device)
    rows, cols = x2.shape
    out = torch.empty(x2.shape, dtype=torch.float8_e4m3fn, device=x2.device)
    if scale is None:
        if granularity == "channel":
            amax = torch.zeros(cols, dtype=torch.float32, device=x2.device)
            if rows and cols:
                launch(_amax_cols_kernel, (triton.cdiv(cols, 128),), x2.device, amax, x2, rows,
                       cols, x2.stride(0), BLOCK_R=32, BLOCK_C=128)  # fmt: skip
        else:
            amax = torch.zeros(rows, dtype=torch.float32, device=x2.device)
            if rows and cols:
                block = min(BLOCK_COLS, next_power_of_2(cols))
                launch(_amax_rows_kernel, (rows,), x2.device, amax, x2, cols, x2.stride(0),
                       BLOCK=block)  # fmt: skip
            amax = amax.reshape(rows, 1) if granularity == "token" else (
                amax.amax() if rows else torch.zeros((), device=x2.device))  # fmt: skip
        scale = _dynamic_scale(amax)
    if rows and cols:
        mode = {"tensor": 0, "token": 1, "channel": 2}[granularity]
        block = min(BLOCK_COLS, next_power_of_2(cols))
        launch(_quantize_kernel, (rows, triton.cdiv(cols, block)), x2.device, out, x2,
               scale.contiguous(), cols, out.stride(0), x2.stride(0), SCALE_MODE=mode,
               BLOCK=block)  # fmt: skip
    return out, scale


def fp8_gemm_triton(a, b, a_scale, b_scale, out_dtype, bias):
    """kernels.fp8_gemm's triton backend: a [M, K], b [N, K] E4M3 with unit last
    strides, flat fp32 scales (1 or M, 1 or N values), bias [N] or None."""
    _require_fp8_gpu("fp8_gemm", a.device)
    m, k = a.shape
    n = b.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    if k == 0:
        out.zero_()
        return out.add_(bias) if bias is not None else out

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    kernel, tile = _fp8_gemm_tuned, {}
    config = pinned_gemm_config()
    if config is not None:
        kernel = _fp8_gemm_kernel
        tile = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    launch(
        kernel, grid, a.device,
        out, a, b, a_scale, b_scale, bias if bias is not None else a_scale,
        m, n, k, out.stride(0), a.stride(0), b.stride(0),
        A_PER_ROW=a_scale.numel() != 1 or m == 1, B_PER_ROW=b_scale.numel() != 1 or n == 1,
        HAS_BIAS=bias is not None, **tile,
    )  # fmt: skip
    return out
