"""FP8 E4M3 quantization and the W8A8 GEMM that consumes it.

E4M3 here is torch.float8_e4m3fn: 4 exponent bits (bias 7), 3 mantissa bits, no
infinities, largest finite value 448, subnormals down to 2^-9.

Numerics of `fp8_quantize` (every backend, bit for bit):
1. x is widened to fp32 (exact for bf16/fp16);
2. dynamic scale = amax / 448 over the finite |x| of the tensor, of each row
   ("token") or of each column ("channel"); 1 where amax == 0 (all zeros, or no
   finite value), and never below the smallest normal fp32; a given (static)
   scale is used as is;
3. q = x / scale in fp32 (a true division, not a multiply by the reciprocal);
4. q is clamped to [-448, 448] and rounded to nearest even to E4M3.
So values past the range saturate to +-448, +-inf saturate to +-448, and NaN
stays NaN (NaN and inf never enlarge a dynamic scale).

Numerics of `fp8_gemm` (y = a_dequant @ b_dequant^T):
1. decode a [M, K] and b [N, K] to fp32 (exact);
2. acc = a32 @ b32^T accumulated in fp32 (the cpu backend sums k in ascending
   order within 256-wide blocks; products of E4M3 values are exact in fp32);
3. y = acc * (a_scale[m] * b_scale[n]) + bias[n] in fp32, rounded once to out_dtype.
"""

from __future__ import annotations

import math

import torch

from . import _native, custom_ops
from ._checks import check_dtype
from .backend import Op, triton_impl

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
GRANULARITIES = ("tensor", "token", "channel")
_GRANULARITY_CODES = {"tensor": 0, "token": 1, "channel": 2}  # csrc/cpu/ops.h Fp8Granularity
_TINY = torch.finfo(torch.float32).tiny

# ----------------------------------------------------------------------------- reference


def _scale_shape(x2: torch.Tensor, granularity: str) -> tuple[int, ...]:
    return {"tensor": (), "token": (x2.shape[0], 1), "channel": (x2.shape[1],)}[granularity]


def dynamic_scale_reference(x2: torch.Tensor, granularity: str) -> torch.Tensor:
    """Step 2 of the module docstring for x2 [rows, cols]: amax of the finite |x| / 448."""
    a = x2.float().abs()
    a = torch.where(a.isfinite(), a, 0.0)
    if granularity == "tensor":
        amax = a.amax() if a.numel() else torch.zeros(())
    elif granularity == "token":
        amax = a.amax(dim=1, keepdim=True) if a.shape[1] else torch.zeros(a.shape[0], 1)
    else:
        amax = a.amax(dim=0) if a.shape[0] else torch.zeros(a.shape[1])
    scale = torch.where(amax > 0, amax / FP8_MAX, 1.0)
    return scale.clamp_min(_TINY).to(x2.device)


def fp8_quantize_reference(x2, scale, granularity):
    """x2 [rows, cols]; scale None (dynamic) or fp32 shaped for the granularity."""
    if scale is None:
        scale = dynamic_scale_reference(x2, granularity)
    q = (x2.float() / scale).clamp(-FP8_MAX, FP8_MAX)
    return q.to(FP8_DTYPE), scale


def fp8_gemm_reference(a, b, a_scale, b_scale, out_dtype, bias):
    """Steps 1-3 of the module docstring with torch's fp32 matmul (any summation order)."""
    acc = a.float() @ b.float().T
    y = acc * (a_scale.reshape(-1, 1) * b_scale.reshape(1, -1))
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


# ----------------------------------------------------------------------------- cpu


def fp8_quantize_native(x2, scale, granularity):
    """cpu and cuda backends: torch.ops.reward_engine.fp8_quantize on x's device."""
    dynamic = scale is None
    if dynamic:
        scale = torch.empty(_scale_shape(x2, granularity), dtype=torch.float32, device=x2.device)
    out = torch.empty(x2.shape, dtype=FP8_DTYPE, device=x2.device)
    custom_ops.fp8_quantize(
        out.view(torch.uint8), x2, scale, _GRANULARITY_CODES[granularity], dynamic
    )
    return out, scale


def fp8_gemm_native(a, b, a_scale, b_scale, out_dtype, bias):
    out = torch.empty((a.shape[0], b.shape[0]), dtype=out_dtype, device=a.device)
    if out.numel():
        u8 = torch.uint8
        custom_ops.fp8_gemm(out, a.view(u8), b.view(u8), a_scale, b_scale, bias)
    return out


fp8_quantize_cpu = fp8_quantize_cuda = fp8_quantize_native
fp8_gemm_cpu = fp8_gemm_native


def fp8_gemm_cuda(a, b, a_scale, b_scale, out_dtype, bias):
    """cuBLASLt FP8 GEMM (csrc/cuda/fp8_gemm.cu): needs sm_89+, K and the row strides
    of a and b multiples of 16, 16-byte aligned data."""
    aligned = all(
        t.shape[1] % 16 == 0 and t.stride(0) % 16 == 0 and t.data_ptr() % 16 == 0 for t in (a, b)
    )
    if not aligned and a.numel() and b.numel():
        raise ValueError(
            "fp8_gemm: the cuda backend (cuBLASLt) needs K and the row strides of a and b to be "
            f"multiples of 16; got a {tuple(a.shape)} stride {a.stride()}, b {tuple(b.shape)} "
            f'stride {b.stride()}. Pad K, or use backend="triton" or "reference".'
        )
    return fp8_gemm_native(a, b, a_scale, b_scale, out_dtype, bias)


# ----------------------------------------------------------------------------- public ops

