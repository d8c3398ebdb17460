"""The compiled kernels as torch ops: `torch.ops.reward_engine.<name>`.

Every export of kernels._C (CPU) and kernels._C_cuda (CUDA) is wrapped with
`torch.library.custom_op`, so torch.compile and CUDA graphs trace through the op
instead of breaking the graph on a raw-pointer call. Conventions:
- ops write into preallocated outputs and return nothing; every tensor they write
  is listed in `mutates_args` (outputs, the residual, q/k, the KV caches, dynamic
  FP8 scales), and the fake (meta) implementation does nothing;
- one op serves both devices: the CPU implementation calls kernels._C with
  torch's thread count, the CUDA one calls kernels._C_cuda on the current stream;
  the two modules export the same names with the same arguments except the last
  (`num_threads` / `stream`);
- callers (the `cpu` and `cuda` backends in kernels/*.py) pass views already
  checked and shaped as the kernel wants ([rows, width] with unit last stride);
- E4M3 tensors travel as uint8 views of the same memory (`t.view(torch.uint8)`):
  torch's schema checker cannot compare float8 tensors, and the kernels take codes. A
  uint8 KV cache is an E4M3 cache, read and written with its k_scale / v_scale (0-dim
  fp32 tensors on the cache's device, read by the kernel: no host synchronization).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op

from . import _native

_DEVICES = ("cpu", "cuda")


def _call(name: str, like: Tensor, *args) -> None:
    """Calls `name` in the compiled module for like's device with its trailing argument."""
    if like.device.type == "cpu":
        getattr(_native.cpu_module(), name)(*args, _native.num_threads())
        return
    with torch.cuda.device(like.device):
        getattr(_native.cuda_module(), name)(*args, _native.cuda_stream(like))


def _define(name: str, mutates: tuple[str, ...]):
    """custom_op("reward_engine::<name>") with a do-nothing fake implementation."""

    def wrap(fn):
        op = custom_op(f"reward_engine::{name}", mutates_args=mutates, device_types=_DEVICES)(fn)
        op.register_fake(lambda *args, **kwargs: None)
        return op

    return wrap


def _code(t: Tensor) -> int:
    return _native.dtype_code(t)


def _kv_scales(key_cache: Tensor, k_scale: Tensor | None, v_scale: Tensor | None):
    """(kv_fp8, k_scale pointer, v_scale pointer) for the paged-KV kernels."""
    if key_cache.dtype != torch.uint8:
        return False, 0, 0
    return True, k_scale.data_ptr(), v_scale.data_ptr()


@_define("rms_norm", ("out",))
def rms_norm(out: Tensor, x: Tensor, weight: Tensor, eps: float) -> None:
    _call(
        "rms_norm", x, out.data_ptr(), x.data_ptr(), weight.data_ptr(), x.shape[0], x.shape[1],
        out.stride(0), x.stride(0), eps, _code(x),
    )  # fmt: skip


@_define("fused_add_rms_norm", ("out", "residual"))
def fused_add_rms_norm(
    out: Tensor, x: Tensor, residual: Tensor, weight: Tensor, eps: float
) -> None:
    _call(
        "fused_add_rms_norm", x, out.data_ptr(), x.data_ptr(), residual.data_ptr(),
        weight.data_ptr(), x.shape[0], x.shape[1], out.stride(0), x.stride(0),
        residual.stride(0), eps, _code(x),
    )  # fmt: skip


@_define("rms_norm_fp8", ("out",))
def rms_norm_fp8(out: Tensor, x: Tensor, weight: Tensor, eps: float, scale: Tensor) -> None:
    _call(
        "rms_norm_fp8", x, out.data_ptr(), x.data_ptr(), weight.data_ptr(), x.shape[0],
        x.shape[1], out.stride(0), x.stride(0), eps, scale.data_ptr(), _code(x),
    )  # fmt: skip


@_define("fused_add_rms_norm_fp8", ("out", "residual"))
def fused_add_rms_norm_fp8(
    out: Tensor, x: Tensor, residual: Tensor, weight: Tensor, eps: float, scale: Tensor
) -> None:
    _call(
        "fused_add_rms_norm_fp8", x, out.data_ptr(), x.data_ptr(), residual.data_ptr(),
        weight.data_ptr(), x.shape[0], x.shape[1], out.stride(0), x.stride(0),
        residual.stride(0), eps, scale.data_ptr(), _code(x),
    )  # fmt: skip


