"""`reward-engine env`: what this machine has, and what the engine chooses on it.

One record (``collect()``) holds the CPU and its ISA flags, the ISA level the C++
kernels run (found and chosen), torch and its threads, the GPUs, the dtype "auto"
picks and why, the backend each kernel op dispatches to per device type, and the
runtime defaults that depend on the machine. ``format_report`` prints it; the CLI
prints it as text or JSON. Collecting it runs no kernel.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import fields
from typing import Any

import torch

from . import __version__
from .config import CPU_DEFAULT_KV_CACHE_FRACTION, CPU_DEFAULT_KV_CACHE_GIB, GIB, RuntimeConfig
from .hardware import ISA_FLAGS, cpu_info, dtype_name, onednn_isa_cap, resolve_dtype


def collect() -> dict[str, Any]:
    import kernels
    from kernels import _native
    from kernels.backend import OPS

    info = cpu_info()
    report: dict[str, Any] = {
        "reward_engine": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    report["cpu"] = {
        "model": info.model,
        "arch": info.arch,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "isa_flags": {flag: flag in info.flags for flag in ISA_FLAGS},
    }
    module = _native.cpu_module()
    if module is None:
        report["cpu_kernels"] = {"built": False, "error": _native.import_error("_C")}
    else:
        report["cpu_kernels"] = {
            "built": True,
            "isa_levels_found": list(module.supported_isas()),
            "isa_level_best": module.best_isa(),
            "isa_level_chosen": module.active_isa(),
            "forced_by": os.environ.get("REWARD_ENGINE_CPU_ISA") or None,
            "threading": module.threading_runtime() or "pool",
            "int8_gemm": module.int8_gemm_isa(),
            "bf16_attention": _bf16_attention_path(),
        }
    report["torch"] = {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "onednn": torch.backends.mkldnn.is_available(),
        "ONEDNN_MAX_CPU_ISA": onednn_isa_cap(),
    }
    report["gpus"] = _gpus()
    report["cuda_kernels"] = {
        "built": _native.cuda_module() is not None,
        "error": None if _native.cuda_module() is not None else _native.import_error("_C_cuda"),
    }
    report["dtype_auto"] = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        dtype, why = resolve_dtype("auto", device)
        report["dtype_auto"][device] = {"dtype": dtype_name(dtype), "why": why}
    report["kernel_backends"] = {}
    for name, op in sorted(OPS.items()):
        row = {}
        for device in devices:
            try:
                backend, why = op.choose(torch.device(device))
            except kernels.BackendUnavailableError as exc:
                backend, why = "error", str(exc)
            row[device] = {"backend": backend, "why": why}
        report["kernel_backends"][name] = row
    report["defaults"] = _defaults()
    return report


def _bf16_attention_path() -> str:
    """What the cpu backend runs for bf16 attention over an unquantized cache here."""
    from kernels.paged_attention import cpu_attention_path

    probe = torch.empty(0, 1, 8, dtype=torch.bfloat16)
    try:
        path = cpu_attention_path(probe, probe.view(0, 1, 1, 8))
    except ValueError as exc:  # a bad REWARD_ENGINE_CPU_ATTENTION
        return f"error ({exc})"
    return "torch SDPA" if path == "sdpa" else "C++ kernel"


def _gpus() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append({
            "index": i,
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / GIB, 1),
        })  # fmt: skip
    return out


def _defaults() -> dict[str, Any]:
    from .runner import available_memory_bytes

    rc = RuntimeConfig()
    available = available_memory_bytes(torch.device("cpu"))
    pool = min(CPU_DEFAULT_KV_CACHE_GIB * GIB, available * CPU_DEFAULT_KV_CACHE_FRACTION)
    keep = ("block_size", "max_num_batched_tokens", "max_num_seqs", "max_waiting_requests")
    out: dict[str, Any] = {f.name: getattr(rc, f.name) for f in fields(rc) if f.name in keep}
    out["kv_cache_pretouch"] = rc.kv_cache_pretouch
    out["host_memory_available_gib"] = round(available / GIB, 1)
    out["cpu_kv_pool_gib"] = round(pool / GIB, 2)
    return out


def format_report(report: dict[str, Any]) -> str:
    lines = [f"reward-engine {report['reward_engine']}  python {report['python']}  "
             f"{report['platform']}"]  # fmt: skip
    cpu = report["cpu"]
    flags = [f for f, present in cpu["isa_flags"].items() if present]
    lines += [
        "",
        f"CPU          {cpu['model']} ({cpu['arch']}), {cpu['usable_cpus'] or cpu['logical_cpus']}"
        f" usable of {cpu['logical_cpus']} logical CPUs",
        f"ISA flags    {' '.join(flags) or '(none of ' + ', '.join(cpu['isa_flags']) + ')'}",
    ]
    ck = report["cpu_kernels"]
    if ck["built"]:
        forced = f" (REWARD_ENGINE_CPU_ISA={ck['forced_by']})" if ck["forced_by"] else ""
        lines.append(
            f"C++ kernels  ISA levels found: {', '.join(ck['isa_levels_found'])}; "
            f"chosen: {ck['isa_level_chosen']}{forced}; threads on {ck['threading']}"
        )
        lines.append(
            f"             INT8 GEMM: {ck['int8_gemm']}; bf16 attention: {ck['bf16_attention']}"
        )
    else:
        lines.append(f"C++ kernels  not built ({ck['error']}): the reference backend runs")
    t = report["torch"]
    lines.append(
        f"torch        {t['version']}, CPU capability {t['cpu_capability']}, "
        f"{t['threads']} threads ({t['interop_threads']} inter-op), "
        f"OMP_NUM_THREADS={t['OMP_NUM_THREADS'] or 'unset'}, oneDNN "
        f"{'yes' if t['onednn'] else 'no'}"
        + (f", ONEDNN_MAX_CPU_ISA={t['ONEDNN_MAX_CPU_ISA']}" if t["ONEDNN_MAX_CPU_ISA"] else "")
    )
    gpus = report["gpus"]
    if gpus:
        for g in gpus:
            lines.append(f"GPU {g['index']}        {g['name']} (sm {g['capability']}, "
                         f"{g['memory_gib']} GiB)")  # fmt: skip
    else:
        lines.append("GPUs         none visible to torch")
    cuda = report["cuda_kernels"]
    lines.append("CUDA kernels " + ("built" if cuda["built"] else f"not built ({cuda['error']})"))
    lines.append("")
    for device, choice in report["dtype_auto"].items():
        lines.append(f"dtype auto   {device}: {choice['dtype']} ({choice['why']})")
    lines += ["", "kernel backends per op:"]
    for name, row in report["kernel_backends"].items():
        cells = "  ".join(f"{dev}: {c['backend']}" for dev, c in row.items())
        lines.append(f"  {name:<24} {cells}")
        for dev, c in row.items():
            if c["backend"] in ("reference", "error"):
                lines.append(f"  {'':<24}   ({dev}: {c['why']})")
    d = report["defaults"]
    lines += [
        "",
        f"defaults     token budget {d['max_num_batched_tokens']} per step, block size "
        f"{d['block_size']}, up to {d['max_num_seqs']} running requests",
        f"             CPU KV pool {d['cpu_kv_pool_gib']} GiB (min({CPU_DEFAULT_KV_CACHE_GIB:g} "
        f"GiB, {CPU_DEFAULT_KV_CACHE_FRACTION:.0%} of {d['host_memory_available_gib']} GiB "
        f"available)), pretouched: {'yes' if d['kv_cache_pretouch'] else 'no'}",
    ]
    return "\n".join(lines)
