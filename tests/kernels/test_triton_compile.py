"""The Triton kernels compile for NVIDIA GPUs (sm_80, sm_90; the FP8 ones for sm_90, except
the E4M3 KV-cache forms of rope_and_cache and attention, whose integer encoder and decoder
need no FP8 instructions: sm_80 too) on a machine without one.

Triton's nvidia backend ships ptxas, so a kernel can be lowered to a cubin with no GPU
present: this catches what the interpreter accepts but the compiler does not (globals
that are not constexpr, dot shapes, dtype rules). It runs in a child process because
this process may run Triton in interpreter mode (TRITON_INTERPRET is fixed at import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from triton_testing import HAS_TRITON

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.triton import activation, fp8, gemm, norm, paged_attention, rope

def sig(names, dt):
    return {n: (t.replace("DT", dt)) for n, t in names}

norm_args = [("out_ptr", "*DT"), ("x_ptr", "*DT"), ("res_ptr", "*DT"), ("w_ptr", "*DT"),
             ("scale_ptr", "*fp32"), ("hidden", "i32"), ("out_stride", "i32"), ("x_stride", "i32"),
             ("res_stride", "i32"), ("eps", "fp32")]
silu_args = [("out_ptr", "*DT"), ("x_ptr", "*DT"), ("scale_ptr", "*fp32"), ("inter", "i32"),
             ("out_stride", "i32"), ("x_stride", "i32")]
rope_args = [("q_ptr", "*DT"), ("k_ptr", "*DT"), ("v_ptr", "*DT"), ("pos_ptr", "*i64"),
             ("cos_sin_ptr", "*fp32"), ("key_cache_ptr", "*DT"), ("value_cache_ptr", "*DT"),
             ("slot_ptr", "*i32"), ("k_scale_ptr", "*fp32"), ("v_scale_ptr", "*fp32")] + [
             (n, "i32") for n in (
             "q_stride_t", "q_stride_h", "k_stride_t", "k_stride_h", "v_stride_t",
             "v_stride_h", "num_q_heads", "num_kv_heads", "half")]
attn_args = [("out_ptr", "*DT"), ("q_ptr", "*DT"), ("key_cache_ptr", "*DT"),
             ("value_cache_ptr", "*DT")] + [(n, "*i32") for n in (
             "block_tables_ptr", "tiles_ptr", "query_start_ptr", "context_lens_ptr")] + [
             ("k_scale_ptr", "*fp32"), ("v_scale_ptr", "*fp32"), ("scale", "fp32")] + [
             (n, "i32") for n in (
             "q_stride_t", "q_stride_h", "out_stride_t", "out_stride_h", "table_stride",
             "block_size", "num_kv_heads", "head_dim")]
def u8_caches(args):  # E4M3 KV caches travel as uint8 codes
    return [(n, "*u8" if n in ("key_cache_ptr", "value_cache_ptr") else t) for n, t in args]

attn_const = {"GROUP": 8, "TILE_TOKENS": 16, "BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": 128,
              "FP32_DOT": False}
linear_args = [("out_ptr", "*DT"), ("x_ptr", "*DT"), ("w_ptr", "*DT"), ("bias_ptr", "*DT")] + [
               (n, "i32") for n in ("M", "N", "K", "out_stride", "x_stride", "w_stride")]
linear_tile = {k: v for k, v in gemm.GPU_TILE.items() if k.startswith("BLOCK")}
cases = [
    (gemm._batch_invariant_linear_kernel, linear_args,
     {"HAS_BIAS": True, "IEEE": False, **linear_tile}, gemm.GPU_TILE["num_warps"]),
    (norm._rms_norm_kernel, norm_args, {"FUSED_ADD": True, "FP8_OUT": False, "BLOCK": 8192}, 8),
    (activation._silu_mul_kernel, silu_args, {"FP8_OUT": False, "BLOCK": 1024}, 4),
    (rope._rope_kernel, rope_args,
     {"WRITE_CACHE": True, "KV_FP8": False, "BLOCK_HQ": 64, "BLOCK_HKV": 8, "BLOCK_HALF": 64}, 4),
    (rope._rope_kernel, u8_caches(rope_args),
     {"WRITE_CACHE": True, "KV_FP8": True, "BLOCK_HQ": 64, "BLOCK_HKV": 8, "BLOCK_HALF": 64}, 4),
    (paged_attention._paged_prefill_kernel, attn_args, {**attn_const, "KV_FP8": False}, 8),
    (paged_attention._paged_prefill_kernel, u8_caches(attn_args),
     {**attn_const, "KV_FP8": True}, 8),
]
gemm_args = [("out_ptr", "*DT"), ("a_ptr", "*fp8e4nv"), ("b_ptr", "*fp8e4nv"),
             ("a_scale_ptr", "*fp32"), ("b_scale_ptr", "*fp32"), ("bias_ptr", "*DT")] + [
             (n, "i32") for n in ("M", "N", "K", "out_stride", "a_stride", "b_stride")]
fp8_cases = [  # E4M3 needs sm_89+: compiled for sm_90 only
    (activation._silu_mul_kernel, [("out_ptr", "*fp8e4nv")] + silu_args[1:],
     {"FP8_OUT": True, "BLOCK": 1024}, 4),
    (norm._rms_norm_kernel, [("out_ptr", "*fp8e4nv")] + norm_args[1:],
     {"FUSED_ADD": True, "FP8_OUT": True, "BLOCK": 8192}, 8),
    (fp8._amax_rows_kernel, [("amax_ptr", "*fp32"), ("x_ptr", "*DT"), ("cols", "i32"),
                             ("x_stride", "i32")], {"BLOCK": 1024}, 4),
    (fp8._quantize_kernel, [("out_ptr", "*fp8e4nv"), ("x_ptr", "*DT"), ("scale_ptr", "*fp32"),
                            ("cols", "i32"), ("out_stride", "i32"), ("x_stride", "i32")],
     {"SCALE_MODE": 1, "BLOCK": 1024}, 4),
    (fp8._fp8_gemm_kernel, gemm_args,
     {"A_PER_ROW": True, "B_PER_ROW": True, "HAS_BIAS": False, "BLOCK_M": 128, "BLOCK_N": 128,
      "BLOCK_K": 128, "GROUP_M": 8}, 8),
]
done = []
for arch, arch_cases in ((80, cases), (90, cases + fp8_cases)):
    for fn, args, const, warps in arch_cases:
        signature = sig(args, "bf16")
        signature.update({k: "constexpr" for k in const})
        k = triton.compile(ASTSource(fn, signature, const), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": warps})
        assert k.asm["cubin"], fn.__name__
        if fn is fp8._fp8_gemm_kernel:  # Hopper FP8 tensor-core instructions
            assert "wgmma" in k.asm["ptx"], "the FP8 GEMM does not use wgmma on sm_90"
        if fn is gemm._batch_invariant_linear_kernel:  # bf16 on the tensor cores
            assert "mma" in k.asm["ptx"], f"batch_invariant_linear: no mma on sm_{arch}"
        done.append(f"{fn.__name__}@sm_{arch}")
# The attention kernel as a launch specializes it (pointers and the strides, block size
# and head_dim divisible by 16): on sm_90 both products must be wgmma and the K/V tiles
# cp.async copies (Triton's software pipeline), the two things its speed rests on.
# The same holds with an E4M3 cache (its tiles decoded in registers after the copy).
names = [n for n, _ in attn_args]
div16 = [n for n in names if n.endswith("_ptr") or "stride" in n or n in ("block_size", "head_dim")]
attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div16}
for kv_fp8 in (False, True):
    const = {**attn_const, "KV_FP8": kv_fp8}
    signature = sig(u8_caches(attn_args) if kv_fp8 else attn_args, "bf16")
    signature.update({k: "constexpr" for k in const})
    k = triton.compile(ASTSource(paged_attention._paged_prefill_kernel, signature, const, attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 3})
    ptx = k.asm["ptx"]
    assert "wgmma.mma_async" in ptx, f"attention (KV_FP8={kv_fp8}): no wgmma on sm_90"
    assert "cp.async" in ptx, f"attention (KV_FP8={kv_fp8}): K/V loads are not cp.async on sm_90"
    done.append(f"_paged_prefill_kernel@sm_90 KV_FP8={kv_fp8} (wgmma, cp.async)")
print(json.dumps(done))
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_kernels_compile_for_sm80_and_sm90():  # about 20 s on 2 cores
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    if proc.returncode and "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("this triton install has no ptxas to compile with")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(proc.stdout.strip().splitlines()[-1])) == 21
