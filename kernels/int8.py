"""Symmetric INT8 quantization and the W8A8 GEMM that consumes it.

INT8 here is symmetric: codes in [-127, 127] (-128 is never produced), zero point 0,
value = code * scale with an fp32 scale per tensor or per row ("token"; for a weight
[N, K] a row is an output channel).

Numerics of `int8_quantize` (every backend, bit for bit):
1. x is widened to fp32 (exact for bf16/fp16);
2. dynamic scale = amax / 127 over the finite |x| of the tensor or of each row; 1
   where amax == 0 (all zeros, or no finite value), never below the smallest normal
   fp32; a given (static) scale is used as is;
3. q = x / scale in fp32 (a true division, not a multiply by the reciprocal);
4. NaN becomes 0, q is clamped to [-127, 127] and rounded to nearest even.
So values past the range (and +-inf) saturate to +-127.

Numerics of `int8_gemm` (y = a_dequant @ b_dequant^T):
1. acc[m, n] = sum_k a[m, k] * b[n, k], exact in int32 (K <= 133,000 keeps every
   sum in range: 127 * 127 * K < 2^31);
2. y = float(acc) * (a_scale[m] * b_scale[n]) (+ bias[n]) in fp32, where float()
   rounds to nearest even (exact below 2^24), rounded once to out_dtype.
Every backend computes the same fp32 expression in the same order, so the results
are bit-identical across backends.

The cpu backend packs b once (`prepack_int8_weight`) into 16-column groups with
four consecutive k per column ([N/16][K/4][16][4], K padded to 64): the operand
layout of AMX's TDPBSSD and of AVX512-VNNI's VPDPBUSD alike. Which kernel runs is
chosen at run time from the CPU (AMX-INT8, then AVX512-VNNI, then AVX2, then
scalar; `int8_gemm_isa()`), and can be lowered with REWARD_ENGINE_INT8_GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _native, custom_ops
from ._checks import check_dtype
from .backend import Op

INT8_MAX = 127.0
MAX_K = 133_000  # 127 * 127 * K < 2^31
GRANULARITIES = ("tensor", "token")
_GRANULARITY_CODES = {"tensor": 0, "token": 1}
_TINY = torch.finfo(torch.float32).tiny
PACK_N, PACK_K = 16, 64  # the packed weight's column group and K padding

# ----------------------------------------------------------------------------- reference


def int8_dynamic_scale_reference(x2: torch.Tensor, granularity: str) -> torch.Tensor:
    """Step 2 of the module docstring for x2 [rows, cols]: amax of the finite |x| / 127."""
    a = x2.float().abs()
    a = torch.where(a.isfinite(), a, 0.0)
    if granularity == "tensor":
        amax = a.amax() if a.numel() else torch.zeros((), device=x2.device)
    else:
        amax = a.amax(dim=1, keepdim=True) if a.shape[1] else torch.zeros(a.shape[0], 1)
    scale = torch.where(amax > 0, amax / INT8_MAX, 1.0)
    return scale.clamp_min(_TINY).to(x2.device)


def int8_quantize_reference(x2, scale, granularity):
    """x2 [rows, cols]; scale None (dynamic) or fp32 shaped for the granularity."""
    if scale is None:
        scale = int8_dynamic_scale_reference(x2, granularity)
    q = torch.nan_to_num(x2.float() / scale, nan=0.0, posinf=INT8_MAX, neginf=-INT8_MAX)
    return torch.round(q.clamp(-INT8_MAX, INT8_MAX)).to(torch.int8), scale


def int8_gemm_reference(a, b, a_scale, b_scale, out_dtype, bias):
    """Steps 1-2 of the module docstring: the integer sum in float64 (exact), then fp32."""
    acc = (a.double() @ b.double().T).float()
    y = acc * (a_scale.reshape(-1, 1) * b_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


# ----------------------------------------------------------------------------- cpu


@dataclass(slots=True)
class Int8PackedWeight:
    """An int8 weight [N, K] with the cpu backend's packed copy (when it has one)."""

    weight: torch.Tensor
    packed: torch.Tensor | None = None  # int8 [ceil(N/16) * ceil(K/64) * 1024]
    colsum: torch.Tensor | None = None  # int32 [ceil(N/16) * 16]: sum over k of each row

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    @property
    def device(self) -> torch.device:
        return self.weight.device


