"""Deterministic (batch-invariant) mode: a sequence's reward is the same bits whether it
is scored alone, in any batch, at any position, in any chunking of its prefill, with or
without the prefix cache; and it stays within the default mode's bound of HF.

Randomized with hypothesis: which sequences share a call (with repeats and shared
prompts), their order, the token budget per step (max_num_batched_tokens), the largest
chunk (max_chunk_tokens), prefix caching on or off, and what earlier calls left in the
prefix cache. Every reward is compared with torch.equal to the same sequence scored
alone in its own call, one step, no cache.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model_vs_hf import (
    BF16_RTOL,
    FP32_RTOL,
    VOCAB,
    assert_rewards_close,
    hf_rewards,
)

from engine import AsyncRewardEngine, RewardEngine

DTYPES = ("bfloat16", "float32")
BUDGETS = (16, 61, 4096)  # tokens per step: chunked prefill, uneven chunks, one step
CHUNKS = (None, 7)  # max_chunk_tokens
CACHING = (True, False)


def tokens(n, seed):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def sequences():
    """Three prompts (long enough to share full blocks) with several responses each, and
    a few unrelated sequences; lengths 1..150."""
    seqs = []
    for p, prompt_len in enumerate((40, 70, 17)):
        prompt = tokens(prompt_len, seed=p)
        seqs += [prompt + tokens(n, seed=100 * p + i) for i, n in enumerate((1, 9, 33, 64))]
    seqs += [tokens(n, seed=1000 + n) for n in (1, 5, 16, 150)]
    return seqs


SEQS = sequences()


@pytest.fixture(scope="module")
def ckpt(make_tiny_checkpoint):
    # hidden 128 over 8 heads: K and N past one 64-column panel and an AMX tile
    return make_tiny_checkpoint(
        vocab_size=VOCAB, with_tokenizer=False, hidden_size=128, intermediate_size=200,
        num_attention_heads=8, num_key_value_heads=2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def alone(ckpt):
    """dtype -> the reward of every sequence scored in its own call (one step, no cache)."""
    out = {}
    for dtype in DTYPES:
        eng = RewardEngine.from_pretrained(
            ckpt, dtype=dtype, deterministic=True, enable_prefix_caching=False
        )
        out[dtype] = [eng.score_token_ids([s])[0] for s in SEQS]
    return out


@pytest.fixture(scope="module")
def engines(ckpt):
    """(dtype, budget, chunk, caching) -> a deterministic engine, reused across examples so
    its prefix cache holds blocks that earlier batches computed."""
    return {
        key: RewardEngine.from_pretrained(
            ckpt,
            dtype=key[0],
            deterministic=True,
            max_num_batched_tokens=key[1],
            max_chunk_tokens=key[2],
            enable_prefix_caching=key[3],
            num_kv_blocks=64,
        )  # fmt: skip
        for key in itertools.product(DTYPES, BUDGETS, CHUNKS, CACHING)
    }


@given(
    dtype=st.sampled_from(DTYPES),
    budget=st.sampled_from(BUDGETS),
    chunk=st.sampled_from(CHUNKS),
    caching=st.sampled_from(CACHING),
    picks=st.lists(st.integers(0, len(SEQS) - 1), min_size=1, max_size=12),
)
@settings(max_examples=25, deadline=None)
def test_rewards_are_bitwise_equal_in_any_batch_order_and_chunking(
    engines, alone, dtype, budget, chunk, caching, picks
):
    eng = engines[(dtype, budget, chunk, caching)]
    got = eng.score_token_ids([SEQS[i] for i in picks])
    want = [alone[dtype][i] for i in picks]
    for position, (i, g, w) in enumerate(zip(picks, got, want, strict=True)):
        assert g == w, (
            f"{dtype}, budget {budget}, chunk {chunk}, prefix cache {caching}: sequence {i} "
            f"at position {position} of {picks} scored {g!r}, alone {w!r}"
        )


def test_prefix_cache_hits_happen_and_change_nothing(engines, alone):
    eng = engines[("bfloat16", 4096, None, True)]
    eng.reset_prefix_cache()
    group = list(range(4))  # one prompt, four responses
    before = eng.metrics()["prefix_cache_hit_tokens"]
    assert eng.score_token_ids([SEQS[i] for i in group]) == [alone["bfloat16"][i] for i in group]
    assert eng.metrics()["prefix_cache_hit_tokens"] > before


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_rewards_keep_the_default_modes_bound_to_hf(ckpt, alone, dtype):
    truth = hf_rewards(ckpt, SEQS, torch.float32)[:, 0]
    ours = torch.tensor(alone[dtype])
    rtol = FP32_RTOL if dtype == "float32" else BF16_RTOL
    assert_rewards_close(ours, truth, rtol, f"deterministic {dtype} vs HF fp32")
    default = torch.tensor(RewardEngine.from_pretrained(ckpt, dtype=dtype).score_token_ids(SEQS))
    assert_rewards_close(default, truth, rtol, f"default {dtype} vs HF fp32")


def test_async_engine_passes_the_option_through(ckpt, alone):
    async def main():
        async with AsyncRewardEngine.from_pretrained(
            ckpt, dtype="bfloat16", deterministic=True, max_num_batched_tokens=40
        ) as eng:
            assert eng.metrics()["deterministic"] is True
            return await asyncio.gather(*(eng.score_token_ids(s) for s in reversed(SEQS)))

    got = asyncio.run(main())
    assert got[::-1] == alone["bfloat16"]


def test_runtime_option_needs_a_deterministic_model(ckpt):
    eng = RewardEngine.from_pretrained(ckpt, dtype="float32")
    assert not eng.model.deterministic and eng.metrics()["deterministic"] is False
    from engine.config import RuntimeConfig

    with pytest.raises(ValueError, match="deterministic=True"):
        RewardEngine(eng.model, None, RuntimeConfig(deterministic=True))
    with pytest.raises(ValueError, match="must be True or False"):
        RuntimeConfig(deterministic="yes")


@pytest.fixture(scope="module")
def w8a8_engines(tiny_checkpoint, tmp_path_factory):
    """Deterministic engines of W8A8 builds of the tiny checkpoint: FP8 with static
    activation scales and INT8 with dynamic per-token ones."""
    from engine.build import BuildSettings, build_engine

    out = {}
    for quantization, scales in (("fp8", "static"), ("int8", "dynamic")):
        path = tmp_path_factory.mktemp("engine") / quantization
        settings = BuildSettings(quantization=quantization, activation_scales=scales,
                                 dtype="bfloat16", calibration_size=8)  # fmt: skip
        build_engine(tiny_checkpoint, path, settings, progress=False)
        out[quantization] = path
    return out


@pytest.mark.parametrize("quantization", ["fp8", "int8"])
def test_w8a8_layers_are_batch_invariant_on_cpu(w8a8_engines, quantization):
    """engine/linear.py batch_invariant keeps W8A8 layers as they are: their CPU GEMMs
    already sum in an order (int8: exactly) that does not depend on the batch."""
    path = w8a8_engines[quantization]
    alone_eng = RewardEngine.from_pretrained(path, deterministic=True, enable_prefix_caching=False)
    alone = [alone_eng.score_token_ids([s])[0] for s in SEQS]
    eng = RewardEngine.from_pretrained(
        path, deterministic=True, max_num_batched_tokens=37, max_chunk_tokens=11
    )
    assert eng.model.w.layers[0].qkv.quantization == quantization
    order = list(range(len(SEQS)))[::-1]
    assert eng.score_token_ids([SEQS[i] for i in order]) == [alone[i] for i in order]


def test_an_fp8_kv_cache_keeps_the_guarantee(ckpt):
    """E4M3 keys and values are quantized element by element with the layer's fixed
    scales, so they too are the same bits whichever step computed them."""
    opts = dict(dtype="bfloat16", deterministic=True, kv_cache_dtype="fp8")
    solo = RewardEngine.from_pretrained(ckpt, enable_prefix_caching=False, **opts)
    alone = [solo.score_token_ids([s])[0] for s in SEQS]
    eng = RewardEngine.from_pretrained(ckpt, max_num_batched_tokens=29, max_chunk_tokens=13, **opts)
    assert eng.score_token_ids(SEQS) == alone
    assert eng.score_token_ids(SEQS[::-1]) == alone[::-1]  # now with prefix-cache hits
