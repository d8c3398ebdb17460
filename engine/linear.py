"""The model's linear layers: one class per weight format, chosen by the weights held.

A layer is called as ``y = layer(x, out=None)`` and the return value is the result
(layers write it into ``out``, a reused step buffer, where their kernel can). x is either an activation tensor
[M, K] in the compute dtype or a ``QuantizedActivation`` that the producing kernel
(RMSNorm, SiLU-mul) already quantized for this layer; ``layer.quantization`` says
which input it wants (see ``engine/model.py``, which fuses the quantize into the
producer when it can). The model code is the same for every format.

- ``DenseLinear``: weight [N, K] in the compute dtype; torch's matmul.
- ``BatchInvariantLinear``: the same weight through kernels.batch_invariant_linear,
  whose rows do not depend on the batch (deterministic mode; ``batch_invariant``).
- ``QuantizedLinear``: W8A8 with 8-bit weights [N, K] and one fp32 scale per output
  channel (row); activations quantized with a static per-tensor scale
  (``input_scale``, calibrated at build time) or dynamically per token (None).
  ``quantization`` is "fp8" (E4M3: kernels.fp8_gemm) or "int8" (symmetric:
  kernels.int8_gemm). Output, bias and accumulation as the kernels document.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import kernels

QUANTIZATIONS = ("fp8", "int8")
QUANTIZED_DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


@dataclass(slots=True)
class QuantizedActivation:
    """Codes [M, K] of an activation and their fp32 scale: 0-dim (per tensor) or [M, 1]
    (per token). The value is ``codes * scale``."""

    codes: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape


@dataclass(slots=True)
class DenseLinear:
    weight: torch.Tensor  # [N, K]
    bias: torch.Tensor | None = None
    quantization = None

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x @ weight^T (+ bias); written into ``out`` (a reused step buffer) when given."""
        if out is None:
            return F.linear(x, self.weight, self.bias)
        if self.bias is None:
            return torch.mm(x, self.weight.t(), out=out)
        return torch.addmm(self.bias, x, self.weight.t(), out=out)

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {"weight": self.weight, "bias": self.bias}


@dataclass(slots=True)
class BatchInvariantLinear:
    """A dense layer whose every output row is the same bits in any batch: the summation
    order of each element is fixed (kernels/gemm.py), unlike torch's matmul."""

    weight: torch.Tensor  # [N, K]
    bias: torch.Tensor | None = None
    quantization = None

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return kernels.batch_invariant_linear(x, self.weight, self.bias, out=out)

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {"weight": self.weight, "bias": self.bias}


@dataclass(slots=True)
class QuantizedLinear:
    quantization: str  # "fp8" | "int8"
    weight: torch.Tensor  # [N, K] float8_e4m3fn or int8
    weight_scale: torch.Tensor  # [N] fp32, one per output channel
    input_scale: torch.Tensor | None  # 0-dim fp32 (static), or None (dynamic per token)
    out_dtype: torch.dtype
    bias: torch.Tensor | None = None  # [N] in out_dtype
    # Backend-specific prepacked form of the weight (int8 GEMMs), made on first use.
    packed: object | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}"
            )
        want = QUANTIZED_DTYPES[self.quantization]
        if self.weight.dtype != want:
            raise ValueError(f"{self.quantization} weight must be {want}, got {self.weight.dtype}")
        if self.weight_scale.shape != (self.weight.shape[0],):
            raise ValueError(
                f"weight_scale must be [{self.weight.shape[0]}], got {tuple(self.weight_scale.shape)}"
            )

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def is_static(self) -> bool:
        return self.input_scale is not None

    def quantize(self, x: torch.Tensor) -> QuantizedActivation:
        """x [M, K] in the compute dtype -> this layer's input codes (unfused path)."""
        if self.quantization == "fp8":
            granularity = "tensor" if self.is_static else "token"
            codes, scale = kernels.fp8_quantize(x, self.input_scale, granularity)
        else:
            codes, scale = kernels.int8_quantize(x, self.input_scale)
        return QuantizedActivation(codes, scale)

    def __call__(self, x, out: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, QuantizedActivation):
            x = self.quantize(x)
        if self.quantization == "fp8":
            y = kernels.fp8_gemm(
                x.codes, self.weight, x.scale, self.weight_scale, self.out_dtype, self.bias
            )
        else:
            if self.packed is None:
                self.packed = kernels.prepack_int8_weight(self.weight)
            y = kernels.int8_gemm(
                x.codes, self.packed, x.scale, self.weight_scale, self.out_dtype, self.bias,
                out=out,
            )  # fmt: skip
        return y

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {
            "weight": self.weight,
            "weight_scale": self.weight_scale,
            "input_scale": self.input_scale,
            "bias": self.bias,
        }


Linear = DenseLinear | BatchInvariantLinear | QuantizedLinear


def batch_invariant(layer: Linear) -> Linear:
    """The layer as deterministic mode runs it. A dense layer becomes a
    BatchInvariantLinear (same tensors). W8A8 layers stay as they are: on CPU their
    GEMMs are batch-invariant already (int8_gemm sums integers, exactly; fp8_gemm sums
    exact E4M3 products in a fixed order per element; activation scales are static or
    per row), which is not true of the GPU FP8 GEMMs (RewardEngine refuses that case)."""
    if isinstance(layer, DenseLinear):
        return BatchInvariantLinear(layer.weight, layer.bias)
    return layer
