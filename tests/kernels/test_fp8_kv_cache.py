"""The E4M3 (float8_e4m3fn) paged KV cache: rope_and_cache's quantizing write and
paged_prefill_attention's dequantizing read, on the cpu backend (every ISA path) and the
triton backend (Triton's interpreter on CPU tensors; compiled on a GPU, `gpu` marker)
against the reference. The cuda backend's cases are in test_cuda_ops.py.

- The write is bit-equal to the reference, fp8_quantize of the rotated k and of v, with
  NaN codes compared as NaN (0x7F or 0xFF: the sign a NaN gets from rope differs between
  torch and the kernels' bf16 rounding); literal codes pin saturation, inf, NaN, signed
  zeros, subnormals and ties to even; every fp16 value and every fp32 E4M3 midpoint (and
  its neighbours) is encoded as the reference does; untouched slots keep their bytes.
- The read agrees with the reference on the same codes at the tolerance of q's dtype
  (kernel_testing.TOLERANCES: the decode is exact, the scales are folded into the softmax
  scale and the output, summation order differs), over cached prefixes, empty and
  single-token chunks, GQA 1/4/8 and block sizes 1/5/16; every code decodes exactly.
- Against an unquantized cache (calibrated per-tensor scales), FP8-cache attention keeps a
  cosine similarity of at least kernel_testing.FP8_KV_MIN_COSINE per output row.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES, FP8_KV_MIN_COSINE, assert_close
from test_paged_attention import BATCH, LAYOUTS, make_batch
from test_triton_attention import BATCH as TRITON_BATCH
from test_triton_attention import LAYOUTS as TRITON_LAYOUTS
from triton_testing import device_dtype  # noqa: F401  (fixture)

import kernels
from kernels.fp8 import FP8_DTYPE
from kernels.paged_attention import paged_prefill_attention_reference
from kernels.rope import rope_and_cache_reference

# (tokens, q heads, kv heads, head_dim, block size): GQA 1/4/8, head dims below, between
# and at multiples of the vector widths, block sizes 1/5/16
WRITE_SHAPES = [(1, 4, 4, 8, 1), (7, 8, 2, 18, 5), (83, 8, 1, 64, 16), (33, 16, 2, 128, 16)]
FINITE_CODES = torch.tensor([c for c in range(256) if c & 0x7F != 0x7F], dtype=torch.uint8)


def codes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8).cpu()


def assert_codes_equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Bit-equal E4M3 codes, except that any NaN code (0x7F, 0xFF) matches any other."""
    got, want = codes(got), codes(want)
    nan_got, nan_want = (got & 0x7F) == 0x7F, (want & 0x7F) == 0x7F
    assert torch.equal(nan_got, nan_want), f"{what}: NaN codes at different places"
    bad = (got != want) & ~nan_want
    if bad.any():
        where = bad.nonzero()[:5].tolist()
        pairs = [(hex(int(got[tuple(i)])), hex(int(want[tuple(i)]))) for i in where]
        raise AssertionError(f"{what}: {int(bad.sum())} codes differ, e.g. at {where}: {pairs}")


def quantize(cache: torch.Tensor, scale: float) -> torch.Tensor:
    return kernels.fp8_quantize(cache, scale, backend="reference")[0]


# ----------------------------------------------------------------------------- the write


