"""Rewards through the paged KV cache: prefix hits, chunked prefill, eviction and
preemption change which tokens are computed when, never the reward.

Tolerances are those of test_model_vs_hf.py (relative to the largest |reward|):
a prefix hit or a chunk boundary only changes how the work is batched, so in fp32
rewards agree to BATCHING_RTOL (summation order inside matmuls); in bf16 within
BF16_RTOL; against HF fp32 within FP32_RTOL.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_model_vs_hf import BF16_RTOL, FP32_RTOL, assert_rewards_close, hf_rewards

from engine import RewardEngine

VOCAB = 1000
BS = 16
BATCHING_RTOL = 1e-5


@pytest.fixture(scope="module")
def ckpt(make_tiny_checkpoint):
    return make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False)


def tokens(n, seed):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def group(prompt_len, response_lens, seed):
    prompt = tokens(prompt_len, seed)
    return [prompt + tokens(n, seed * 100 + i) for i, n in enumerate(response_lens)]


def score(eng, seqs):
    return torch.tensor(eng.score_token_ids(seqs))


def assert_drained(eng):
    """No request left and no block leaked: free + cached blocks make the whole pool."""
    m = eng.metrics()
    assert m["num_waiting"] == m["num_running"] == m["blocks_used"] == 0, m
    assert m["blocks_free"] + m["blocks_cached"] == m["blocks_total"], m
    eng.scheduler.check_invariants()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_shared_prompt_is_computed_once_and_rewards_do_not_change(ckpt, dtype):
    responses = [1, 9, 40, 17, 3, 25]
    seqs = group(70, responses, seed=1)  # 4 full prompt blocks are shareable
    cached = RewardEngine.from_pretrained(ckpt, dtype=dtype, enable_prefix_caching=True)
    plain = RewardEngine.from_pretrained(ckpt, dtype=dtype, enable_prefix_caching=False)
    with_cache, without = score(cached, seqs), score(plain, seqs)
    m = cached.metrics()
    # The first request computes everything; the others start after the 64 cached tokens.
    assert m["tokens_computed"] == len(seqs[0]) + sum(len(s) - 64 for s in seqs[1:])
    assert m["prefix_cache_hit_tokens"] == 64 * (len(seqs) - 1)
    assert plain.metrics()["tokens_computed"] == sum(map(len, seqs))
    if dtype == "float32":
        assert_rewards_close(with_cache, without, BATCHING_RTOL, "cache vs no cache")
        assert_rewards_close(with_cache, hf_rewards(ckpt, seqs, torch.float32)[:, 0], FP32_RTOL)
    else:
        assert_rewards_close(with_cache, without, BF16_RTOL, "cache vs no cache")
        hf = hf_rewards(ckpt, seqs, torch.bfloat16)[:, 0]
        assert_rewards_close(with_cache, hf, BF16_RTOL, "engine bf16 vs HF bf16")
    assert_drained(cached)
    assert_drained(plain)


def test_chunked_prefill_across_steps_equals_a_single_step(ckpt):
    seqs = [tokens(200, 2), tokens(130, 3), tokens(50, 4)]
    chunked = RewardEngine.from_pretrained(ckpt, dtype="float32", max_num_batched_tokens=32)
    whole = RewardEngine.from_pretrained(ckpt, dtype="float32", max_num_batched_tokens=4096)
    got, ref = score(chunked, seqs), score(whole, seqs)
    assert chunked.metrics()["model_steps"] == -(-380 // 32)
    assert whole.metrics()["model_steps"] == 1
    assert_rewards_close(got, ref, BATCHING_RTOL, "chunked vs one step")
    assert_rewards_close(got, hf_rewards(ckpt, seqs, torch.float32)[:, 0], FP32_RTOL)
    assert_drained(chunked)


def test_a_second_call_starts_from_the_cache_of_the_first(ckpt):
    seqs = [tokens(100, 5), tokens(33, 6)]
    eng = RewardEngine.from_pretrained(ckpt, dtype="float32")
    first = score(eng, seqs)
    computed = eng.metrics()["tokens_computed"]
    again = score(eng, seqs)
    # Only the block holding the last token is recomputed: 100 -> 4, 33 -> 1 token.
    assert eng.metrics()["tokens_computed"] - computed == (100 - 96) + (33 - 32)
    assert_rewards_close(again, first, BATCHING_RTOL)
    assert_drained(eng)


def test_eviction_and_preemption_keep_rewards_and_leak_nothing(ckpt):
    seqs = group(50, [150, 140, 160, 120], seed=7) + [tokens(190, 8), tokens(90, 9)]
    ref = score(RewardEngine.from_pretrained(ckpt, dtype="float32"), seqs)
    # 20 blocks (320 tokens) and 48-token chunks: four prefills side by side outgrow
    # the pool, so running requests are preempted and cached blocks evicted.
    eng = RewardEngine.from_pretrained(
        ckpt, dtype="float32", num_kv_blocks=20, max_num_batched_tokens=192, max_chunk_tokens=48
    )
    got = score(eng, seqs)
    m = eng.metrics()
    assert m["num_preemptions"] > 0 and m["block_evictions"] > 0, m
    assert_rewards_close(got, ref, BATCHING_RTOL, "small pool vs reference")
    assert_drained(eng)


def test_score_responses_computes_the_prompt_once(tiny_checkpoint):
    prompt = [{"role": "user", "content": " ".join(["Explain the rules of chess."] * 12)}]
    responses = ["Yes.", "No, I will not.", "The king moves one square.", "Pawns."]
    eng = RewardEngine.from_pretrained(tiny_checkpoint, dtype="float32")
    ids = [eng.chat.encode(eng.chat.conversation(prompt, r)) for r in responses]
    prompt_len = min(len(x) for x in ids) - 8
    rewards = eng.score_responses(prompt, responses)
    m = eng.metrics()
    shared = prompt_len // BS * BS
    assert m["tokens_computed"] <= sum(map(len, ids)) - (len(ids) - 1) * shared
    plain = RewardEngine.from_pretrained(
        tiny_checkpoint, dtype="float32", enable_prefix_caching=False
    )
    assert_rewards_close(torch.tensor(rewards), score(plain, ids), BATCHING_RTOL)
    assert_drained(eng)


# -- property: whatever the budget, chunk cap and pool, the reward is the same -------

_reference: dict[tuple[int, ...], float] = {}


@st.composite
def workloads(draw):
    seqs = []
    for g in range(draw(st.integers(1, 3))):
        prompt_len = draw(st.integers(0, 60))
        for i, n in enumerate(draw(st.lists(st.integers(1, 40), min_size=1, max_size=4))):
            seqs.append(tokens(prompt_len, 1000 + g) + tokens(n, 2000 + 10 * g + i))
    return seqs


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seqs=workloads(),
    budget=st.integers(8, 256),
    chunk=st.one_of(st.none(), st.integers(4, 64)),
    num_blocks=st.integers(7, 40),
)
def test_property_rewards_do_not_depend_on_budget_chunks_pool_or_cache(
    ckpt, seqs, budget, chunk, num_blocks
):
    missing = [s for s in seqs if tuple(s) not in _reference]
    if missing:
        plain = RewardEngine.from_pretrained(ckpt, dtype="float32", enable_prefix_caching=False)
        for s, r in zip(missing, plain.score_token_ids(missing), strict=True):
            _reference[tuple(s)] = r
    eng = RewardEngine.from_pretrained(
        ckpt,
        dtype="float32",
        num_kv_blocks=num_blocks,
        max_num_batched_tokens=budget,
        max_chunk_tokens=chunk,
    )
    got = score(eng, seqs)
    ref = torch.tensor([_reference[tuple(s)] for s in seqs])
    assert_rewards_close(got, ref, BATCHING_RTOL)
    assert_drained(eng)


def test_an_interrupted_step_leaves_nothing_half_written_in_the_cache(ckpt):
    seqs = [tokens(100, 11), tokens(60, 12)]
    eng = RewardEngine.from_pretrained(ckpt, dtype="float32", max_num_batched_tokens=64)
    real = eng.runner.execute
    calls = []

    def interrupted(chunks):
        calls.append(len(calls))
        if len(calls) == 2:  # the second step: its blocks are half written
            real(chunks)
            raise KeyboardInterrupt
        return real(chunks)

    eng.runner.execute = interrupted
    with pytest.raises(KeyboardInterrupt):
        eng.score_token_ids(seqs)
    assert_drained(eng)
    eng.runner.execute = real
    fresh = RewardEngine.from_pretrained(ckpt, dtype="float32", enable_prefix_caching=False)
    assert_rewards_close(score(eng, seqs), score(fresh, seqs), BATCHING_RTOL)
    assert_drained(eng)
