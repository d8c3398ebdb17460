"""The compiled CUDA kernels hold the instructions their speed rests on, read from the
machine code of kernels._C_cuda with cuobjdump (it ships inside the triton wheel), so
this runs on any machine that built the module, GPU or not:
- the tensor-core attention kernel multiplies with HMMA in every architecture built,
  and on sm_90a keeps its accumulators in registers (no local-memory loads or stores);
- its E4M3-cache form converts the codes with the hardware's E4M3 -> fp16 instruction on
  sm_89 and sm_90a (F2FP.F16.E4M3.UNPACK_B; sm_80 has none and uses integer code);
- the scalar attention kernel, which the tensor-core one replaces for bf16/fp16 at
  head_dim 64 and 128, has no HMMA (so the check above can tell them apart)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cuobjdump() -> Path | None:
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return path if path.exists() else None


def _functions_by_arch(workdir: Path) -> dict[str, dict[str, str]]:
    """{"sm_90a": {mangled name: SASS text}} for the attention kernels of kernels._C_cuda."""
    modules = sorted(ROOT.glob("kernels/_C_cuda*.so"))
    tool = _cuobjdump()
    if not modules:
        pytest.skip("kernels._C_cuda is not built (no CUDA toolkit on this machine)")
    if tool is None:
        pytest.skip("no cuobjdump (it comes with the triton wheel)")
    # Extract the cubins (one per source file and architecture) and disassemble only
    # attention.cu's: the whole module takes ~10 s.
    subprocess.run([str(tool), "-xelf", "all", str(modules[0].resolve())], cwd=workdir,
                   capture_output=True, timeout=60, check=True)  # fmt: skip
    out: dict[str, dict[str, str]] = {}
    for cubin in sorted(workdir.glob("*.cubin")):
        if b"paged_attention" not in cubin.read_bytes():
            continue
        arch = cubin.name.split(".")[-2]  # <module>.<n>.sm_90a.cubin
        sass = subprocess.run([str(tool), "--dump-sass", str(cubin)], capture_output=True,
                              text=True, timeout=60, check=True).stdout  # fmt: skip
        # "Function : <name>" headers split the listing into kernels
        parts = re.split(r"^\s*Function : (\S+)$", sass, flags=re.MULTILINE)
        out[arch] = dict(zip(parts[1::2], parts[2::2], strict=True))
    return out


@pytest.fixture(scope="module")
def sass(tmp_path_factory):
    return _functions_by_arch(tmp_path_factory.mktemp("cubins"))


def _kernels(functions: dict[str, str], marker: str) -> dict[str, str]:
    return {name: body for name, body in functions.items() if marker in name}


def test_tensor_core_attention_uses_hmma_in_every_architecture(sass):
    assert sass, "cuobjdump found no cubins"
    for arch, functions in sass.items():
        mma = _kernels(functions, "paged_attention_mma_kernel")
        assert len(mma) == 8, (
            f"{arch}: expected bf16/fp16 x head_dim 64/128 x bf16/fp16 or E4M3 cache, "
            f"got {list(mma)}"
        )
        for name, body in mma.items():
            # the instruction's operand type follows the kernel's: .BF16 for bf16
            bf16 = "bfloat16" in name
            assert "HMMA.16816.F32" in body, f"{arch} {name}: no HMMA.16816"
            assert ("HMMA.16816.F32.BF16" in body) == bf16, f"{arch} {name}: operand type"


def _fp8_cache(name: str) -> bool:
    """paged_attention_mma_kernel<T, D, kFp8>: the mangled bool is Lb1E when true."""
    return name.endswith("Lb1EEEvNS0_15AttentionParamsE")


def test_tensor_core_attention_converts_e4m3_in_hardware_on_sm89_and_sm90a(sass):
    for arch in ("sm_89", "sm_90a"):
        if arch not in sass:
            continue
        mma = _kernels(sass[arch], "paged_attention_mma_kernel")
        assert sum(map(_fp8_cache, mma)) == 4, f"{arch}: {list(mma)}"
        for name, body in mma.items():
            converts = "F2FP.F16.E4M3.UNPACK_B" in body
            assert converts == _fp8_cache(name), f"{arch} {name}: E4M3 conversion {converts}"


def test_tensor_core_attention_keeps_its_accumulators_in_registers_on_sm90a(sass):
    if "sm_90a" not in sass:
        pytest.skip("sm_90a was not built (REWARD_ENGINE_CUDA_ARCHS)")
    for name, body in _kernels(sass["sm_90a"], "paged_attention_mma_kernel").items():
        assert not re.search(r"\b(LDL|STL)\b", body), f"{name}: spills to local memory"


def test_scalar_attention_kernel_has_no_tensor_core_instructions(sass):
    for arch, functions in sass.items():
        scalar = _kernels(functions, "22paged_attention_kernel")
        assert scalar, f"{arch}: the scalar attention kernel is missing"
        for name, body in scalar.items():
            assert "HMMA" not in body and "FFMA" in body, f"{arch} {name}"