@_define("silu_mul", ("out",))
def silu_mul(out: Tensor, x: Tensor) -> None:
    _call(
        "silu_mul", x, out.data_ptr(), x.data_ptr(), x.shape[0], out.shape[1], out.stride(0),
        x.stride(0), _code(x),
    )  # fmt: skip


@_define("silu_mul_fp8", ("out",))
def silu_mul_fp8(out: Tensor, x: Tensor, scale: Tensor) -> None:
    _call(
        "silu_mul_fp8", x, out.data_ptr(), x.data_ptr(), x.shape[0], out.shape[1],
        out.stride(0), x.stride(0), scale.data_ptr(), _code(x),
    )  # fmt: skip


@_define("rope", ("q", "k"))
def rope(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor) -> None:
    _call(
        "rope", q, q.data_ptr(), q.stride(0), q.stride(1), q.shape[1],
        k.data_ptr(), k.stride(0), k.stride(1), k.shape[1],
        positions.data_ptr(), positions.dtype == torch.int64,
        cos_sin_cache.data_ptr(), cos_sin_cache.shape[0], q.shape[0], q.shape[2], _code(q),
    )  # fmt: skip


@_define("rope_and_cache", ("q", "k", "key_cache", "value_cache"))
def rope_and_cache(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    cos_sin_cache: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    slot_mapping: Tensor,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
) -> None:
    """uint8 caches: E4M3 codes of k / k_scale and v / v_scale."""
    _call(
        "rope_and_cache", q, q.data_ptr(), q.stride(0), q.stride(1), q.shape[1],
        k.data_ptr(), k.stride(0), k.stride(1), k.shape[1],
        v.data_ptr(), v.stride(0), v.stride(1),
        positions.data_ptr(), positions.dtype == torch.int64,
        cos_sin_cache.data_ptr(), cos_sin_cache.shape[0],
        key_cache.data_ptr(), value_cache.data_ptr(), key_cache.shape[0] * key_cache.shape[1],
        slot_mapping.data_ptr(), slot_mapping.dtype == torch.int64,
        q.shape[0], q.shape[2], *_kv_scales(key_cache, k_scale, v_scale), _code(q),
    )  # fmt: skip


@_define("paged_prefill_attention", ("out",))
def paged_prefill_attention(
    out: Tensor,
    q: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_tables: Tensor,
    query_start_loc: Tensor,
    context_lens: Tensor,
    scale: float,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
) -> None:
    """block_tables int32 [S, max_blocks]; query_start_loc [S + 1] and context_lens [S]
    int64, on the CPU for the cpu kernel and on the device for the CUDA kernel. uint8
    caches are E4M3, dequantized with k_scale / v_scale."""
    num_blocks, block_size, num_kv_heads, head_dim = key_cache.shape
    _call(
        "paged_prefill_attention", q, out.data_ptr(), out.stride(0), out.stride(1),
        q.data_ptr(), q.stride(0), q.stride(1), q.shape[0], q.shape[1],
        key_cache.data_ptr(), value_cache.data_ptr(), num_blocks, block_size, num_kv_heads,
        head_dim, block_tables.data_ptr(), block_tables.shape[0], block_tables.shape[1],
        query_start_loc.data_ptr(), context_lens.data_ptr(), scale,
        *_kv_scales(key_cache, k_scale, v_scale), _code(q),
    )  # fmt: skip


@_define("fp8_quantize", ("out", "scale"))
def fp8_quantize(out: Tensor, x: Tensor, scale: Tensor, granularity: int, dynamic: bool) -> None:
    """granularity 0 tensor, 1 token, 2 channel; dynamic: scale is written, else read."""
    _call(
        "fp8_quantize", x, out.data_ptr(), x.data_ptr(), x.shape[0], x.shape[1], out.stride(0),
        x.stride(0), scale.data_ptr(), granularity, dynamic, _code(x),
    )  # fmt: skip