def write_case(tokens, num_q, num_kv, head_dim, block, dtype, seed=0):
    """qkv with values past the E4M3 range (scale 0.05: |x| > 22.4 saturates), +-inf and
    NaN in k and v; some padding slots; caches filled with random codes beforehand."""
    g = torch.Generator().manual_seed(seed)
    qkv = 8 * torch.randn(tokens, (num_q + 2 * num_kv) * head_dim, generator=g)
    k0, v0 = num_q * head_dim, (num_q + num_kv) * head_dim
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4, -1e4, 1e-6])
    for i, value in enumerate(specials):
        qkv[i % tokens, (k0 if i % 2 else v0) + 3 * i] = value
    positions = torch.randint(0, 256, (tokens,), generator=g)
    num_blocks = -(-tokens // block) + 2
    slots = torch.randperm(num_blocks * block, generator=g)[:tokens]
    if tokens > 2:
        slots[[1, tokens - 1]] = -1
    caches = torch.randint(0, 256, (2, num_blocks, block, num_kv, head_dim), generator=g)
    return qkv.to(dtype), positions, slots, caches.to(torch.uint8).view(FP8_DTYPE)


def run_write(case, num_q, num_kv, head_dim, fn, device="cpu"):
    """(qkv after rope, key codes, value codes) of fn(q, k, v, positions, cos_sin, kc, vc, slots)."""
    qkv, positions, slots, caches = case
    x = qkv.clone().to(device)
    tokens = x.shape[0]
    q = x[:, : num_q * head_dim].view(tokens, num_q, head_dim)
    k = x[:, num_q * head_dim : (num_q + num_kv) * head_dim].view(tokens, num_kv, head_dim)
    v = x[:, (num_q + num_kv) * head_dim :].view(tokens, num_kv, head_dim)
    kc, vc = caches[0].clone().to(device), caches[1].clone().to(device)
    cos_sin = kernels.compute_cos_sin_cache(head_dim, 256, 500000.0, device=device)
    fn(q, k, v, positions.to(device), cos_sin, kc, vc, slots.to(device))
    return x.cpu(), kc, vc


K_SCALE, V_SCALE = 0.05, 0.0375


def reference_write(*args):
    return rope_and_cache_reference(*args, torch.tensor(K_SCALE), torch.tensor(V_SCALE))


def check_write(case, shape, backend, device="cpu"):
    _, num_q, num_kv, head_dim, _ = shape
    got = run_write(case, num_q, num_kv, head_dim, lambda *a: kernels.rope_and_cache(
        *a, k_scale=K_SCALE, v_scale=V_SCALE, backend=backend), device)  # fmt: skip
    want = run_write(case, num_q, num_kv, head_dim, reference_write)
    assert_close(got[0], want[0], f"{backend}: q and k after rope")
    assert_codes_equal(got[1], want[1], f"{backend}: key cache")
    assert_codes_equal(got[2], want[2], f"{backend}: value cache")
    # the padding slots and every slot nobody wrote keep their bytes
    written = torch.zeros(case[3].shape[1] * case[3].shape[2], dtype=torch.bool)
    written[case[2][case[2] >= 0]] = True
    for cache, before in ((got[1], case[3][0]), (got[2], case[3][1])):
        flat, old = (
            codes(cache).view(written.shape[0], -1),
            codes(before).view(written.shape[0], -1),
        )
        assert torch.equal(flat[~written], old[~written]), f"{backend}: wrote outside its slots"


@pytest.mark.parametrize("shape", WRITE_SHAPES, ids=lambda s: "t{}-{}q{}kv-d{}-block{}".format(*s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_cpu_bit_equal_to_reference(isa, dtype, shape):
    check_write(write_case(*shape, dtype), shape, "cpu")


@pytest.mark.parametrize("shape", WRITE_SHAPES[:2], ids=lambda s: "t{}-{}q{}kv-d{}".format(*s))
def test_write_triton_bit_equal_to_reference(device_dtype, shape):  # noqa: F811
    device, dtype = device_dtype
    check_write(write_case(*shape, dtype), shape, "triton", device)


# value / scale -> code. Scale 0.5; v is not rotated, so these reach the encoder as given.
LITERAL_CODES = [
    (1e4, 0x7E), (-1e4, 0xFE), (float("inf"), 0x7E), (-float("inf"), 0xFE),
    (float("nan"), 0x7F), (0.0, 0x00), (-0.0, 0x80), (224.0, 0x7E),  # 448: the largest
    (232.0, 0x7E),  # 464 is past the range: saturates (480 does not exist)
    (0.5 * 2.0**-9, 0x01),  # the smallest subnormal
    (0.5 * 2.0**-10, 0x00),  # halfway between 0 and 2^-9: to even (0)
    (0.5 * 3 * 2.0**-10, 0x02),  # halfway between 2^-9 and 2^-8: to even (2^-8)
    (0.5 * 1.0625, 0x38),  # halfway between 1 (0x38) and 1.125 (0x39): to even
    (0.5 * 1.1875, 0x3A),  # halfway between 1.125 (0x39) and 1.25 (0x3A): to even
    (-1.0, 0xC0), (120.0, 0x77),  # -2 and 240 = 1.875 * 2^7
]  # fmt: skip


def literal_case(dtype):
    """One token whose v row holds LITERAL_CODES' values (k and q are zero)."""
    values = torch.tensor([v for v, _ in LITERAL_CODES])
    head_dim = values.numel()
    qkv = torch.zeros(1, 3 * head_dim)
    qkv[0, 2 * head_dim :] = values
    caches = torch.zeros(2, 1, 1, 1, head_dim, dtype=torch.uint8).view(FP8_DTYPE)
    return (qkv.to(dtype), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
            caches), head_dim  # fmt: skip


def check_literal_codes(backend, dtype, device="cpu"):
    case, head_dim = literal_case(dtype)
    fn = lambda *a: kernels.rope_and_cache(*a, k_scale=0.5, v_scale=0.5, backend=backend)  # noqa: E731
    _, kc, vc = run_write(case, 1, 1, head_dim, fn, device)
    expected = torch.tensor([c for _, c in LITERAL_CODES], dtype=torch.uint8)
    # NaN as any NaN code: torch's bf16 NaN (the input here) has the sign bit set
    assert_codes_equal(codes(vc).flatten(), expected, f"{backend} {dtype}")
    assert not codes(kc).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_saturates_keeps_nan_and_rounds_ties_to_even(dtype):
    """The reference itself, on literal codes (the specification's examples)."""
    check_literal_codes("reference", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_cpu_literal_codes(isa, dtype):
    check_literal_codes("cpu", dtype)


def test_write_triton_literal_codes(device_dtype):  # noqa: F811
    device, dtype = device_dtype
    check_literal_codes("triton", dtype, device)


def sweep_values() -> list[tuple[str, torch.Tensor]]:
    """Every fp16 value, and in fp32 every midpoint between adjacent E4M3 values with its
    two fp32 neighbours (the rounding boundaries), both signs."""
    fp16 = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    finite = FINITE_CODES.view(FP8_DTYPE).float().unique()
    pos = finite[finite >= 0]
    mid = (pos[1:] + pos[:-1]) / 2
    inf = torch.tensor(float("inf"))
    near = torch.cat([mid, mid.nextafter(inf), mid.nextafter(-inf), pos, 448 + 8 * pos[1:4]])
    return [("every fp16 value", fp16), ("fp32 midpoints", torch.cat([near, -near]))]


def check_sweep(backend, device="cpu"):
    """sweep_values() as the v rows of tokens with 8 kv heads of 128 (few programs for the
    Triton interpreter), at scales 1 and 0.37, against the reference's codes."""
    num_kv, head_dim = 8, 128
    for name, values in sweep_values():
        width = num_kv * head_dim
        values = torch.cat([values, values.new_zeros(-values.numel() % width)])
        tokens = values.numel() // width
        qkv = torch.zeros(tokens, 1 + 2 * num_kv, head_dim, dtype=values.dtype)
        qkv[:, 1 + num_kv :] = values.view(tokens, num_kv, head_dim)
        caches = torch.zeros(2, tokens, 1, num_kv, head_dim, dtype=torch.uint8)
        case = (qkv.view(tokens, -1), torch.zeros(tokens, dtype=torch.int64),
                torch.arange(tokens), caches.view(FP8_DTYPE))  # fmt: skip
        for scale in (1.0, 0.37):
            fn = lambda *a, s=scale: kernels.rope_and_cache(*a, k_scale=1.0, v_scale=s,  # noqa: E731
                                                            backend=backend)  # fmt: skip
            ref = lambda *a, s=scale: rope_and_cache_reference(  # noqa: E731
                *a, torch.tensor(1.0), torch.tensor(s)
            )
            _, _, got = run_write(case, 1, num_kv, head_dim, fn, device)
            _, _, want = run_write(case, 1, num_kv, head_dim, ref)
            assert torch.equal(codes(got), codes(want)), f"{backend}: {name}, scale {scale}"


def test_write_cpu_encodes_every_fp16_value_and_fp32_boundary(isa):
    check_sweep("cpu")


# the sweep holds NaN and inf on purpose: numpy (the interpreter) warns on dividing them
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_write_triton_encodes_every_fp16_value_and_fp32_boundary(device_dtype):  # noqa: F811
    device, dtype = device_dtype
    if dtype != torch.float32:
        pytest.skip("one run per device: the sweep sets its own dtypes")
    check_sweep("triton", device)


# ----------------------------------------------------------------------------- the read


def fp8_batch(seqs, num_q, num_kv, head_dim, block_size, dtype, seed=0, random_codes=False):
    """make_batch's caches as E4M3: quantized (per-tensor scales from their amax), or
    random finite codes of the whole range with small scales (random_codes)."""
    q, kc, vc, tables, starts, lens = make_batch(seqs, num_q, num_kv, head_dim, block_size,
                                                 dtype, seed)  # fmt: skip
    if random_codes:
        g = torch.Generator().manual_seed(seed + 1)
        pick = [torch.randint(0, FINITE_CODES.numel(), kc.shape, generator=g) for _ in "kv"]
        kc8, vc8 = (FINITE_CODES[i].view(FP8_DTYPE) for i in pick)
        k_scale, v_scale = 2.0**-6, 0.01
    else:
        k_scale, v_scale = (
            float(kc.float().abs().amax()) / 448,
            float(vc.float().abs().amax()) / 448,
        )
        kc8, vc8 = quantize(kc, k_scale), quantize(vc, v_scale)
    return (q, kc8, vc8, tables, starts, lens), (k_scale, v_scale), (kc, vc)


def reference_read(args, scale, scales):
    k_scale, v_scale = (torch.tensor(s) for s in scales)
    return paged_prefill_attention_reference(*args, scale, k_scale, v_scale)


# each layout with caches quantized from random data, or with random codes of the whole
# E4M3 range (subnormals to 448, both signs)
READ_CASES = [(layout, i % 2 == 1) for i, layout in enumerate(LAYOUTS)]


@pytest.mark.parametrize(
    "layout,random_codes", READ_CASES,
    ids=["{}q{}kv-block{}-d{}-".format(*x) + ("codes" if r else "quantized") for x, r in READ_CASES],
)  # fmt: skip
@pytest.mark.parametrize("dtype", DTYPES)
def test_read_cpu_matches_reference(isa, dtype, layout, random_codes):
    num_q, num_kv, block_size, head_dim = layout
    args, (ks, vs), _ = fp8_batch(BATCH, num_q, num_kv, head_dim, block_size, dtype,
                                  random_codes=random_codes)  # fmt: skip
    scale = head_dim**-0.5
    out = kernels.paged_prefill_attention(*args, scale, k_scale=ks, v_scale=vs, backend="cpu")
    assert_close(out, reference_read(args, scale, (ks, vs)), f"fp8-cache attention[{isa}]")


@pytest.mark.parametrize("layout", TRITON_LAYOUTS, ids=lambda x: "{}q{}kv-block{}-d{}".format(*x))
def test_read_triton_matches_reference(device_dtype, layout):  # noqa: F811
    device, dtype = device_dtype
    num_q, num_kv, block_size, head_dim = layout
    args, (ks, vs), _ = fp8_batch(TRITON_BATCH, num_q, num_kv, head_dim, block_size, dtype,
                                  random_codes=True)  # fmt: skip
    scale = head_dim**-0.5
    on_device = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    out = kernels.paged_prefill_attention(*on_device, scale, k_scale=torch.tensor(ks, device=device),
                                          v_scale=vs, backend="triton")  # fmt: skip
    assert_close(out.cpu(), reference_read(args, scale, (ks, vs)), "fp8-cache attention[triton]")


def every_code_case(dtype, head_dim=254):
    """Sequences of one token over one key each, whose value rows hold every finite code
    (254 of them; cycled to fill the rows): the softmax weight is exactly 1, so each
    output row is its decoded value row, exact in every dtype."""
    seqs = -(-FINITE_CODES.numel() // head_dim)
    values = FINITE_CODES.repeat(seqs)[: seqs * head_dim].view(seqs, 1, 1, head_dim)
    kc = torch.zeros(seqs, 1, 1, head_dim, dtype=torch.uint8).view(FP8_DTYPE)
    q = torch.ones(seqs, 2, head_dim, dtype=dtype)
    tables = torch.arange(seqs, dtype=torch.int32).view(seqs, 1)
    expected = values.view(FP8_DTYPE).float().to(dtype).view(seqs, 1, head_dim).expand(-1, 2, -1)
    args = (q, kc, values.view(FP8_DTYPE), tables, list(range(seqs + 1)), [1] * seqs)
    return args, expected


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_cpu_decodes_every_code_exactly(isa, dtype):
    args, expected = every_code_case(dtype)
    out = kernels.paged_prefill_attention(*args, 0.1, k_scale=1.0, v_scale=1.0, backend="cpu")
    assert torch.equal(out, expected)


def test_read_triton_decodes_every_code_exactly(device_dtype):  # noqa: F811
    device, dtype = device_dtype
    args, expected = every_code_case(dtype)
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    out = kernels.paged_prefill_attention(*args, 0.1, k_scale=1.0, v_scale=1.0, backend="triton")
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_fp8_cache_attention_stays_close_to_the_unquantized_cache(backend, cpu_module):
    """Llama-like GQA (32q/8kv, d128) over cached prefixes; per-tensor scales from the
    caches' amax (what calibration gives). Every output row keeps its direction."""
    seqs = [(0, 40), (90, 38), (17, 1)]
    args, (ks, vs), (kc, vc) = fp8_batch(seqs, 32, 8, 128, 16, torch.bfloat16)
    q, _, _, tables, starts, lens = args
    out = kernels.paged_prefill_attention(*args, 128**-0.5, k_scale=ks, v_scale=vs,
                                          backend=backend)  # fmt: skip
    exact = paged_prefill_attention_reference(q, kc, vc, tables, starts, lens, 128**-0.5)
    cos = torch.nn.functional.cosine_similarity(
        out.float().flatten(0, 1), exact.float().flatten(0, 1), dim=-1
    )
    assert cos.min() > FP8_KV_MIN_COSINE, f"worst row cosine {cos.min():.5f}"


# ----------------------------------------------------------------------------- arguments


def test_bad_scale_and_cache_arguments_raise_clear_errors(cpu_module):
    q, kc, vc, tables, starts, lens = make_batch([(0, 3)], 2, 1, 8, 4, torch.bfloat16)
    kc8, vc8 = quantize(kc, 0.1), quantize(vc, 0.1)
    attn = (q, kc8, vc8, tables, starts, lens, 0.3)
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        kernels.paged_prefill_attention(*attn)
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        kernels.paged_prefill_attention(*attn, k_scale=0.1)
    with pytest.raises(ValueError, match="apply to torch.float8_e4m3fn caches only"):
        kernels.paged_prefill_attention(q, kc, vc, tables, starts, lens, 0.3, k_scale=0.1,
                                        v_scale=0.1)  # fmt: skip
    with pytest.raises(ValueError, match="value_cache has dtype torch.bfloat16"):
        kernels.paged_prefill_attention(q, kc8, vc, tables, starts, lens, 0.3)
    with pytest.raises(ValueError, match="must be torch.bfloat16 .* or torch.float8_e4m3fn"):
        kernels.paged_prefill_attention(q, kc.half(), vc.half(), tables, starts, lens, 0.3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="v_scale must be finite and > 0"):
            kernels.paged_prefill_attention(*attn, k_scale=0.1, v_scale=bad)
    with pytest.raises(ValueError, match="expected 1 scale value"):
        kernels.paged_prefill_attention(*attn, k_scale=torch.ones(2), v_scale=0.1)

    k, v = torch.randn(3, 1, 8).bfloat16(), torch.randn(3, 1, 8).bfloat16()
    cos_sin = kernels.compute_cos_sin_cache(8, 16, 10000.0)
    write = (q, k, v, torch.arange(3), cos_sin, kc8, vc8, torch.arange(3))
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        kernels.rope_and_cache(*write)
    with pytest.raises(ValueError, match="k_scale must be finite and > 0"):
        kernels.rope_and_cache(*write, k_scale=0.0, v_scale=1.0)
    with pytest.raises(ValueError, match="apply to torch.float8_e4m3fn caches only"):
        kernels.rope_and_cache(q, k, v, torch.arange(3), cos_sin, kc, vc, torch.arange(3),
                               k_scale=1.0, v_scale=1.0)  # fmt: skip
    before = codes(kc8).clone()
    with pytest.raises(IndexError):  # a bad slot: nothing written
        kernels.rope_and_cache(q, k, v, torch.arange(3), cos_sin, kc8, vc8,
                               torch.tensor([0, 1, 99]), k_scale=1.0, v_scale=1.0)  # fmt: skip
    assert torch.equal(codes(kc8), before)
