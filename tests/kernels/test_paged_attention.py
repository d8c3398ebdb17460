"""paged_prefill_attention and rope_and_cache: the cpu backend (every ISA path) against
the reference over block sizes 1/5/16, GQA ratios 1/4/8, block-boundary and chunked
(cached prefix + new tokens) sequences, empty and single-token chunks; the reference
against torch's SDPA. The cpu backend's SDPA route (REWARD_ENGINE_CPU_ATTENTION=sdpa)
against the reference on the same batches, and never in batch-invariant mode."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import DTYPES, assert_close

import kernels
from kernels import paged_attention
from kernels.paged_attention import paged_prefill_attention_reference
from kernels.rope import rope_and_cache_reference

# (cached tokens, new tokens) per sequence: empty and single-token chunks, chunks that
# start and end inside a block, chunks longer than the kernel's 64-key chunks and
# than one work unit's token block
BATCH = [(0, 7), (5, 1), (33, 70), (0, 1), (100, 0), (16, 16), (0, 150)]
# (q heads, kv heads, block size, head_dim): GQA ratios 1/4/8, block sizes 1/5/16,
# head_dims (18, 17) that are not a multiple of any vector width (nor of the 32 of an
# AMX tile step), one of them odd, and 128 (four tile steps)
LAYOUTS = [(4, 4, 1, 64), (8, 2, 5, 18), (8, 1, 16, 64), (6, 2, 4, 17), (8, 2, 16, 128)]


@pytest.fixture(autouse=True)
def attention_kernel(monkeypatch):
    """These tests are about the C++ kernel: the SDPA route has its own below."""
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "kernel")


def make_batch(seqs, num_q, num_kv, head_dim, block_size, dtype, seed=0):
    """Caches with randomly placed blocks, and q as a strided view like the model's."""
    g = torch.Generator().manual_seed(seed)
    context_lens = [cached + new for cached, new in seqs]
    query_start_loc = [0]
    for _, new in seqs:
        query_start_loc.append(query_start_loc[-1] + new)
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + 3  # a few blocks nobody uses
    placement = torch.randperm(num_blocks, generator=g)
    block_tables = torch.zeros(len(seqs), max(blocks_per_seq), dtype=torch.int32)
    used = 0
    for s, n in enumerate(blocks_per_seq):
        block_tables[s, :n] = placement[used : used + n]
        used += n
    shape = (num_blocks, block_size, num_kv, head_dim)
    key_cache = torch.randn(shape, generator=g).to(dtype)
    value_cache = torch.randn(shape, generator=g).to(dtype)
    qkv = torch.randn(query_start_loc[-1], (num_q + 2 * num_kv) * head_dim, generator=g)
    q = qkv.to(dtype)[:, : num_q * head_dim].view(-1, num_q, head_dim)
    return q, key_cache, value_cache, block_tables, query_start_loc, context_lens


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: "{}q{}kv-block{}-d{}".format(*x))
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_matches_reference(isa, dtype, layout):
    num_q, num_kv, block_size, head_dim = layout
    args = make_batch(BATCH, num_q, num_kv, head_dim, block_size, dtype)
    scale = head_dim**-0.5
    out = kernels.paged_prefill_attention(*args, scale, backend="cpu")
    assert_close(out, paged_prefill_attention_reference(*args, scale), f"attention[{isa}]")


