"""Shared test vocabulary for the kernels: the tolerance table and a helpful assert.

Tolerances are stated once, per dtype. A backend passes when every finite element
satisfies |actual - expected| <= atol + rtol * |expected| and NaN/inf appear in the
same places with the same signs. The bf16/fp16 rows allow about two units in the last
place: backends may sum a row in a different order than torch (one flipped rounding
of the RMS) or round once where the reference rounds twice (silu_mul).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float


TOLERANCES = {
    torch.float32: Tol(atol=1e-5, rtol=1e-5),
    torch.bfloat16: Tol(atol=1e-2, rtol=1.6e-2),
    torch.float16: Tol(atol=1e-3, rtol=2e-3),
}
DTYPES = list(TOLERANCES)

# Attention over an E4M3 KV cache is held to the row of q's dtype above against the
# reference on the same codes (the decode is exact). Against the unquantized cache, with
# per-tensor scales from the cache's amax, each output row keeps at least this cosine
# similarity (E4M3 rounds each key and value by up to 2^-4 relative).
FP8_KV_MIN_COSINE = 0.99


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Compare at the tolerance of expected's dtype; on failure say where and by how much."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    tol = TOLERANCES[expected.dtype]
    # fp32 holds every bf16/fp16 value exactly
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()

    finite_a, finite_e = a.isfinite(), e.isfinite()
    if not (finite_a.all() and finite_e.all()):
        nan_a, nan_e = a.isnan(), e.isnan()
        if not torch.equal(nan_a, nan_e):
            idx = (nan_a != nan_e).nonzero()[:5].tolist()
            raise AssertionError(f"{what}: NaN positions differ, e.g. at {idx}")
        inf_a, inf_e = a.isinf(), e.isinf()
        if not torch.equal(inf_a, inf_e) or not torch.equal(a[inf_a], e[inf_e]):
            idx = ((inf_a != inf_e) | (inf_a & (a != e))).nonzero()[:5].tolist()
            raise AssertionError(f"{what}: +-inf positions or signs differ, e.g. at {idx}")

    diff = torch.where(finite_e, (a - e).abs(), 0.0)
    bad = diff > tol.atol + tol.rtol * e.abs()
    if bad.any():
        worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        examples = [
            f"{tuple(i)}: got {a[tuple(i)].item():.6g}, expected {e[tuple(i)].item():.6g}"
            for i in bad.nonzero()[:5].tolist()
        ]
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ beyond "
            f"atol={tol.atol}, rtol={tol.rtol} ({expected.dtype}); worst at {worst}: "
            f"got {a[worst].item():.6g}, expected {e[worst].item():.6g} "
            f"(|diff| {diff[worst].item():.3g}); first mismatches: " + "; ".join(examples)
        )
