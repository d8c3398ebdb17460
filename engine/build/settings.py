"""Build settings: what `reward-engine build` makes of a checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import KV_CACHE_DTYPES  # one list for the runtime and the builder

QUANTIZATIONS = ("none", "fp8", "int8")
ACTIVATION_SCALES = ("auto", "static", "dynamic")
FORMATS = ("native", "modelopt", "trtllm")
DEFAULT_CALIBRATION_SIZE = 256


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """quantization: "none" (dense weights in `dtype`), "fp8" or "int8" (W8A8: 8-bit
    weights with one scale per output channel; activations quantized per tensor with a
    calibrated static scale, or per token at run time).
    activation_scales: "auto" is static for fp8 (the norm that feeds each GEMM writes
    E4M3 directly) and dynamic for int8 (per-token scales follow each token's range,
    which matters more with 8-bit integers).
    kv_cache_dtype: "fp8" stores the KV cache in E4M3 with calibrated per-layer scales.
    calibration: a JSONL file in the score CLI's forms (None: the built-in set);
    calibration_size: at most this many conversations of it.
    dtype: compute and storage dtype of everything not quantized ("auto" as at run time).
    format: "native" (an engine directory) or "modelopt" (an HF checkpoint in NVIDIA
    ModelOpt's FP8 format, for vLLM, SGLang and TensorRT-LLM's PyTorch backend: quant_algo
    FP8 with per-tensor weight and input scales for static activation scales,
    FP8_PER_CHANNEL_PER_TOKEN for dynamic ones) or "trtllm" (a TensorRT-LLM checkpoint for
    trtllm-build: unquantized, or quant_algo FP8 with static activation scales).
    tensor_parallel_size: N > 1 writes one weights file per tensor-parallel rank
    (engine/sharding.py): an engine directory loaded with tensor_parallel_size=N, or a
    trtllm checkpoint's rank{r}.safetensors.
    """

    quantization: str = "none"
    activation_scales: str = "auto"
    kv_cache_dtype: str = "auto"
    calibration: str | None = None
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    max_model_len: int | None = None
    dtype: str = "auto"
    format: str = "native"
    reward_token_ids: tuple[int, ...] | None = None
    verify_accuracy: bool = True
    tensor_parallel_size: int = 1

    def __post_init__(self):
        for name, allowed in (("quantization", QUANTIZATIONS),
                              ("activation_scales", ACTIVATION_SCALES),
                              ("kv_cache_dtype", KV_CACHE_DTYPES), ("format", FORMATS)):  # fmt: skip
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if type(self.calibration_size) is not int or self.calibration_size < 1:
            raise ValueError(f"calibration_size must be a positive int, got {self.calibration_size!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be positive, got {self.max_model_len}")
        if self.format == "modelopt" and self.quantization != "fp8":
            raise ValueError(
                "--format modelopt writes NVIDIA ModelOpt FP8 checkpoints: use --quantization fp8"
            )
        if self.format == "trtllm" and (self.quantization == "int8" or (
            self.quantization == "fp8" and self.resolved_activation_scales != "static"
        )):  # fmt: skip
            raise ValueError(
                "--format trtllm writes unquantized or FP8 checkpoints with static activation "
                "scales (TensorRT-LLM quant_algo FP8): use --quantization fp8 without "
                "--activation-scales dynamic, or no --quantization"
            )
        if type(self.tensor_parallel_size) is not int or self.tensor_parallel_size < 1:
            raise ValueError(
                f"tensor_parallel_size must be a positive int, got {self.tensor_parallel_size!r}"
            )
        if self.tensor_parallel_size > 1 and self.format == "modelopt":
            raise ValueError("--tp applies to engine directories and TensorRT-LLM checkpoints; a ModelOpt "
                             "checkpoint is sharded by the engine that loads it")  # fmt: skip
        if self.quantization == "none" and self.activation_scales != "auto":
            raise ValueError("--activation-scales applies to --quantization fp8 or int8")

    @property
    def resolved_activation_scales(self) -> str | None:
        """"static" / "dynamic" for quantized builds, None for dense ones."""
        if self.quantization == "none":
            return None
        if self.activation_scales != "auto":
            return self.activation_scales
        return "static" if self.quantization == "fp8" else "dynamic"

    @property
    def needs_calibration(self) -> bool:
        """Whether the build runs the model over calibration data: for static scales,
        for the FP8 KV scales, and for every quantized build's accuracy report."""
        return self.quantization != "none" or self.kv_cache_dtype == "fp8"

    def to_json(self) -> dict:
        out = asdict(self)
        out["activation_scales"] = self.resolved_activation_scales
        out["reward_token_ids"] = list(self.reward_token_ids) if self.reward_token_ids else None
        return out