@pytest.mark.parametrize("layout", LAYOUTS[1:3], ids=lambda x: "{}q{}kv-block{}-d{}".format(*x))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_query_row_is_the_same_bits_in_any_chunking_and_batch(isa, dtype, layout):
    """Batch invariance: keys are visited in 64-key chunks fixed by absolute position and
    a masked key adds exactly nothing, so a query row's output does not depend on which
    rows share its chunk or work unit, nor on the other sequences of the batch."""
    num_q, num_kv, block_size, head_dim = layout
    q, kc, vc, tables, _, _ = make_batch([(0, 150), (20, 90)], num_q, num_kv, head_dim,
                                         block_size, dtype)  # fmt: skip
    scale = head_dim**-0.5
    full = kernels.paged_prefill_attention(q[:150], kc, vc, tables[:1], [0, 150], [150], scale)
    rng = random.Random(0)
    for _ in range(6):
        # the sequence cut into random chunks, each run as its own step next to a chunk of
        # the other sequence (which attends to its own 20 cached keys plus new ones)
        cuts = sorted(rng.sample(range(1, 150), rng.randint(1, 6)))
        for start, end in zip([0, *cuts], [*cuts, 150], strict=True):
            other = rng.randint(0, 90)
            rows = torch.cat([q[150 : 150 + other], q[start:end]])
            out = kernels.paged_prefill_attention(
                rows, kc, vc, tables.flip(0), [0, other, other + end - start], [20 + other, end],
                scale,
            )  # fmt: skip
            assert torch.equal(out[other:], full[start:end]), f"{isa}: rows {start}:{end} moved"
    alone = kernels.paged_prefill_attention(q[149:150], kc, vc, tables[:1], [0, 1], [150], scale)
    assert torch.equal(alone, full[149:150])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_masked_key_adds_exactly_nothing(isa, dtype):
    """Keys 100.. have a value where the keys before them have exact zeros: a row at
    position 98 must output exact zeros there, alone or in a chunk whose later rows make
    the kernel visit (and mask) keys 100.. for it."""
    q, kc, vc, tables, _, _ = make_batch([(0, 120)], 8, 2, 64, 16, dtype)
    slots = (tables[0].long()[:, None] * 16 + torch.arange(16)).flatten()[:120]
    vc.view(-1, 2, 64)[slots[:100], :, 0] = 0
    vc.view(-1, 2, 64)[slots[100:], :, 0] = 1
    chunk = kernels.paged_prefill_attention(q[72:120], kc, vc, tables, [0, 48], [120], 0.125)
    alone = kernels.paged_prefill_attention(q[98:99], kc, vc, tables, [0, 1], [99], 0.125)
    assert torch.equal(alone[0, :, 0], torch.zeros(8, dtype=dtype))
    assert torch.equal(chunk[98 - 72], alone[0]), f"{isa}: masked keys leaked into row 98"


def test_metadata_as_tensors(cpu_module):
    q, kc, vc, tables, starts, lens = make_batch(BATCH[:6], 8, 2, 64, 16, torch.bfloat16)
    expected = paged_prefill_attention_reference(q, kc, vc, tables, starts, lens, 0.125)
    out = kernels.paged_prefill_attention(
        q, kc, vc, tables, torch.tensor(starts, dtype=torch.int32), torch.tensor(lens), 0.125
    )
    assert_close(out, expected, "tensor metadata")


def test_reference_matches_sdpa_on_a_full_prefill():
    q, kc, vc, tables, starts, lens = make_batch([(0, 40)], 8, 2, 32, 16, torch.float32)
    out = paged_prefill_attention_reference(q, kc, vc, tables, starts, lens, 0.2)
    k = kc[tables[0].long()].reshape(-1, 2, 32)[:40].transpose(0, 1)
    v = vc[tables[0].long()].reshape(-1, 2, 32)[:40].transpose(0, 1)
    expected = F.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, is_causal=True, scale=0.2, enable_gqa=True
    )
    assert_close(out, expected.transpose(0, 1), "reference vs SDPA")


