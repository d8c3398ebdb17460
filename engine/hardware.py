"""What this machine can do, and the defaults that follow from it.

The compute dtype "auto" is the one defaults must get right on every machine: torch's
bf16 matmul is fast only where the hardware has bf16 dot products. On a CPU without
them (AVX2 or plain AVX-512) oneDNN converts bf16 to fp32 around an fp32 kernel and
runs several times slower than fp32 itself (measured 9.5 against 65 GFLOP/s on an
AVX2-only EPYC), so "auto" means:

- CUDA: bfloat16 where the GPU supports it (sm_80 and newer), else float16;
- x86 CPUs with AVX512-BF16 (VDPBF16PS) or AMX-BF16: bfloat16;
- every other CPU: float32.

``ONEDNN_MAX_CPU_ISA`` capped below the bf16 instruction sets (a way to reproduce an
older CPU on a newer one) counts as not having them, since torch's matmuls then
cannot use them either.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

import torch

from .config import parse_dtype

AUTO = "auto"

# /proc/cpuinfo flags that decide a default or a kernel, in the order `env` prints them.
ISA_FLAGS = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
    "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip
BF16_DOT_FLAGS = ("avx512_bf16", "amx_bf16")
# ONEDNN_MAX_CPU_ISA values (oneDNN's dnnl_cpu_isa_t names) that exclude every bf16
# dot-product instruction set.
_ONEDNN_CAPS_WITHOUT_BF16 = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class CpuInfo:
    model: str
    arch: str
    flags: frozenset[str]

    def has(self, *flags: str) -> bool:
        return all(f in self.flags for f in flags)


@functools.cache
def cpu_info() -> CpuInfo:
    """This CPU's model name and feature flags (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name and flags ("flags" on x86, "Features" on Arm)."""
    model, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model name") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = frozenset(value.split())
    return CpuInfo(
        model=model or platform.processor() or "unknown",
        arch=platform.machine(),
        flags=flags or frozenset(),
    )


def onednn_isa_cap() -> str | None:
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.upper() if value else None


def cpu_bf16_support(info: CpuInfo | None = None) -> tuple[bool, str]:
    """(whether bf16 matmuls run natively on this CPU, why), for the "auto" dtype."""
    info = info or cpu_info()
    found = [f for f in BF16_DOT_FLAGS if f in info.flags]
    if not found:
        return False, "the CPU has no bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)"
    cap = onednn_isa_cap()
    if cap in _ONEDNN_CAPS_WITHOUT_BF16:
        return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps torch's matmuls off {'/'.join(found)}"
    names = " and ".join(f.upper().replace("_", "-") for f in found)
    return True, f"the CPU has {names}"


def resolve_dtype(
    dtype: str | torch.dtype, device: str | torch.device = "cpu"
) -> tuple[torch.dtype, str]:
    """The compute dtype to run, and why: "auto" per the module docstring, anything else
    as parse_dtype() reads it."""
    if not (isinstance(dtype, str) and dtype.lower() == AUTO):
        try:
            return parse_dtype(dtype), "requested"
        except ValueError as exc:
            raise ValueError(f"{exc}, or 'auto' (chosen for this machine)") from None
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, f"{torch.cuda.get_device_name(device)} supports bf16"
        return torch.float16, f"{torch.cuda.get_device_name(device)} has no bf16: float16"
    native, why = cpu_bf16_support()
    if native:
        return torch.bfloat16, f"{why}: bf16 matmuls run natively"
    return torch.float32, f"{why}: bf16 would be emulated and slower than float32"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