@_define("fp8_gemm", ("out",))
def fp8_gemm(
    out: Tensor, a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, bias: Tensor | None
) -> None:
    _call(
        "fp8_gemm", a, out.data_ptr(), out.stride(0), a.data_ptr(), a.stride(0), b.data_ptr(),
        b.stride(0), a.shape[0], b.shape[0], a.shape[1], a_scale.data_ptr(),
        a_scale.numel() != 1, b_scale.data_ptr(), b_scale.numel() != 1,
        0 if bias is None else bias.data_ptr(), _code(out),
    )  # fmt: skip


@_define("rms_norm_quant", ("out", "scale"))
def rms_norm_quant(
    out: Tensor, x: Tensor, weight: Tensor, eps: float, scale: Tensor, qtype: int, dynamic: bool
) -> None:
    """qtype 0: E4M3 codes (uint8 view), 1: int8; dynamic: one scale per row is written."""
    _call(
        "rms_norm_quant", x, out.data_ptr(), x.data_ptr(), weight.data_ptr(), x.shape[0],
        x.shape[1], out.stride(0), x.stride(0), eps, scale.data_ptr(), qtype, dynamic, _code(x),
    )  # fmt: skip


@_define("fused_add_rms_norm_quant", ("out", "residual", "scale"))
def fused_add_rms_norm_quant(
    out: Tensor, x: Tensor, residual: Tensor, weight: Tensor, eps: float, scale: Tensor,
    qtype: int, dynamic: bool,
) -> None:  # fmt: skip
    _call(
        "fused_add_rms_norm_quant", x, out.data_ptr(), x.data_ptr(), residual.data_ptr(),
        weight.data_ptr(), x.shape[0], x.shape[1], out.stride(0), x.stride(0),
        residual.stride(0), eps, scale.data_ptr(), qtype, dynamic, _code(x),
    )  # fmt: skip


@_define("silu_mul_quant", ("out", "scale"))
def silu_mul_quant(out: Tensor, x: Tensor, scale: Tensor, qtype: int, dynamic: bool) -> None:
    _call(
        "silu_mul_quant", x, out.data_ptr(), x.data_ptr(), x.shape[0], out.shape[1],
        out.stride(0), x.stride(0), scale.data_ptr(), qtype, dynamic, _code(x),
    )  # fmt: skip


@_define("int8_quantize", ("out", "scale"))
def int8_quantize(out: Tensor, x: Tensor, scale: Tensor, granularity: int, dynamic: bool) -> None:
    """granularity 0 tensor, 1 token; dynamic: scale is written, else read."""
    _call(
        "int8_quantize", x, out.data_ptr(), x.data_ptr(), x.shape[0], x.shape[1], out.stride(0),
        x.stride(0), scale.data_ptr(), granularity, dynamic, _code(x),
    )  # fmt: skip


@_define("int8_gemm", ("out",))
def int8_gemm(
    out: Tensor, a: Tensor, packed: Tensor, colsum: Tensor, a_scale: Tensor, b_scale: Tensor,
    bias: Tensor | None, n: int, k: int,
) -> None:  # fmt: skip
    """packed and colsum from kernels._C.int8_pack_weight of the [n, k] weight."""
    _call(
        "int8_gemm", a, out.data_ptr(), out.stride(0), a.data_ptr(), a.stride(0),
        packed.data_ptr(), colsum.data_ptr(), a.shape[0], n, k, a_scale.data_ptr(),
        a_scale.numel() != 1, b_scale.data_ptr(), b_scale.numel() != 1,
        0 if bias is None else bias.data_ptr(), _code(out),
    )  # fmt: skip


@_define("batch_invariant_linear", ("out",))
def batch_invariant_linear(out: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    _call(
        "batch_invariant_linear", x, out.data_ptr(), out.stride(0), x.data_ptr(), x.stride(0),
        weight.data_ptr(), weight.stride(0), 0 if bias is None else bias.data_ptr(),
        x.shape[0], weight.shape[0], x.shape[1], _code(x),
    )  # fmt: skip


def ops() -> torch._ops._OpNamespace:
    """torch.ops.reward_engine (every op above is registered once this module is imported)."""
    return torch.ops.reward_engine