def test_bad_metadata_raises_clear_errors(cpu_module):
    q, kc, vc, tables, starts, lens = make_batch([(0, 7), (3, 2)], 4, 4, 16, 4, torch.float32)
    bad_tables = tables.clone()
    bad_tables[1, 0] = kc.shape[0]
    with pytest.raises(ValueError, match="is not a block of the cache"):
        kernels.paged_prefill_attention(q, kc, vc, bad_tables, starts, lens, 1.0, backend="cpu")
    with pytest.raises(ValueError, match="context_len 1 < query_len 2"):
        kernels.paged_prefill_attention(q, kc, vc, tables, starts, [7, 1], 1.0, backend="cpu")
    with pytest.raises(ValueError, match="multiple of kv heads"):
        kernels.paged_prefill_attention(q[:, :3], kc, vc, tables, starts, lens, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_and_cache_cpu_matches_reference(isa, dtype):
    num_q, num_kv, head_dim, tokens, block_size = 8, 2, 64, 13, 5
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(tokens, (num_q + 2 * num_kv) * head_dim, generator=g).to(dtype)
    cache = kernels.compute_cos_sin_cache(head_dim, 64, 500000.0)
    positions = torch.randint(0, 64, (tokens,), generator=g)
    slots = torch.randperm(6 * block_size, generator=g)[:tokens]
    slots[[2, 9]] = -1  # padding tokens: not written
    caches = torch.randn(2, 6, block_size, num_kv, head_dim, generator=g).to(dtype)

    def run(fn):
        x = qkv.clone()
        q = x[:, : num_q * head_dim].view(tokens, num_q, head_dim)
        k = x[:, num_q * head_dim : (num_q + num_kv) * head_dim].view(tokens, num_kv, head_dim)
        v = x[:, (num_q + num_kv) * head_dim :].view(tokens, num_kv, head_dim)
        kc, vc = caches[0].clone(), caches[1].clone()
        fn(q, k, v, positions, cache, kc, vc, slots)
        return x, kc, vc

    got = run(lambda *a: kernels.rope_and_cache(*a, backend="cpu"))
    expected = run(rope_and_cache_reference)
    for name, a, e in zip(["qkv", "key_cache", "value_cache"], got, expected, strict=True):
        assert_close(a, e, f"rope_and_cache[{isa}] {name}")
    untouched = torch.ones(6 * block_size, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert torch.equal(got[1].view(-1, num_kv, head_dim)[untouched],
                       caches[0].view(-1, num_kv, head_dim)[untouched])  # fmt: skip


def test_rope_and_cache_rejects_slots_outside_the_cache(cpu_module):
    q, k, v = torch.randn(2, 2, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    kc, vc = torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 1, 8)
    q0 = q.clone()
    cache = kernels.compute_cos_sin_cache(8, 4, 10000.0)
    with pytest.raises(IndexError, match=r"slot_mapping\[1\] = 8"):
        kernels.rope_and_cache(q, k, v, torch.tensor([1, 2]), cache, kc, vc,
                               torch.tensor([0, 8]), backend="cpu")  # fmt: skip
    assert torch.equal(q, q0) and not kc.any()


# ----------------------------------------------------------------------------- SDPA route


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: "{}q{}kv-block{}-d{}".format(*x))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_route_matches_reference(cpu_module, monkeypatch, dtype, layout):
    """Cached prefixes (the end-aligned mask), single-token and empty chunks, GQA."""
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "sdpa")
    num_q, num_kv, block_size, head_dim = layout
    args = make_batch(BATCH, num_q, num_kv, head_dim, block_size, dtype)
    scale = head_dim**-0.5
    out = kernels.paged_prefill_attention(*args, scale, backend="cpu")
    assert_close(out, paged_prefill_attention_reference(*args, scale), "attention[sdpa]")


def test_auto_is_the_kernel_and_sdpa_only_when_forced_and_never_for_fp8_caches(monkeypatch):
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "auto")
    q = torch.zeros(1, 2, 8, dtype=torch.bfloat16)
    cache = torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16)
    assert paged_attention.cpu_attention_path(q, cache) == "kernel"
    assert paged_attention.cpu_attention_path(q.float(), cache.float()) == "kernel"
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "sdpa")
    assert paged_attention.cpu_attention_path(q.float(), cache.float()) == "sdpa"
    fp8 = cache.to(torch.float8_e4m3fn)
    assert paged_attention.cpu_attention_path(q, fp8) == "kernel"
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "fast")
    with pytest.raises(ValueError, match="kernel, sdpa"):
        paged_attention.cpu_attention_path(q, cache)


def test_batch_invariant_calls_never_take_the_sdpa_route(cpu_module, monkeypatch):
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "sdpa")
    args = make_batch(BATCH[:3], 4, 2, 16, 4, torch.float32)
    routed = kernels.paged_prefill_attention(*args, 0.25, backend="cpu")

    def refuse(*a, **k):
        raise AssertionError("SDPA route taken in batch-invariant mode")

    monkeypatch.setattr(paged_attention, "paged_prefill_attention_sdpa", refuse)
    fixed = kernels.paged_prefill_attention(*args, 0.25, batch_invariant=True, backend="cpu")
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "kernel")
    assert torch.equal(fixed, kernels.paged_prefill_attention(*args, 0.25, backend="cpu"))
    assert_close(routed, fixed, "sdpa route vs kernel")