FP8_QUANTIZE = Op(
    "fp8_quantize",
    {
        "reference": fp8_quantize_reference,
        "cpu": fp8_quantize_cpu,
        "cuda": fp8_quantize_cuda,
        "triton": triton_impl("fp8", "fp8_quantize_triton"),
    },
)
FP8_GEMM = Op(
    "fp8_gemm",
    {
        "reference": fp8_gemm_reference,
        "cpu": fp8_gemm_cpu,
        "cuda": fp8_gemm_cuda,
        "triton": triton_impl("fp8", "fp8_gemm_triton"),
    },
)


def static_scale(op: str, scale, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The fp8_scale= argument of the FP8-output ops as a 0-dim fp32 tensor on x's device."""
    if out is not None:
        raise ValueError(f"{op}: out= and fp8_scale= cannot be combined")
    return _as_scale(op, scale, 1, (), x.device)


def kv_cache_scales(op: str, act_dtype: torch.dtype, key_cache: torch.Tensor, k_scale, v_scale):
    """The k_scale= / v_scale= arguments of the paged-KV ops: (None, None) for a cache in
    the activation dtype, else both as 0-dim fp32 tensors on the cache's device.

    An E4M3 cache needs both (there is no implicit default: an uncalibrated engine passes
    1.0 on purpose); a cache in the activation dtype takes neither. A scale given as a
    number or a CPU tensor is checked to be finite and > 0 (a CUDA tensor is not: that
    would synchronize the stream; nor is a tensor under torch.compile, which cannot
    branch on its value).
    """
    if key_cache.dtype != FP8_DTYPE:
        if key_cache.dtype != act_dtype:
            raise ValueError(
                f"{op}: the caches must be {act_dtype} (the activation dtype) or {FP8_DTYPE}, "
                f"got {key_cache.dtype}"
            )
        if k_scale is not None or v_scale is not None:
            raise ValueError(
                f"{op}: k_scale/v_scale apply to {FP8_DTYPE} caches only; these are "
                f"{key_cache.dtype}"
            )
        return None, None
    if k_scale is None or v_scale is None:
        raise ValueError(
            f"{op}: a {FP8_DTYPE} cache needs k_scale and v_scale (per-tensor fp32 scales, "
            "one per layer: cache = e4m3(x / scale)); pass 1.0 for an uncalibrated cache"
        )
    scales = []
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        if isinstance(scale, torch.Tensor):
            check = scale.device.type == "cpu" and not torch.compiler.is_compiling()
            value = float(scale.reshape(-1)[0]) if check and scale.numel() == 1 else 1.0
        else:
            value = float(scale)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{op}: {name} must be finite and > 0, got {value}")
        scales.append(_as_scale(op, scale, 1, (), key_cache.device))
    return scales[0], scales[1]


def _as_scale(op: str, scale, numel: int, shape: tuple[int, ...], device) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
    if scale.numel() != numel:
        raise ValueError(f"{op}: expected {numel} scale value(s), got shape {tuple(scale.shape)}")
    return scale.reshape(shape).contiguous()


def fp8_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float | None = None,
    granularity: str = "tensor",
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize x [..., H] (float32/bfloat16/float16) to E4M3; returns (x_fp8, scale).

    granularity "tensor": one scale (a 0-dim fp32 tensor); "token": one per row,
    shaped [..., 1]; "channel": one per column (last dim), shaped [H]. For an
    fp8_gemm weight b [N, K] the per-output-channel scale is one per ROW of b:
    quantize it with granularity="token". scale=None computes the scale (dynamic);
    a given scale (static; any shape with the right number of values) is used as is.
    Numerics, saturation and NaN/inf handling: module docstring.
    """
    op = "fp8_quantize"
    check_dtype(op, "x", x)
    if granularity not in GRANULARITIES:
        raise ValueError(f"{op}: granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dim")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if scale is not None:
        shape = _scale_shape(x2, granularity)
        numel = {"tensor": 1, "token": x2.shape[0], "channel": x2.shape[1]}[granularity]
        scale = _as_scale(op, scale, numel, shape, x.device)
    q, s = FP8_QUANTIZE.select(x.device, backend)(x2, scale, granularity)
    if granularity == "token":
        s = s.reshape(*x.shape[:-1], 1)
    return q.reshape(x.shape), s


def fp8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """y [M, N] = (a * a_scale) @ (b * b_scale)^T (+ bias), in out_dtype.

    a [M, K] and b [N, K] are float8_e4m3fn; a_scale is fp32 with 1 (per-tensor) or
    M (per-token) values, b_scale 1 (per-tensor) or N (per-channel) values; bias [N]
    in out_dtype. out_dtype: float32, bfloat16 or float16. Numerics: module docstring.
    """
    op = "fp8_gemm"
    if a.dtype != FP8_DTYPE or b.dtype != FP8_DTYPE:
        raise ValueError(f"{op}: a and b must be {FP8_DTYPE}; got {a.dtype}, {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{op}: expected a [M, K] and b [N, K]; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if out_dtype not in _native.SUPPORTED_DTYPES:
        raise ValueError(f"{op}: out_dtype {out_dtype} is not float32, bfloat16 or float16")
    if b.device != a.device:
        raise ValueError(f"{op}: b is on {b.device} but a is on {a.device}")
    m, n = a.shape[0], b.shape[0]
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
    a = a if a.stride(-1) == 1 or a.numel() == 0 else a.contiguous()
    b = b if b.stride(-1) == 1 or b.numel() == 0 else b.contiguous()
    return FP8_GEMM.select(a.device, backend)(a, b, a_scale, b_scale, out_dtype, bias)
