"""W8A8 quantization of the model's linear layers at build time.

Weights: one symmetric scale per output channel (row) from its largest |w|, E4M3
(kernels.fp8_quantize) or int8 (kernels.int8_quantize) codes. Activations: a static
per-tensor scale from the largest |x| the calibration set gave that layer's input
(amax / 448 for E4M3, amax / 127 for int8), or none (quantized per token at run time).
"""

from __future__ import annotations

import torch

import kernels
from kernels.fp8 import FP8_MAX
from kernels.int8 import INT8_MAX

from ..linear import DenseLinear, QuantizedLinear

QMAX = {"fp8": FP8_MAX, "int8": INT8_MAX}
_TINY = torch.finfo(torch.float32).tiny


def quantize_weight(
    weight: torch.Tensor, quantization: str, split: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] -> (codes [N, K], fp32 scales [N]): one scale per output channel, or with
    ``split`` (row counts of the fused projections) one per projection, repeated over
    its rows (per-tensor formats such as ModelOpt's FP8)."""
    w = weight.float()
    if split is None:
        if quantization == "fp8":
            codes, scale = kernels.fp8_quantize(w, granularity="token")
        else:
            codes, scale = kernels.int8_quantize(w, granularity="token")
        return codes, scale.reshape(-1)
    parts, scales = [], []
    for rows in w.split(split):
        if quantization == "fp8":
            codes, scale = kernels.fp8_quantize(rows, granularity="tensor")
        else:
            codes, scale = kernels.int8_quantize(rows, granularity="tensor")
        parts.append(codes)
        scales.append(scale.reshape(1).expand(rows.shape[0]))
    return torch.cat(parts), torch.cat(scales).contiguous()


def static_input_scale(amax: float, quantization: str) -> torch.Tensor:
    """The per-tensor activation scale of a calibrated input range (never zero)."""
    scale = amax / QMAX[quantization] if amax > 0 else 1.0
    return torch.tensor(max(scale, _TINY), dtype=torch.float32)


def quantize_linear(
    layer: DenseLinear,
    quantization: str,
    input_amax: float | None,
    out_dtype: torch.dtype,
    split: list[int] | None = None,
) -> QuantizedLinear:
    """A dense layer as W8A8; ``input_amax`` None keeps per-token activation scales;
    ``split`` as in quantize_weight."""
    codes, scale = quantize_weight(layer.weight, quantization, split)
    input_scale = None if input_amax is None else static_input_scale(input_amax, quantization)
    bias = None if layer.bias is None else layer.bias.to(out_dtype)
    return QuantizedLinear(quantization, codes, scale, input_scale, out_dtype, bias)


def finite_amax(x: torch.Tensor) -> float:
    """Largest finite |x| (0 for an empty tensor or no finite value)."""
    if x.numel() == 0:
        return 0.0
    a = x.detach().abs().float()
    a = torch.where(a.isfinite(), a, 0.0)
    return float(a.max())
