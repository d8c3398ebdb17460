"""reward-engine kernels: one entry point per op, several backends.

Backends: `reference` (plain PyTorch, the specification), `cpu` (C++ in csrc/cpu,
module kernels._C), `cuda` (CUDA C++ in csrc/cuda, module kernels._C_cuda), `triton`
(kernels/triton, imported only when used). Dispatch rules, environment variables and
tolerances are in kernels/README.md.
"""

from .activation import silu_mul, silu_mul_quant
from .backend import BACKENDS, BackendUnavailableError
from .backend import available_backends as _available_backends
from .fp8 import fp8_gemm, fp8_quantize
from .gemm import batch_invariant_linear
from .int8 import Int8PackedWeight, int8_gemm, int8_gemm_isa, int8_quantize, prepack_int8_weight
from .norm import fused_add_rms_norm, fused_add_rms_norm_quant, rms_norm, rms_norm_quant
from .paged_attention import paged_prefill_attention
from .rope import compute_cos_sin_cache, rope, rope_and_cache


def available_backends() -> list[str]:
    """Backends that load on this machine: always "reference", plus "cpu" when
    kernels._C is built and "cuda" when kernels._C_cuda is built and a GPU is visible."""
    return _available_backends()


__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "batch_invariant_linear",
    "compute_cos_sin_cache",
    "fp8_gemm",
    "fp8_quantize",
    "fused_add_rms_norm",
    "fused_add_rms_norm_quant",
    "Int8PackedWeight",
    "int8_gemm",
    "int8_gemm_isa",
    "int8_quantize",
    "prepack_int8_weight",
    "paged_prefill_attention",
    "rms_norm",
    "rms_norm_quant",
    "rope",
    "rope_and_cache",
    "silu_mul",
    "silu_mul_quant",
]
