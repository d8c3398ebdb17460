"""ModelRunner: step tensors from scheduled chunks, K/V writes, KV pool sizing."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest
import torch

from engine import RewardEngine, RuntimeConfig
from engine.config import GIB, ModelConfig
from engine.runner import KVCachePool, kv_cache_bytes_per_block, kv_cache_num_blocks
from engine.scheduler import ScheduledChunk

VOCAB = 1000
BS = 4  # small blocks: every chunk below crosses block boundaries


@pytest.fixture(scope="module")
def ckpt(make_tiny_checkpoint):
    return make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False)


def make_engine(ckpt, **runtime):
    runtime.setdefault("block_size", BS)
    runtime.setdefault("num_kv_blocks", 256)
    return RewardEngine.from_pretrained(ckpt, dtype="float32", **runtime)


def chunk(rid, tokens, start, end, blocks, is_last):
    return ScheduledChunk(rid, tuple(tokens[start:end]), start, end, tuple(blocks), is_last)


def test_prepare_builds_flat_metadata(ckpt):
    runner = make_engine(ckpt).runner
    a, b, c = list(range(10, 20)), list(range(30, 35)), list(range(50, 53))
    chunks = [
        chunk("a", a, 3, 10, [7, 2, 9], True),  # continues from a 3-token cache hit
        chunk("b", b, 0, 5, [4, 5], False),  # first chunk of a longer request
        chunk("c", c, 0, 3, [11], True),
    ]
    ids, meta = runner.prepare(chunks)
    assert ids.tolist() == a[3:] + b + c
    assert meta.positions.tolist() == [3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 0, 1, 2]
    assert meta.query_start_loc.tolist() == [0, 7, 12, 15]
    assert meta.context_lens.tolist() == [10, 5, 3]
    assert meta.block_tables.dtype == torch.int32
    assert meta.block_tables.tolist() == [[7, 2, 9], [4, 5, 0], [11, 0, 0]]
    # slot = block_table[pos // BS] * BS + pos % BS
    expect_a = [7 * 4 + 3, 2 * 4, 2 * 4 + 1, 2 * 4 + 2, 2 * 4 + 3, 9 * 4, 9 * 4 + 1]
    expect_b = [16, 17, 18, 19, 20]
    expect_c = [44, 45, 46]
    assert meta.slot_mapping.tolist() == expect_a + expect_b + expect_c
    # Only the finishing chunks (a and c) produce output rows: their last tokens.
    assert meta.last_token_indices.tolist() == [6, 14]
    assert meta.last_context_lens.tolist() == [10, 3]
    assert meta.last_block_tables.tolist() == [[7, 2, 9], [11, 0, 0]]
    assert meta.last_query_start_loc.tolist() == [0, 1, 2]


def _slots(blocks, n):
    return [blocks[p // BS] * BS + p % BS for p in range(n)]


def test_chunks_write_every_layer_like_a_single_step(ckpt):
    """K/V written over three steps (two non-last chunks, the second with nothing to
    output) equal those of one step, in every layer including the final one."""
    tokens = torch.randint(0, VOCAB, (23,), generator=torch.Generator().manual_seed(0)).tolist()
    one, many = make_engine(ckpt), make_engine(ckpt)
    blocks = list(range(6))
    whole = one.runner.execute([chunk("r", tokens, 0, 23, blocks, True)])
    parts = {}
    for start, end in [(0, 9), (9, 16), (16, 23)]:
        out = many.runner.execute(
            [chunk("r", tokens, start, end, blocks[: -(-end // BS)], end == 23)]
        )
        assert list(out) == (["r"] if end == 23 else [])
        parts.update(out)
    assert parts["r"] == pytest.approx(whole["r"], rel=1e-5, abs=1e-6)
    slots = torch.tensor(_slots(blocks, 23))
    for layer in range(one.model.cfg.num_layers):
        for caches in ("key_caches", "value_caches"):
            ref = getattr(one.kv_cache, caches)[layer].view(-1, 2, 16)[slots]
            got = getattr(many.kv_cache, caches)[layer].view(-1, 2, 16)[slots]
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_kv_pool_layout_is_the_kernels_layout(ckpt):
    eng = make_engine(ckpt, num_kv_blocks=10)
    cfg = eng.model.cfg
    pool = eng.kv_cache
    assert len(pool.key_caches) == len(pool.value_caches) == cfg.num_layers
    ptrs = set()
    for k, v in zip(pool.key_caches, pool.value_caches, strict=True):
        for t in (k, v):
            assert t.shape == (10, BS, cfg.num_kv_heads, cfg.head_dim) and t.is_contiguous()
            ptrs.add(t.data_ptr())
    assert len(ptrs) == 2 * cfg.num_layers
    assert pool.nbytes == 10 * pool.bytes_per_block


SHAPE = ModelConfig.from_dict(
    dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
         intermediate_size=128, vocab_size=VOCAB)
)  # fmt: skip
# One block of 16 tokens: 2 layers * (K + V) * 16 slots * 2 heads * 16 dims * 4 bytes.
BLOCK_BYTES = 2 * 2 * 16 * 2 * 16 * 4


@pytest.mark.parametrize(
    "runtime, available, expected",
    [
        (dict(num_kv_blocks=7), 0, 7),
        (dict(kv_cache_gib=1 / 1024), 0, (1 << 20) // BLOCK_BYTES),
        (dict(kv_cache_memory_fraction=0.5), 100 * BLOCK_BYTES, 50),
        # CPU default: min(2 GiB, a quarter of the available memory)
        (dict(), 400 * BLOCK_BYTES, 100),
        (dict(max_num_seqs=4096), 64 * GIB, 2 * GIB // BLOCK_BYTES),
        # never more than max_num_seqs requests of max_model_len tokens
        (dict(max_num_seqs=3), 64 * GIB, 3 * 64),
    ],
)
def test_kv_pool_size_from_the_runtime_config(monkeypatch, runtime, available, expected):
    monkeypatch.setattr("engine.runner.available_memory_bytes", lambda device: available)
    cfg = RuntimeConfig(**runtime)
    got = kv_cache_num_blocks(cfg, SHAPE, torch.float32, torch.device("cpu"), max_model_len=1024)
    assert got == expected


def test_pool_smaller_than_a_sequence_refuses_it_before_running(ckpt):
    eng = make_engine(ckpt, num_kv_blocks=4)  # 16 tokens
    with pytest.raises(ValueError, match="KV cache pool"):
        eng.score_token_ids([[1] * 10, [2] * 17])
    assert eng.metrics()["tokens_computed"] == 0
    assert len(eng.score_token_ids([[1] * 16])) == 1


def test_kv_pool_tensors_are_sized_by_the_pool(ckpt):
    pool = KVCachePool(ModelConfig.from_pretrained(ckpt), 3, 8, torch.bfloat16, torch.device("cpu"))
    assert pool.storage.dtype == torch.bfloat16 and pool.key_caches[0].shape[:2] == (3, 8)


@pytest.mark.parametrize(
    "field, value",
    [
        ("block_size", 0),
        ("max_num_batched_tokens", -1),
        ("max_num_seqs", True),
        ("num_kv_blocks", 0),
        ("max_chunk_tokens", 2.5),
        ("kv_cache_gib", 0),
        ("kv_cache_memory_fraction", 1.5),
    ],
)
def test_runtime_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        RuntimeConfig(**{field: value})


def resident_fraction(t: torch.Tensor) -> float:
    """Share of the pages under `t`'s storage that are in memory, from mincore(2): the
    pool's own pages, whatever the rest of the process does (a process-wide figure such
    as /proc/self/statm also moves with other allocations, and can lag)."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    start = t.data_ptr() // page * page
    length = t.data_ptr() + t.numel() * t.element_size() - start
    pages = -(-length // page)
    vec = (ctypes.c_ubyte * pages)()
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    if libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(v & 1 for v in vec) / pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore(2) as on Linux")
def test_pretouched_pool_is_resident_and_zero_at_startup(ckpt):
    cfg = ModelConfig.from_pretrained(ckpt)
    # 64 MiB: above glibc's largest mmap threshold (32 MiB), so each pool is a fresh
    # mapping and nothing is resident until written
    blocks = (64 << 20) // kv_cache_bytes_per_block(16, cfg.num_layers, cfg.num_kv_heads,
                                                    cfg.head_dim, 4)  # fmt: skip
    pool = KVCachePool(cfg, blocks, 16, torch.float32, torch.device("cpu"), pretouch=True)
    assert resident_fraction(pool.storage) == 1.0
    assert not pool.storage.any()
    lazy = KVCachePool(cfg, blocks, 16, torch.float32, torch.device("cpu"), pretouch=False)
    assert resident_fraction(lazy.storage) < 0.5


def test_pretouch_defaults_on_and_the_environment_can_turn_it_off(monkeypatch):
    monkeypatch.delenv("REWARD_ENGINE_KV_CACHE_PRETOUCH", raising=False)
    assert RuntimeConfig().kv_cache_pretouch
    monkeypatch.setenv("REWARD_ENGINE_KV_CACHE_PRETOUCH", "0")
    assert not RuntimeConfig().kv_cache_pretouch
    assert RuntimeConfig(kv_cache_pretouch=True).kv_cache_pretouch


def test_rewards_do_not_depend_on_pretouch(ckpt):
    seqs = [[5, 6, 7] * 9, [8] * 40]
    lazy = make_engine(ckpt, kv_cache_pretouch=False).score_token_ids(seqs)
    assert make_engine(ckpt, kv_cache_pretouch=True).score_token_ids(seqs) == lazy
