"""The FP8 (E4M3) KV cache: RuntimeConfig.kv_cache_dtype="fp8".

- the setting is validated, and the pool holds E4M3 at 1 byte per element, so the same
  memory holds twice the blocks of a bf16 pool;
- rewards stay within FP8_KV_RTOL of the engine with a cache in the compute dtype (same
  checkpoint and compute dtype), relative to the largest |reward| as in
  test_model_vs_hf.py; the bound holds uncalibrated (scales 1.0) and with per-layer
  scales calibrated from the keys' and values' amax;
- per-layer scales reach the kernels: layer 0's cache holds exactly fp8_quantize of the
  keys and values the compute-dtype engine caches, at that layer's scales; a checkpoint
  without scales runs with 1.0 and says so in one warning;
- prefix hits and chunked prefill read back the same codes: rewards do not change.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import torch
from test_model_vs_hf import CASES, random_sequences

from engine import AsyncRewardEngine, RewardEngine
from engine.config import ModelConfig, RuntimeConfig
from engine.runner import KVCachePool, kv_cache_num_blocks

# Measured on the checkpoints below (uncalibrated and calibrated, bf16 and fp32 compute):
# at most 0.03 of the largest |reward|. E4M3 keeps 3 mantissa bits (relative rounding up
# to 2^-4 per key and value element); the bound is that of bf16 against fp32.
FP8_KV_RTOL = 5e-2
VOCAB = 1000
FP8_CASES = ["gqa-1to1", "gqa-4to1", "labels-3", "causal-lm-row"]


def checkpoint(make_tiny_checkpoint, case):
    return make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False, **CASES[case])


def score(eng, seqs):
    return torch.tensor(eng.score_token_ids(seqs))


def assert_within_fp8_bound(fp8, base):
    worst = ((fp8 - base).abs().max() / base.abs().max()).item()
    assert worst <= FP8_KV_RTOL, f"max |diff| = {worst:.4f} of the largest |reward|"


def calibrate(fp8_engine, base_engine):
    """Per-layer scales amax / 448 from the keys and values base_engine has cached (its
    pool was zeroed at startup: the blocks never written add nothing)."""
    pool = base_engine.kv_cache
    layers = fp8_engine.model.w.layers
    for layer, kc, vc in zip(layers, pool.key_caches, pool.value_caches, strict=True):
        layer.k_scale = kc.float().abs().amax() / 448
        layer.v_scale = vc.float().abs().amax() / 448


def test_kv_cache_dtype_is_validated():
    assert RuntimeConfig().kv_cache_dtype == "auto"
    with pytest.raises(ValueError, match="kv_cache_dtype must be 'auto' .* or 'fp8'"):
        RuntimeConfig(kv_cache_dtype="fp16")


def test_an_fp8_pool_holds_twice_the_blocks_in_the_same_memory(make_tiny_checkpoint):
    cfg = ModelConfig.from_pretrained(checkpoint(make_tiny_checkpoint, "gqa-1to1"))
    cpu = torch.device("cpu")
    blocks = {
        kv: kv_cache_num_blocks(
            RuntimeConfig(kv_cache_gib=0.01, kv_cache_dtype=kv, max_num_seqs=10**6),
            cfg, torch.bfloat16, cpu, 1 << 20,
        )  # fmt: skip
        for kv in ("auto", "fp8")
    }
    assert blocks["fp8"] in (2 * blocks["auto"], 2 * blocks["auto"] + 1)
    pool = KVCachePool(cfg, blocks["fp8"], 16, torch.float8_e4m3fn, cpu, pretouch=True)
    assert pool.key_caches[0].dtype == torch.float8_e4m3fn
    assert pool.nbytes <= 0.01 * (1 << 30) and pool.bytes_per_block * blocks["fp8"] == pool.nbytes


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("case", FP8_CASES)
def test_rewards_stay_within_the_bound_of_the_compute_dtype_cache(make_tiny_checkpoint, case,
                                                                  dtype):  # fmt: skip
    ckpt = checkpoint(make_tiny_checkpoint, case)
    seqs = random_sequences(12, seed=3, max_len=200)
    base_engine = RewardEngine.from_pretrained(ckpt, dtype=dtype, num_kv_blocks=256,
                                               kv_cache_pretouch=True)  # fmt: skip
    base = score(base_engine, seqs)
    fp8_engine = RewardEngine.from_pretrained(ckpt, dtype=dtype, kv_cache_dtype="fp8")
    assert fp8_engine.kv_cache.storage.dtype == torch.float8_e4m3fn
    assert_within_fp8_bound(score(fp8_engine, seqs), base)  # uncalibrated: scales 1.0
    calibrated = RewardEngine.from_pretrained(ckpt, dtype=dtype, kv_cache_dtype="fp8")
    calibrate(calibrated, base_engine)
    assert_within_fp8_bound(score(calibrated, seqs), base)


def test_layer_scales_reach_the_cache_and_uncalibrated_runs_warn_once(
    make_tiny_checkpoint, caplog
):
    ckpt = checkpoint(make_tiny_checkpoint, "gqa-4to1")
    seq = random_sequences(1, seed=5, min_len=40, max_len=40)
    base = RewardEngine.from_pretrained(ckpt, dtype="bfloat16")
    base.score_token_ids(seq)
    eng = RewardEngine.from_pretrained(ckpt, dtype="bfloat16", kv_cache_dtype="fp8")
    for i, layer in enumerate(eng.model.w.layers):
        layer.k_scale, layer.v_scale = torch.tensor(0.25 / (i + 1)), torch.tensor(0.5 / (i + 1))
    with caplog.at_level(logging.WARNING, logger="engine.model"):
        eng.score_token_ids(seq)
    assert not [r for r in caplog.records if "uncalibrated" in r.message]
    # Layer 0's keys and values do not depend on the cache: the same values, quantized at
    # that layer's scales. A fresh pool hands out blocks 0, 1, 2, ...: the 40 tokens are
    # slots 0..39 in both engines.
    pools = (eng.kv_cache, base.kv_cache)
    for caches, scale in (([p.key_caches[0] for p in pools], 0.25),
                          ([p.value_caches[0] for p in pools], 0.5)):  # fmt: skip
        got, ref = (c.view(-1, *c.shape[2:])[:40] for c in caches)
        want = (ref.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
        assert want.float().abs().amax() > 0
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))

    caplog.clear()
    plain = RewardEngine.from_pretrained(ckpt, dtype="bfloat16", kv_cache_dtype="fp8")
    with caplog.at_level(logging.WARNING, logger="engine.model"):
        plain.score_token_ids(seq)
        plain.score_token_ids(random_sequences(3, seed=6))
    warnings = [r for r in caplog.records if "uncalibrated" in r.message]
    assert len(warnings) == 1 and "2 of 2 layers" in warnings[0].message


def test_prefix_hits_and_chunks_read_back_the_same_codes(make_tiny_checkpoint):
    """fp32 compute: a group sharing a 70-token prompt, scored together (prefix hits) with
    small chunks, equals each sequence scored alone on an engine without prefix caching."""
    ckpt = checkpoint(make_tiny_checkpoint, "gqa-4to1")
    g = torch.Generator().manual_seed(9)
    prompt = torch.randint(0, VOCAB, (70,), generator=g).tolist()
    group = [prompt + torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (5, 17, 33)]
    shared = RewardEngine.from_pretrained(ckpt, dtype="float32", kv_cache_dtype="fp8",
                                          max_num_batched_tokens=48)  # fmt: skip
    together = score(shared, group)
    assert shared.metrics()["prefix_cache_hit_tokens"] > 0
    alone = RewardEngine.from_pretrained(ckpt, dtype="float32", kv_cache_dtype="fp8",
                                         enable_prefix_caching=False)  # fmt: skip
    singles = torch.tensor([alone.score_token_ids([s])[0] for s in group])
    torch.testing.assert_close(together, singles, rtol=1e-4, atol=1e-5)


def test_async_engine_and_bad_values(make_tiny_checkpoint):
    ckpt = checkpoint(make_tiny_checkpoint, "gqa-1to1")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        RewardEngine.from_pretrained(ckpt, kv_cache_dtype="int8")
    seqs = random_sequences(4, seed=11, max_len=60)

    async def run():
        async with AsyncRewardEngine.from_pretrained(ckpt, kv_cache_dtype="fp8") as eng:
            return await asyncio.gather(*(eng.score_token_ids(s) for s in seqs))

    fp8 = torch.tensor(asyncio.run(run()))
    assert_within_fp8_bound(fp8, score(RewardEngine.from_pretrained(ckpt), seqs))


def test_an_engine_built_for_an_fp8_cache_gets_one_unless_told_otherwise(
    make_tiny_checkpoint, monkeypatch
):
    """The KV dtype an engine directory was built (calibrated) for is the default; an
    explicit kv_cache_dtype wins."""
    import engine.llm_engine as llm_engine

    real = llm_engine.load_model

    def built_for_fp8(*args, **kwargs):
        loaded = real(*args, **kwargs)
        loaded.kv_cache_dtype = "fp8"
        return loaded

    monkeypatch.setattr(llm_engine, "load_model", built_for_fp8)
    ckpt = checkpoint(make_tiny_checkpoint, "gqa-1to1")
    fp8 = torch.float8_e4m3fn
    assert RewardEngine.from_pretrained(ckpt, dtype="float32").kv_cache.storage.dtype == fp8
    chosen = RewardEngine.from_pretrained(ckpt, dtype="float32", kv_cache_dtype="auto")
    assert chosen.kv_cache.storage.dtype == torch.float32