def _ceil(x: int, m: int) -> int:
    return -(-x // m) * m


def prepack_int8_weight(b: torch.Tensor, *, backend: str | None = None) -> Int8PackedWeight:
    """b [N, K] int8 -> the form int8_gemm runs fastest on its device (the cpu backend's
    packed layout, see the module docstring; others keep b as is)."""
    if b.dtype != torch.int8 or b.dim() != 2:
        raise ValueError(
            f"prepack_int8_weight: expected int8 [N, K], got {b.dtype} {tuple(b.shape)}"
        )
    if INT8_GEMM.choose(b.device, backend)[0] != "cpu":
        return Int8PackedWeight(b)
    n, k = b.shape
    b = b if b.stride(-1) == 1 else b.contiguous()
    packed = torch.empty(_ceil(n, PACK_N) * _ceil(max(k, 1), PACK_K), dtype=torch.int8)
    colsum = torch.empty(_ceil(n, PACK_N), dtype=torch.int32)
    _native.cpu_module().int8_pack_weight(
        packed.data_ptr(), colsum.data_ptr(), b.data_ptr(), n, k, b.stride(0)
    )
    return Int8PackedWeight(b, packed, colsum)


def int8_quantize_native(x2, scale, granularity):
    dynamic = scale is None
    if dynamic:
        shape = () if granularity == "tensor" else (x2.shape[0], 1)
        scale = torch.empty(shape, dtype=torch.float32, device=x2.device)
    out = torch.empty(x2.shape, dtype=torch.int8, device=x2.device)
    custom_ops.int8_quantize(out, x2, scale, _GRANULARITY_CODES[granularity], dynamic)
    return out, scale


def int8_gemm_cpu(a, b, a_scale, b_scale, out_dtype, bias, out=None):
    if not isinstance(b, Int8PackedWeight) or b.packed is None:
        b = prepack_int8_weight(b.weight if isinstance(b, Int8PackedWeight) else b, backend="cpu")
    n, k = b.weight.shape
    if out is None:
        out = torch.empty((a.shape[0], n), dtype=out_dtype, device=a.device)
    if out.numel():
        custom_ops.int8_gemm(out, a, b.packed, b.colsum, a_scale, b_scale, bias, n, k)
    return out


def _reference_with_out(a, b, a_scale, b_scale, out_dtype, bias, out=None):
    weight = b.weight if isinstance(b, Int8PackedWeight) else b
    y = int8_gemm_reference(a, weight, a_scale, b_scale, out_dtype, bias)
    return y if out is None else out.copy_(y)


INT8_QUANTIZE = Op(
    "int8_quantize",
    {"reference": int8_quantize_reference, "cpu": int8_quantize_native},
)
INT8_GEMM = Op("int8_gemm", {"reference": _reference_with_out, "cpu": int8_gemm_cpu})


def int8_gemm_isa() -> str:
    """The CPU kernel int8_gemm runs here: "amx", "avx512_vnni", "avx2" or "scalar"."""
    module = _native.cpu_module()
    if module is None:
        raise RuntimeError(f"kernels._C is not importable ({_native.import_error('_C')})")
    return module.int8_gemm_isa()


# ----------------------------------------------------------------------------- public ops


def int8_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float | None = None,
    granularity: str | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize x [..., H] (float32/bfloat16/float16) to symmetric int8: (codes, scale).

    scale=None computes the scale (dynamic), per token by default (one per row,
    shaped [..., 1]) or per tensor with granularity="tensor"; a given scale is
    static: one value (per tensor) unless granularity="token" ([rows] values).
    Numerics, saturation and NaN/inf handling: module docstring.
    """
    op = "int8_quantize"
    check_dtype(op, "x", x)
    if granularity is None:
        granularity = "token" if scale is None else "tensor"
    if granularity not in GRANULARITIES:
        raise ValueError(f"{op}: granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dim")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if scale is not None:
        numel = 1 if granularity == "tensor" else x2.shape[0]
        scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
        if scale.numel() != numel:
            raise ValueError(
                f"{op}: expected {numel} scale value(s), got shape {tuple(scale.shape)}"
            )
        scale = scale.reshape(() if granularity == "tensor" else (numel, 1)).contiguous()
    q, s = INT8_QUANTIZE.select(x.device, backend)(x2, scale, granularity)
    if granularity == "token":
        s = s.reshape(*x.shape[:-1], 1)
    return q.reshape(x.shape), s


def int8_gemm(
    a: torch.Tensor,
    b: torch.Tensor | Int8PackedWeight,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """y [M, N] = (a * a_scale) @ (b * b_scale)^T (+ bias), in out_dtype.

    a [M, K] int8; b [N, K] int8, or prepack_int8_weight(b) (pack weights once: the
    cpu backend otherwise packs b on every call); a_scale fp32 with 1 (per tensor)
    or M (per token) values, b_scale 1 or N (per channel); bias [N] in out_dtype;
    out_dtype float32, bfloat16 or float16. `out` ([M, N] out_dtype, contiguous
    rows) receives the result. Numerics: module docstring.
    """
    op = "int8_gemm"
    weight = b.weight if isinstance(b, Int8PackedWeight) else b
    if a.dtype != torch.int8 or weight.dtype != torch.int8:
        raise ValueError(f"{op}: a and b must be int8; got {a.dtype}, {weight.dtype}")
    if a.dim() != 2 or weight.dim() != 2 or a.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{op}: expected a [M, K] and b [N, K]; got {tuple(a.shape)}, {tuple(weight.shape)}"
        )
    if a.shape[1] > MAX_K:
        raise ValueError(f"{op}: K = {a.shape[1]} exceeds {MAX_K} (int32 sums could overflow)")
    if out_dtype not in _native.SUPPORTED_DTYPES:
        raise ValueError(f"{op}: out_dtype {out_dtype} is not float32, bfloat16 or float16")
    if weight.device != a.device:
        raise ValueError(f"{op}: b is on {weight.device} but a is on {a.device}")
    m, n = a.shape[0], weight.shape[0]
    if a_scale.numel() not in (1, m) or b_scale.numel() not in (1, n):
        raise ValueError(
            f"{op}: a_scale needs 1 or {m} values and b_scale 1 or {n}; got "
            f"{tuple(a_scale.shape)}, {tuple(b_scale.shape)}"
        )
    a_scale = a_scale.to(device=a.device, dtype=torch.float32).reshape(-1).contiguous()
    b_scale = b_scale.to(device=a.device, dtype=torch.float32).reshape(-1).contiguous()
    if bias is not None:
        if bias.shape != (n,) or bias.dtype != out_dtype or bias.device != a.device:
            raise ValueError(f"{op}: bias must be [{n}] {out_dtype} on {a.device}")
        bias = bias.contiguous()
    if out is not None and (
        out.shape != (m, n) or out.dtype != out_dtype or out.device != a.device
        or (m and out.stride(-1) != 1)
    ):  # fmt: skip
        raise ValueError(f"{op}: out must be [{m}, {n}] {out_dtype} with contiguous rows")
    a = a if a.stride(-1) == 1 or a.numel() == 0 else a.contiguous()
    return INT8_GEMM.select(a.device, backend)(a, b, a_scale, b_scale, out_dtype, bias, out)
