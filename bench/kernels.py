"""Kernel microbenchmarks: every op, every backend that runs here, against a PyTorch
baseline timed in the same run, with a roofline measured in the same run.

Baselines: the unfused PyTorch ops of the `reference` backend (norms, silu_mul, rope,
fp8_quantize); torch's own matmul (torch.mm: oneDNN on CPU, cuBLAS on GPU) for
batch_invariant_linear, timed on every CPU ISA path, and for the INT8 W8A8 GEMM options
(this project's kernel per int8 ISA, torch's quantized engines, torch._int_mm); torch SDPA on the equivalent
contiguous tensors for attention (causal, GQA); torch._scaled_mm for the FP8 GEMM on a
GPU. rope_and_cache and attention also run each backend with an E4M3 KV cache
(`<backend>, fp8 KV cache`) beside the cache in the activation dtype, in the same turns;
the "FP8 KV cache" section gives their time ratios. Rooflines: a large tensor copy
(read + write bytes / time) for bandwidth-bound ops and a large bf16 matmul for
compute-bound ones. Each row reports the median time, GB/s or TFLOP/s, the share of
the roofline and the speedup over the baseline; the header names the device, the
versions and the date. Writes bench/results/kernels_<device>.md and .json. This file
holds the cases, the plan per device and the targets; timing and reporting are in
bench/microbench.py.

    python bench/kernels.py                  # CPU: cpu and reference backends (~2-3 min)
    python bench/kernels.py --device cuda    # GPU: cuda and triton backends, GPU targets
    python bench/kernels.py --only attention --quick
    python bench/kernels.py --only int8 --out bench/results/int8_gemm_cpu_<class>   # W8A8 options

Not a test: pytest collects tests/ only. The `triton` backend is measured on CUDA
tensors only (on CPU it runs in Triton's interpreter, which is for tests).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
# the repository root goes first, so `kernels` is the package, not this script
sys.path.insert(0, str(ROOT))

from microbench import Case, cpu_flags, measure, rooflines, write_report  # noqa: E402

import kernels  # noqa: E402
from kernels import backend as dispatch  # noqa: E402
from kernels.activation import SILU_MUL  # noqa: E402
from kernels.fp8 import FP8_GEMM, FP8_QUANTIZE  # noqa: E402
from kernels.gemm import BATCH_INVARIANT_LINEAR  # noqa: E402
from kernels.norm import FUSED_ADD_RMS_NORM, RMS_NORM  # noqa: E402
from kernels.paged_attention import PAGED_PREFILL_ATTENTION  # noqa: E402
from kernels.rope import ROPE_AND_CACHE  # noqa: E402

OPS = {op.name: op for op in (RMS_NORM, FUSED_ADD_RMS_NORM, SILU_MUL, ROPE_AND_CACHE,
                              PAGED_PREFILL_ATTENTION, FP8_QUANTIZE, FP8_GEMM,
                              BATCH_INVARIANT_LINEAR)}  # fmt: skip

# Llama-3.x shapes: (hidden, intermediate, q heads, kv heads, head_dim)
MODELS = {"70b": (8192, 28672, 64, 8, 128), "8b": (4096, 14336, 32, 8, 128),
          "1b": (2048, 8192, 32, 8, 64)}  # fmt: skip
FP8_GEMM_SHAPES = [(10240, 8192), (8192, 8192), (57344, 8192), (8192, 28672)]  # (N, K), 70B
FP8_KV = ", fp8 KV cache"  # the label suffix of the runs with an E4M3 KV cache


# ----------------------------------------------------------------------------- cases


def _backends(op, device: torch.device, wanted: list[str]) -> list[str]:
    usable = dispatch.available_backends(op, device)
    return [b for b in wanted if b in usable]


def norm_cases(device, dtype, model, tokens, wanted) -> list[Case]:
    hidden = MODELS[model][0]
    x = torch.randn(tokens, hidden, device=device).to(dtype)
    res = torch.randn(tokens, hidden, device=device).to(dtype)
    w = torch.randn(hidden, device=device).to(dtype)
    out = torch.empty_like(x)
    label = f"{model} [{tokens}, {hidden}]"
    item = x.element_size() * tokens * hidden
    runs = {"torch (unfused)": lambda: kernels.rms_norm(x, w, 1e-5, backend="reference")}
    for b in _backends(RMS_NORM, device, wanted):
        runs[b] = lambda b=b: kernels.rms_norm(x, w, 1e-5, backend=b)
        runs[f"{b}, out="] = lambda b=b: kernels.rms_norm(x, w, 1e-5, out=out, backend=b)
    norm = Case("rms_norm", label, dtype, runs, "torch (unfused)", bytes=2 * item)
    runs = {"torch (unfused)": lambda: kernels.fused_add_rms_norm(
        x, res, w, 1e-5, backend="reference")}  # fmt: skip
    for b in _backends(FUSED_ADD_RMS_NORM, device, wanted):
        runs[b] = lambda b=b: kernels.fused_add_rms_norm(x, res, w, 1e-5, backend=b)
        runs[f"{b}, out="] = lambda b=b: kernels.fused_add_rms_norm(
            x, res, w, 1e-5, out=out, backend=b)  # fmt: skip
        runs[f"{b}, out=x"] = lambda b=b: kernels.fused_add_rms_norm(
            x, res, w, 1e-5, out=x, backend=b)  # fmt: skip
    note = ("`cpu`/`cuda`/`triton`: a fresh output per call; `, out=`: written into a reused "
            "buffer; `, out=x`: fully in place, as engine/model.py calls it")  # fmt: skip
    fused = Case("fused_add_rms_norm", label, dtype, runs, "torch (unfused)", bytes=4 * item,
                 note=note)  # fmt: skip
    return [norm, fused]


def silu_cases(device, dtype, model, tokens, wanted) -> list[Case]:
    inter = MODELS[model][1]
    x = torch.randn(tokens, 2 * inter, device=device).to(dtype)
    out = torch.empty(tokens, inter, device=device, dtype=dtype)
    runs = {"torch (unfused)": lambda: kernels.silu_mul(x, backend="reference")}
    for b in _backends(SILU_MUL, device, wanted):
        runs[b] = lambda b=b: kernels.silu_mul(x, backend=b)
        runs[f"{b}, out="] = lambda b=b: kernels.silu_mul(x, out=out, backend=b)
    return [Case("silu_mul", f"{model} [{tokens}, 2 x {inter}]", dtype, runs, "torch (unfused)",
                 bytes=3 * x.element_size() * tokens * inter)]  # fmt: skip


def rope_cases(device, dtype, model, tokens, wanted) -> list[Case]:
    _, _, hq, hkv, d = MODELS[model]
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device=device).to(dtype)
    q = qkv[:, : hq * d].view(tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(tokens, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(tokens, hkv, d)
    cache = kernels.compute_cos_sin_cache(d, 8192, 500000.0, device=device)
    positions = torch.randint(0, 8192, (tokens,), device=device)
    block = 16
    kc = torch.empty(-(-tokens // block) + 1, block, hkv, d, device=device, dtype=dtype)
    vc = torch.empty_like(kc)
    slots = torch.randperm(kc.shape[0] * block, device=device)[:tokens]
    args = (q, k, v, positions, cache, kc, vc, slots)
    kc8 = torch.empty(kc.shape, device=device, dtype=torch.float8_e4m3fn)
    vc8 = torch.empty_like(kc8)
    args8 = (q, k, v, positions, cache, kc8, vc8, slots)
    scales = {"k_scale": torch.tensor(0.05, device=device),
              "v_scale": torch.tensor(0.04, device=device)}  # fmt: skip
    runs = {"torch (unfused)": lambda: kernels.rope_and_cache(*args, backend="reference")}
    for b in _backends(ROPE_AND_CACHE, device, wanted):
        runs[b] = lambda b=b: kernels.rope_and_cache(*args, backend=b)
        runs[b + FP8_KV] = lambda b=b: kernels.rope_and_cache(*args8, **scales, backend=b)
    # read and write q and k, read v, write k and v to the cache, read positions and cos/sin
    elem = qkv.element_size()
    traffic = elem * tokens * d * (2 * hq + 5 * hkv) + 4 * tokens * d
    traffic8 = elem * tokens * d * (2 * hq + 3 * hkv) + 2 * tokens * d * hkv + 4 * tokens * d
    fp8_bytes = {label: traffic8 for label in runs if label.endswith(FP8_KV)}
    return [Case("rope_and_cache", f"{model} {tokens} tokens, {hq}q/{hkv}kv d{d}", dtype, runs,
                 "torch (unfused)", bytes=traffic, run_bytes=fp8_bytes)]  # fmt: skip


def attention_cases(device, dtype, config, wanted, with_reference=True) -> list[Case]:
    num_seqs, seq_len, hq, hkv, d = config
    block = 16
    g = torch.Generator().manual_seed(0)
    blocks_per_seq = -(-seq_len // block)
    kc = torch.randn(num_seqs * blocks_per_seq, block, hkv, d, generator=g).to(dtype)
    vc = torch.randn(kc.shape, generator=g).to(dtype)
    q = torch.randn(num_seqs * seq_len, hq, d, generator=g).to(dtype)
    tables = torch.randperm(kc.shape[0], generator=g).view(num_seqs, blocks_per_seq)
    kc, vc, q, tables = kc.to(device), vc.to(device), q.to(device), tables.to(device).int()
    starts = [i * seq_len for i in range(num_seqs + 1)]
    lens = [seq_len] * num_seqs
    scale = d**-0.5
    # SDPA on the same keys as contiguous [S, H, L, D] tensors (gathered outside the timing)
    k4 = kc[tables.long()].reshape(num_seqs, -1, hkv, d)[:, :seq_len].transpose(1, 2)
    v4 = vc[tables.long()].reshape(num_seqs, -1, hkv, d)[:, :seq_len].transpose(1, 2)
    q4 = q.view(num_seqs, seq_len, hq, d).transpose(1, 2)
    k4, v4, q4 = k4.contiguous(), v4.contiguous(), q4.contiguous()
    sdpa = "torch SDPA (contiguous)"
    runs = {sdpa: lambda: F.scaled_dot_product_attention(
        q4, k4, v4, is_causal=True, scale=scale, enable_gqa=True)}  # fmt: skip
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        k_rep = k4.repeat_interleave(hq // hkv, dim=1)
        v_rep = v4.repeat_interleave(hq // hkv, dim=1)

        def flash():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q4, k_rep, v_rep, is_causal=True,
                                                      scale=scale)  # fmt: skip

        runs["torch SDPA-flash (kv repeated)"] = flash
    args = (q, kc, vc, tables, starts, lens, scale)
    # the same keys and values in E4M3 at per-tensor scales from their amax
    k_scale, v_scale = (c.float().abs().amax() / 448 for c in (kc, vc))
    kc8 = kernels.fp8_quantize(kc, k_scale, backend="reference")[0]
    vc8 = kernels.fp8_quantize(vc, v_scale, backend="reference")[0]
    args8 = (q, kc8, vc8, tables, starts, lens, scale)
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    if with_reference:
        runs["reference"] = lambda: kernels.paged_prefill_attention(*args, backend="reference")
    for b in _backends(PAGED_PREFILL_ATTENTION, device, wanted):
        runs[b] = lambda b=b: kernels.paged_prefill_attention(*args, backend=b)
        runs[b + FP8_KV] = lambda b=b: kernels.paged_prefill_attention(*args8, **scales,
                                                                         backend=b)  # fmt: skip
        if b == "cpu":  # the C++ kernel and the SDPA route each, whichever auto picks
            runs["cpu [kernel]"] = partial(_with_env, "REWARD_ENGINE_CPU_ATTENTION", "kernel",
                                           runs["cpu"])  # fmt: skip
            runs["cpu [sdpa route]"] = partial(_with_env, "REWARD_ENGINE_CPU_ATTENTION", "sdpa",
                                               runs["cpu"])  # fmt: skip
    flops = 4.0 * num_seqs * hq * d * seq_len * (seq_len + 1) / 2  # causal: half the scores
    return [Case("paged_prefill_attention",
                 f"{num_seqs} x {seq_len} tokens, {hq}q/{hkv}kv d{d}, block 16", dtype, runs,
                 sdpa, flops=flops)]  # fmt: skip


def fp8_quantize_cases(device, m, k, wanted) -> list[Case]:
    from kernels.fp8 import FP8_QUANTIZE

    x = torch.randn(m, k, device=device).to(torch.bfloat16)
    runs = {"torch (unfused)": lambda: kernels.fp8_quantize(
        x, granularity="token", backend="reference")}  # fmt: skip
    for bk in _backends(FP8_QUANTIZE, device, wanted):
        runs[bk] = lambda bk=bk: kernels.fp8_quantize(x, granularity="token", backend=bk)
    return [Case("fp8_quantize (per token)", f"[{m}, {k}]", torch.bfloat16, runs,
                 "torch (unfused)", bytes=3 * m * k)]  # fmt: skip


def fp8_gemm_cases(device, m, n, k, wanted) -> list[Case]:
    """a per-token scales, b per-output-channel scales, bf16 output."""
    from kernels.fp8 import FP8_GEMM

    aq, a_s = kernels.fp8_quantize(torch.randn(m, k, device=device), granularity="token")
    bq, b_s = kernels.fp8_quantize(torch.randn(n, k, device=device), granularity="token")
    a_s, b_s = a_s.reshape(-1), b_s.reshape(-1)
    if device.type == "cuda":
        base = "torch._scaled_mm"
        runs = {base: lambda: torch._scaled_mm(aq, bq.t(), scale_a=a_s.view(-1, 1),
                                               scale_b=b_s.view(1, -1),
                                               out_dtype=torch.bfloat16)}  # fmt: skip
    else:
        base = "reference"
        runs = {base: lambda: kernels.fp8_gemm(aq, bq, a_s, b_s, backend="reference")}
    for bk in _backends(FP8_GEMM, device, wanted):
        runs[bk] = lambda bk=bk: kernels.fp8_gemm(aq, bq, a_s, b_s, backend=bk)
    return [Case("fp8_gemm (token x channel scales)", f"M={m} N={n} K={k}", torch.bfloat16,
                 runs, base, flops=2.0 * m * n * k)]  # fmt: skip


def linear_cases(device, dtype, m, n, k, label, wanted) -> list[Case]:
    """batch_invariant_linear against torch.mm on the same operands (bf16 in, bf16 out);
    on CPU once per instruction-set path (REWARD_ENGINE_CPU_ISA, read on every call)."""
    x = torch.randn(m, k, device=device).to(dtype)
    w = torch.randn(n, k, device=device).to(dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    base = "torch.mm"
    runs = {base: lambda: torch.mm(x, w.t(), out=out)}
    for b in _backends(BATCH_INVARIANT_LINEAR, device, wanted):
        if b != "cpu":
            runs[b] = lambda b=b: kernels.batch_invariant_linear(x, w, out=out, backend=b)
            continue
        for isa in _cpu_isas()[::-1]:
            runs[f"cpu [{isa}]"] = partial(_with_isa, isa, lambda: kernels.batch_invariant_linear(
                x, w, out=out, backend="cpu"))  # fmt: skip
    return [Case("batch_invariant_linear", f"{label} M={m} N={n} K={k}", dtype, runs, base,
                 flops=2.0 * m * n * k)]  # fmt: skip


INT8_LEVELS = ("amx", "avx512_vnni", "avx2", "scalar")  # REWARD_ENGINE_INT8_GEMM values


def int8_gemm_cases(device, m, n, k, label, wanted) -> list[Case]:
    """The W8A8 GEMM options of a CPU, each on the same operands: this project's kernel
    on every int8 ISA path this CPU has (per-token x per-channel scales, out in the
    compute dtype, weight prepacked once as the engine does); the same with the dynamic
    activation quantize in front (the work torch's dynamic quantized linear does); torch's
    quantized engines (`quantized.linear_dynamic`: fp32 in and out, per-channel weight,
    per-tensor activation quantized at run time); torch._int_mm (int32 out, no scales);
    and the dense matmul a non-quantized engine runs, in the dtype auto picks (baseline)
    and in fp32."""
    from engine.hardware import resolve_dtype

    dtype = resolve_dtype("auto", device)[0]
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device)
    xd, wd = x.to(dtype), w.to(dtype)
    aq, a_s = kernels.int8_quantize(x, granularity="token")
    bq, b_s = kernels.int8_quantize(w, granularity="token")
    packed = kernels.prepack_int8_weight(bq)
    out = torch.empty(m, n, dtype=dtype)
    base = f"torch.mm ({str(dtype).removeprefix('torch.')})"
    runs = {base: lambda: torch.mm(xd, wd.t(), out=out)}
    if dtype != torch.float32:
        runs["torch.mm (float32)"] = lambda: torch.mm(x, w.t())
    for level in _int8_levels():
        if level == "scalar" and m * n * k > 2**28:
            continue  # minutes at these shapes; it is the correctness fallback
        gemm = partial(kernels.int8_gemm, aq, packed, a_s, b_s, dtype, out=out, backend="cpu")
        runs[f"int8_gemm cpu [{level}]"] = partial(_with_env, "REWARD_ENGINE_INT8_GEMM", level,
                                                   gemm)  # fmt: skip
    runs["int8_quantize + int8_gemm cpu"] = lambda: kernels.int8_gemm(
        kernels.int8_quantize(xd, granularity="token")[0], packed, a_s, b_s, dtype, out=out)
    runs.update(_torch_quantized_linears(x, w))
    ai, bi = aq.contiguous(), bq.t().contiguous()
    runs["torch._int_mm"] = lambda: torch._int_mm(ai, bi)
    return [Case("int8 W8A8 GEMM options", f"{label} M={m} N={n} K={k}", dtype, runs, base,
                 flops=2.0 * m * n * k)]  # fmt: skip


def _int8_levels() -> list[str]:
    """The int8 GEMM paths this CPU has (a forced level above the CPU's runs the best)."""
    found = []
    for level in INT8_LEVELS:
        if _with_env("REWARD_ENGINE_INT8_GEMM", level, kernels.int8_gemm_isa) == level:
            found.append(level)
    return found


def _torch_quantized_linears(x, w) -> dict:
    runs = {}
    scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-8)
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    before = torch.backends.quantized.engine
    for engine in ("onednn", "fbgemm", "x86"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated in torch
            qw = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qw, None)
        runs[f"torch quantized.linear_dynamic [{engine}]"] = partial(
            _with_quantized_engine, engine, packed, x)
    torch.backends.quantized.engine = before
    return runs


def _with_quantized_engine(engine, packed, x):
    torch.backends.quantized.engine = engine
    return torch.ops.quantized.linear_dynamic(x, packed, False)


def _with_env(name, value, fn):
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        if before is None:
            os.environ.pop(name)
        else:
            os.environ[name] = before


def _cpu_isas() -> list[str]:
    from kernels import _native

    module = _native.cpu_module()
    return [i for i in module.supported_isas() if i != "scalar"] if module else []


def _with_isa(isa, fn):
    return _with_env("REWARD_ENGINE_CPU_ISA", isa, fn)


# (M, N, K, label): the small e2e checkpoint's projections at a full step and at the
# final layer's few rows, and the 1B projections at 512 tokens
LINEAR_SHAPES = [(4096, 1024, 512, "small qkv"), (4096, 3072, 512, "small gate_up"),
                 (4096, 512, 1536, "small down"), (16, 3072, 512, "small gate_up"),
                 (512, 3072, 2048, "1b qkv"), (512, 16384, 2048, "1b gate_up"),
                 (512, 2048, 8192, "1b down")]  # fmt: skip


# the 1B checkpoint's projections at a 512-token step (the e2e INT8 engine's shape),
# the small one's at a full 4096-token step, and a few-row step
INT8_SHAPES = [(512, 3072, 2048, "1b qkv"), (512, 16384, 2048, "1b gate_up"),
               (512, 2048, 8192, "1b down"), (4096, 3072, 512, "small gate_up"),
               (16, 16384, 2048, "1b gate_up")]  # fmt: skip


def plan(device: torch.device, quick: bool) -> tuple[list, str]:
    """Builders of this device's cases (each makes its inputs when called, so only one
    case's tensors are alive at a time), and a line on which shapes were reduced."""
    bf16 = torch.bfloat16
    if device.type == "cpu":
        wanted = ["cpu"]
        t = 1024 if quick else 4096
        builders = [partial(norm_cases, device, bf16, m, t, wanted) for m in ("70b", "1b")]
        builders += [partial(silu_cases, device, bf16, "70b", 256 if quick else 1024, wanted),
                     partial(silu_cases, device, bf16, "1b", t, wanted)]  # fmt: skip
        builders += [partial(rope_cases, device, bf16, m, t, wanted) for m in ("70b", "1b")]
        attn = [(8, 512, 32, 8, 128), (2, 512, 64, 8, 128), (8, 512, 32, 8, 64)]
        builders += [partial(attention_cases, device, bf16, c, wanted)
                     for c in (attn[:1] if quick else attn)]  # fmt: skip
        builders += [partial(fp8_quantize_cases, device, t, 8192, wanted),
                     partial(fp8_gemm_cases, device, 64, 1024, 2048, wanted)]  # fmt: skip
        builders += [partial(linear_cases, device, bf16, *shape, wanted)
                     for shape in LINEAR_SHAPES[: 2 if quick else None]]  # fmt: skip
        builders += [partial(int8_gemm_cases, device, *shape, wanted)
                     for shape in INT8_SHAPES[: 2 if quick else None]]  # fmt: skip
        reduced = (
            "CPU shapes are reduced where a 70B shape would take minutes on 2 cores: "
            f"silu_mul 70b at {256 if quick else 1024} tokens; attention at 512 tokens per "
            "sequence (8 sequences with 8B heads 32q/8kv, the CPU target; 2 sequences with 70B "
            "heads 64q/8kv; 8 with 1B heads); fp8_gemm at M=64 N=1024 K=2048 (the CPU path is "
            "an exact emulation for accuracy, not a fast path). The triton backend is not "
            "timed on CPU (it runs there only in Triton's interpreter)."
        )
        return builders, reduced
    wanted = ["cuda", "triton"]
    builders = [partial(f, device, bf16, m, 8192, wanted)
                for f in (norm_cases, silu_cases, rope_cases) for m in ("70b", "1b")]  # fmt: skip
    builders += [partial(attention_cases, device, bf16, c, wanted, with_reference=False)
                 for c in ((8, 2048, 64, 8, 128), (8, 2048, 32, 8, 64))]  # fmt: skip
    builders += [partial(fp8_quantize_cases, device, 8192, k, wanted) for k in (8192, 28672)]
    gemms = [(n, k) for n, k in FP8_GEMM_SHAPES] + [(2560, 2048), (2048, 8192)]  # + 1B
    builders += [partial(fp8_gemm_cases, device, 8192, n, k, wanted)
                 for n, k in gemms[: 2 if quick else None]]  # fmt: skip
    builders += [partial(linear_cases, device, bf16, 8192, n, k, "70b", wanted)
                 for n, k in FP8_GEMM_SHAPES[: 1 if quick else None]]  # fmt: skip
    reduced = (
        "GPU shapes: 8192 tokens (70B and 1B widths); attention 8 x 2048 tokens; FP8 "
        "GEMMs at M=8192 (70B projections, then 1B qkv and down); no reference rows."
    )
    return builders, reduced


def _find(rows, op, shape_prefix, impl):
    for r in rows:
        if r["op"] == op and r["shape"].startswith(shape_prefix) and r["impl"] == impl:
            return r
    return None


def targets(rows: list[dict], device: torch.device) -> list[dict]:
    """The issue's targets, evaluated on this run's rows (absent rows: not measured)."""
    out = []

    def add(name, value, goal, ok):
        out.append({"target": name, "measured": value, "goal": goal,
                    "met": None if ok is None else bool(ok)})  # fmt: skip

    def val(row, key):
        return None if row is None else row.get(key)

    if device.type == "cpu":
        ref = _find(rows, "fused_add_rms_norm", "70b [4096", "torch (unfused)")
        for impl in ("cpu, out=x", "cpu, out=", "cpu"):
            r = _find(rows, "fused_add_rms_norm", "70b [4096", impl)
            sp, pct = val(r, "speedup_vs_baseline"), val(r, "roofline_pct")
            add(f"fused_add_rms_norm [4096, 8192] bf16, {impl}: x unfused reference",
                sp, ">= 3x", None if sp is None or ref is None else sp >= 3)  # fmt: skip
            add(f"fused_add_rms_norm [4096, 8192] bf16, {impl}: % of copy bandwidth",
                pct, ">= 50 %", None if pct is None else pct >= 50)  # fmt: skip
        shape = "8 x 512 tokens, 32q/8kv d128"
        cpu = _find(rows, "paged_prefill_attention", shape, "cpu")
        sdpa = _find(rows, "paged_prefill_attention", shape, "torch SDPA (contiguous)")
        ref = _find(rows, "paged_prefill_attention", shape, "reference")
        ratio = None if not (cpu and sdpa) else cpu["median_s"] / sdpa["median_s"]
        add("paged_prefill_attention 8x512, 32q/8kv, d128 bf16: cpu time / SDPA time",
            ratio, "<= 1.5", None if ratio is None else ratio <= 1.5)  # fmt: skip
        sp = None if not (cpu and ref) else ref["median_s"] / cpu["median_s"]
        add("paged_prefill_attention 8x512, 32q/8kv, d128 bf16: x reference", sp, ">= 3x",
            None if sp is None else sp >= 3)  # fmt: skip
        return out
    for impl in ("cuda, out=", "triton, out="):
        r = _find(rows, "rms_norm", "70b [8192", impl)
        pct = val(r, "roofline_pct")
        add(f"rms_norm [8192, 8192] bf16, {impl}: % of copy bandwidth", pct, ">= 80 %",
            None if pct is None else pct >= 80)  # fmt: skip
    for n, k in FP8_GEMM_SHAPES:
        shape = f"M=8192 N={n} K={k}"
        base = _find(rows, "fp8_gemm (token x channel scales)", shape, "torch._scaled_mm")
        for impl in ("cuda", "triton"):
            r = _find(rows, "fp8_gemm (token x channel scales)", shape, impl)
            pct = None if not (r and base and r.get("TFLOPs") and base.get("TFLOPs")) else (
                100 * r["TFLOPs"] / base["TFLOPs"])  # fmt: skip
            add(f"fp8_gemm {shape}, {impl}: % of torch._scaled_mm TFLOP/s", pct, ">= 90 %",
                None if pct is None else pct >= 90)  # fmt: skip
    shape = "8 x 2048 tokens, 64q/8kv d128"
    base = _find(rows, "paged_prefill_attention", shape, "torch SDPA-flash (kv repeated)")
    for impl in ("cuda", "triton"):
        r = _find(rows, "paged_prefill_attention", shape, impl)
        pct = None if not (r and base and r.get("TFLOPs") and base.get("TFLOPs")) else (
            100 * r["TFLOPs"] / base["TFLOPs"])  # fmt: skip
        add(f"paged_prefill_attention 8x2048, 64q/8kv, d128 bf16, {impl}: % of SDPA-flash "
            "TFLOP/s", pct, ">= 70 %", None if pct is None else pct >= 70)  # fmt: skip
    return out


def fastest_gpu_backends(rows: list[dict]) -> list[dict]:
    """Per op: the plain `cuda` and `triton` rows of each shape, which was faster, and
    whether the op's dispatch order (Op.gpu_order) already puts the faster one first."""
    by_op: dict[str, list[dict]] = {}
    for r in rows:
        if r["impl"] not in dispatch.GPU_ORDER or "median_s" not in r:
            continue
        name = r["op"].split(" ")[0]  # "fp8_gemm (token x channel scales)" -> fp8_gemm
        by_op.setdefault(name, []).append(r)
    out = []
    for name, op_rows in by_op.items():
        times: dict[str, dict[str, float]] = {}
        for r in op_rows:
            times.setdefault(r["shape"], {})[r["impl"]] = r["median_s"]
        both = {shape: t for shape, t in times.items() if len(t) == 2}
        wins = {b: sum(min(t, key=t.get) == b for t in both.values()) for b in dispatch.GPU_ORDER}
        order = OPS[name].gpu_order if name in OPS else dispatch.GPU_ORDER
        faster = None
        if both:
            faster = max(wins, key=wins.get) if len(set(wins.values())) > 1 else "tie"
        out.append({"op": name, "shapes": len(both), "wins": wins, "first_in_order": order[0],
                    "faster": faster,
                    "cuda_over_triton": [t["cuda"] / t["triton"] for t in both.values()]})  # fmt: skip
    return out


def fp8_kv_ratios(rows: list[dict]) -> list[dict]:
    """Per (op, shape, backend): the time with an E4M3 KV cache over the time with the
    cache in the activation dtype, both timed in the same turns."""
    times = {(r["op"], r["shape"], r["impl"]): r["median_s"] for r in rows if "median_s" in r}
    out = []
    for (op, shape, impl), t8 in times.items():
        if impl.endswith(FP8_KV):
            base = impl.removesuffix(FP8_KV)
            if (op, shape, base) in times:
                out.append({"op": op, "shape": shape, "backend": base, "fp8_ms": 1e3 * t8,
                            "base_ms": 1e3 * times[(op, shape, base)],
                            "ratio": t8 / times[(op, shape, base)]})  # fmt: skip
    return out


def fp8_kv_section(ratios: list[dict]) -> list[str]:
    """The report's "FP8 KV cache" section."""
    if not ratios:
        return []
    lines = ["## FP8 KV cache vs a cache in the activation dtype", "",
             "Each backend with an E4M3 KV cache (`, fp8 KV cache` rows; per-tensor scales) "
             "against the same backend with the cache in the activation dtype, timed in the "
             "same turns. The cache itself is half the bytes of bf16.", "",
             "| op | shape | backend | fp8 KV (ms) | activation-dtype KV (ms) | fp8 / other |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in ratios:
        lines.append(f"| {r['op']} | {r['shape']} | {r['backend']} | {r['fp8_ms']:.3f} | "
                     f"{r['base_ms']:.3f} | {r['ratio']:.2f} |")  # fmt: skip
    return lines


# ----------------------------------------------------------------------------- report


def int8_section(rows: list[dict]) -> list[str]:
    """Per shape, the fastest W8A8 option and the int8 path int8_gemm dispatches to."""
    shapes = {}
    for r in rows:
        if r["op"] == "int8 W8A8 GEMM options" and r.get("median_s"):
            shapes.setdefault(r["shape"], []).append(r)
    if not shapes:
        return []
    lines = ["## INT8 W8A8: the fastest option per shape",
             f"int8_gemm dispatches to `{kernels.int8_gemm_isa()}` on this CPU. Speedup: the "
             "baseline's time (dense matmul in the dtype auto picks) over the option's.", "",
             "| shape | fastest | its speedup | int8_gemm (dispatched) speedup | "
             "best torch quantized speedup |", "|---|---|---|---|---|"]  # fmt: skip
    chosen = f"int8_gemm cpu [{kernels.int8_gemm_isa()}]"
    for shape, group in shapes.items():
        base = next(r for r in group if r["impl"] == r["baseline"])["median_s"]
        best = min(group, key=lambda r: r["median_s"])
        ours = next((r for r in group if r["impl"] == chosen), None)
        torch_q = [r for r in group if r["impl"].startswith("torch quantized")]
        tq = min(torch_q, key=lambda r: r["median_s"]) if torch_q else None
        lines.append(
            f"| {shape} | {best['impl']} | {base / best['median_s']:.2f}x | "
            + (f"{base / ours['median_s']:.2f}x" if ours else "-") + " | "
            + (f"{base / tq['median_s']:.2f}x ({tq['impl'].split('[')[-1][:-1]})" if tq else "-")
            + " |"
        )
    return lines


def fastest_section(verdicts: list[dict]) -> list[str]:
    """The report's "Fastest GPU backend per op" section: what the dispatch order
    (kernels/README.md, "Backends and dispatch") is to follow."""
    lines = ["## Fastest GPU backend per op", "",
             "Plain `cuda` and `triton` rows (no `out=`), shape by shape. `first in order` is "
             "what dispatch tries first today (Op.gpu_order); where `faster` differs, the "
             "order should change.", "",
             "| op | shapes | cuda faster | triton faster | cuda time / triton time | faster "
             "| first in order | matches |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for v in verdicts:
        ratios = ", ".join(f"{x:.2f}" for x in v["cuda_over_triton"]) or "-"
        matches = "-" if v["faster"] in (None, "tie") else (
            "yes" if v["faster"] == v["first_in_order"] else "NO")  # fmt: skip
        lines.append(f"| {v['op']} | {v['shapes']} | {v['wins']['cuda']} | "
                     f"{v['wins']['triton']} | {ratios} | {v['faster'] or 'not measured'} | "
                     f"{v['first_in_order']} | {matches} |")  # fmt: skip
    return lines


def environment(device: torch.device) -> dict:
    env = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else (platform.processor() or platform.machine()),
        "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": os.getloadavg()[0],
    }  # fmt: skip
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
            env["device"] = names[0] if names else env["device"]
        except OSError:
            pass
        module = kernels._native.cpu_module()
        env["cpu_isa"] = module.active_isa() if module else "kernels._C not built"
        env["cpu_flags"] = cpu_flags()
    else:
        env["cuda"] = torch.version.cuda
        env["capability"] = "sm_{}{}".format(*torch.cuda.get_device_capability(device))
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller shapes")
    parser.add_argument("--only", help="comma-separated substrings of op names to run")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per timing")
    parser.add_argument("--out", default=None, help="output path without suffix")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a visible NVIDIA GPU")
    torch.manual_seed(0)
    began = time.perf_counter()
    env = environment(device)
    roof = rooflines(device, args.quick)
    print(f"{env}\nrooflines: {roof}", flush=True)
    builders, reduced = plan(device, args.quick)
    only = args.only.split(",") if args.only else None
    min_time = args.min_time or (0.3 if args.quick else (1.0 if device.type == "cpu" else 0.2))
    cases = measure(builders, device, roof, min_time, only)
    tgts = targets([r for c in cases for r in c.rows], device)
    for t in tgts:
        print(t, flush=True)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"kernels_{device.type}"
    out.parent.mkdir(parents=True, exist_ok=True)
    env["load_average_1min_at_end"] = os.getloadavg()[0]
    rows = [r for c in cases for r in c.rows]
    extra = fp8_kv_section(fp8_kv_ratios(rows))
    int8 = int8_section(rows) if device.type == "cpu" else []
    extra += [""] * bool(extra and int8) + int8
    if device.type == "cuda":
        extra += [""] * bool(extra) + fastest_section(fastest_gpu_backends(rows))
    print("\n".join(extra), flush=True)
    write_report(out, env, roof, cases, tgts, reduced, time.perf_counter() - began, extra)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
