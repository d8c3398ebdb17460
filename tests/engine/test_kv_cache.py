"""KVCacheManager: block hashing, sharing, refcounts, LRU eviction, the last-token cap."""

import pytest

from engine.kv_cache import (
    KVCacheManager,
    PrefixHit,
    hash_block_tokens,
    hash_full_blocks,
    kv_cache_bytes_per_block,
    num_blocks_for_memory,
)
from engine.request import Request

BS = 4  # a small block size keeps the token lists readable


def make_request(request_id, token_ids):
    return Request(request_id, tuple(token_ids))


def admit(kv, request, num_tokens=None):
    """Take the cached prefix and blocks for the rest (or ``num_tokens``) of the request."""
    hit = kv.find_prefix(request)
    num_new = (request.num_tokens - hit.num_tokens) if num_tokens is None else num_tokens
    assert kv.allocate(request, num_new, hit)
    request.num_computed_tokens = hit.num_tokens
    return hit


def compute(kv, request, upto=None):
    """What a step does: the tokens are computed, their full blocks become cacheable."""
    request.num_computed_tokens = request.num_tokens if upto is None else upto
    kv.cache_full_blocks(request)


def run_to_completion(kv, request):
    hit = admit(kv, request)
    compute(kv, request)
    kv.free(request)
    kv.check_invariants()
    return hit


# ------------------------------------------------------------------ hashing
def test_block_hash_is_128_bit_and_deterministic():
    h = hash_block_tokens(b"", [1, 2, 3, 4])
    assert len(h) == 16
    assert h == hash_block_tokens(b"", (1, 2, 3, 4))
    assert h != hash_block_tokens(b"", [1, 2, 3, 5])


def test_block_hash_chains_the_parent():
    # Block 1 holds the same tokens in both sequences, but what precedes it differs.
    a = hash_full_blocks([1, 2, 3, 4, 9, 9, 9, 9], BS)
    b = hash_full_blocks([1, 2, 3, 5, 9, 9, 9, 9], BS)
    assert len(a) == len(b) == 2
    assert a[1] != b[1]
    assert a[1] == hash_block_tokens(a[0], [9, 9, 9, 9])


def test_batched_hashing_matches_block_by_block():
    tokens = [7 * i % 1000 for i in range(37)]
    chained, parent = [], b""
    for b in range(37 // BS):
        parent = hash_block_tokens(parent, tokens[b * BS:(b + 1) * BS])
        chained.append(parent)
    assert hash_full_blocks(tokens, BS) == chained
    assert hash_full_blocks(tokens, BS, start=3, parent_hash=chained[2]) == chained[3:]


def test_only_full_blocks_are_hashed():
    assert len(hash_full_blocks(list(range(11)), BS)) == 2
    assert hash_full_blocks([1, 2, 3], BS) == []


def test_large_token_ids_hash_distinctly():
    # Llama-3 vocab ids exceed 16 bits; ids that agree in their low bytes must not collide.
    assert hash_block_tokens(b"", [128000, 1, 1, 1]) != hash_block_tokens(b"", [62464, 1, 1, 1])


# --------------------------------------------------------- allocate / free
def test_allocation_rounds_up_to_whole_blocks():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    r = make_request("r", range(10))
    assert kv.allocate(r, 10)
    assert len(r.block_ids) == 3 and len(set(r.block_ids)) == 3
    assert kv.num_used_blocks == 3 and kv.num_free_blocks == 5
    kv.check_invariants()


def test_allocation_is_all_or_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=BS)
    r = make_request("r", range(12))
    assert not kv.allocate(r, 12)
    assert r.block_ids == [] and kv.num_free_blocks == 2
    assert kv.allocate(r, 8)  # a chunk that fits
    assert len(r.block_ids) == 2
    kv.check_invariants()


def test_chunks_extend_the_block_list():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    r = make_request("r", range(10))
    assert kv.allocate(r, 3)
    assert len(r.block_ids) == 1
    r.num_computed_tokens = 3
    assert kv.allocate(r, 5)  # positions 3..7: still two blocks
    assert len(r.block_ids) == 2
    r.num_computed_tokens = 8
    assert kv.allocate(r, 2)
    assert len(r.block_ids) == 3


def test_unhashed_blocks_return_to_free_and_full_blocks_stay_cached():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    r = make_request("r", range(10))  # two full blocks and a partial one
    run_to_completion(kv, r)
    assert r.block_ids == []
    assert kv.num_cached_blocks == 2  # the partial last block is private, never cached
    assert kv.num_free_blocks == 6
    assert kv.num_used_blocks == 0


def test_uncomputed_blocks_are_not_cached():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    r = make_request("r", range(12))
    admit(kv, r)
    compute(kv, r, upto=5)  # only block 0 is full and computed
    kv.free(r)
    assert kv.num_cached_blocks == 1
    assert kv.num_cached_prefix_tokens(range(12)) == 4


def test_free_twice_is_harmless_but_a_double_release_is_caught():
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    r = make_request("r", range(8))
    assert kv.allocate(r, 8)
    stolen = list(r.block_ids)
    kv.free(r)
    kv.free(r)  # the request holds nothing any more
    kv.check_invariants()
    impostor = make_request("x", range(8))
    impostor.block_ids.extend(stolen)
    with pytest.raises(RuntimeError, match="freed more often"):
        kv.free(impostor)


# ---------------------------------------------------------------- sharing
def test_cached_prefix_is_shared_with_refcounts():
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    prompt = list(range(100, 112))  # three full blocks
    a = make_request("a", prompt + [1, 2])
    admit(kv, a)
    compute(kv, a)
    b = make_request("b", prompt + [3, 4, 5])
    hit = admit(kv, b)
    assert hit.num_tokens == 12
    assert b.block_ids[:3] == a.block_ids[:3]
    assert b.block_ids[3] != a.block_ids[3]  # the tails are private
    assert b.num_computed_tokens == 12
    assert [kv.ref_count(x) for x in a.block_ids] == [2, 2, 2, 1]
    kv.free(a)
    assert [kv.ref_count(x) for x in b.block_ids] == [1, 1, 1, 1]
    assert kv.num_cached_blocks == 0  # still referenced by b: not evictable
    kv.free(b)
    assert kv.num_cached_blocks == 3
    kv.check_invariants()


def test_num_cached_prefix_tokens_has_no_side_effects():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    run_to_completion(kv, make_request("a", range(9)))
    before = kv.usage()
    assert kv.num_cached_prefix_tokens(list(range(9))) == 8
    assert kv.num_cached_prefix_tokens(list(range(5))) == 4
    assert kv.num_cached_prefix_tokens([0, 1, 2, 99, 4]) == 0
    assert kv.usage() == before


@pytest.mark.parametrize(
    "num_tokens, expected_hit",
    [
        (8, 4),  # fully cached, block aligned: the last block is recomputed
        (9, 8),  # 8 cached tokens, the 9th is computed
        (4, 0),  # a one-block request cannot hit at all
        (5, 4),
    ],
)
def test_hit_is_capped_below_the_last_token(num_tokens, expected_hit):
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    run_to_completion(kv, make_request("a", range(12)))
    r = make_request("r", range(num_tokens))
    assert kv.num_cached_prefix_tokens(r.token_ids) == min(12, num_tokens // BS * BS)
    hit = kv.find_prefix(r)
    assert hit.num_tokens == expected_hit
    assert hit.num_tokens <= r.num_tokens - 1
    assert len(hit.block_ids) * BS == hit.num_tokens


def test_duplicate_block_stays_private():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a, b = make_request("a", range(5)), make_request("b", range(5))
    admit(kv, a)
    admit(kv, b)  # both miss: neither has computed anything yet
    compute(kv, a)
    compute(kv, b)
    kv.free(a)
    kv.free(b)
    assert kv.num_cached_blocks == 1  # a's copy of block 0; b's went back to free
    kv.check_invariants()


def test_taking_an_evictable_prefix_does_not_count_it_as_free():
    kv = KVCacheManager(num_blocks=3, block_size=BS)
    run_to_completion(kv, make_request("a", range(9)))  # caches two blocks, one block free
    r = make_request("r", list(range(8)) + list(range(50, 58)))  # hits 2, needs 2 more
    hit = kv.find_prefix(r)
    assert hit.num_tokens == 8
    assert not kv.allocate(r, 8, hit)  # only one block is left beside the prefix
    assert r.block_ids == []
    assert kv.num_cached_blocks == 2
    kv.check_invariants()


def test_allocate_with_a_prefix_requires_an_empty_request():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    run_to_completion(kv, make_request("a", range(9)))
    r = make_request("r", range(9))
    assert kv.allocate(r, 1)
    with pytest.raises(ValueError):
        kv.allocate(r, 1, PrefixHit((0,), BS))


# --------------------------------------------------------------- eviction
def test_free_blocks_are_taken_before_cached_ones():
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    run_to_completion(kv, make_request("a", range(8)))
    assert kv.num_cached_blocks == 2 and kv.num_free_blocks == 2
    r = make_request("r", range(100, 108))
    assert kv.allocate(r, 8)
    assert kv.num_cached_blocks == 2 and kv.num_evictions == 0
    assert kv.num_cached_prefix_tokens(range(8)) == 8


def test_least_recently_released_blocks_are_evicted_first():
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    run_to_completion(kv, make_request("old", range(0, 8)))
    run_to_completion(kv, make_request("new", range(20, 28)))
    r = make_request("r", range(100, 108))
    assert kv.allocate(r, 8)  # both free blocks are gone: two cached blocks must go
    assert kv.num_evictions == 2
    assert kv.num_cached_prefix_tokens(range(0, 8)) == 0
    assert kv.num_cached_prefix_tokens(range(20, 28)) == 8
    kv.check_invariants()


def test_a_hit_refreshes_the_lru_position():
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    run_to_completion(kv, make_request("old", range(0, 5)))
    run_to_completion(kv, make_request("new", range(20, 25)))
    run_to_completion(kv, make_request("again", range(0, 5)))  # touches "old"'s block
    r = make_request("r", range(100, 112))
    assert kv.allocate(r, 12)  # two free blocks, then one eviction
    assert kv.num_cached_prefix_tokens(range(0, 5)) == 4
    assert kv.num_cached_prefix_tokens(range(20, 25)) == 0


def test_a_request_tail_is_evicted_before_its_head():
    kv = KVCacheManager(num_blocks=3, block_size=BS)
    run_to_completion(kv, make_request("a", range(12)))
    r = make_request("r", range(100, 104))
    assert kv.allocate(r, 4)
    assert kv.num_cached_prefix_tokens(range(12)) == 8  # block 2 went, blocks 0-1 remain


def test_referenced_blocks_are_never_evicted():
    kv = KVCacheManager(num_blocks=3, block_size=BS)
    a = make_request("a", range(8))
    admit(kv, a)
    compute(kv, a)
    r = make_request("r", range(100, 108))
    assert not kv.allocate(r, 8)  # a still holds its two hashed blocks
    assert kv.num_evictions == 0


def test_reset_prefix_cache_drops_only_unreferenced_blocks():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    run_to_completion(kv, make_request("a", range(8)))
    b = make_request("b", range(50, 58))
    admit(kv, b)
    compute(kv, b)
    assert kv.reset_prefix_cache() == 2
    assert kv.num_cached_prefix_tokens(range(8)) == 0
    assert kv.num_cached_prefix_tokens(range(50, 58)) == 8
    kv.check_invariants()


def test_disabled_prefix_caching_never_hits():
    kv = KVCacheManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    run_to_completion(kv, make_request("a", range(9)))
    assert kv.num_cached_blocks == 0 and kv.num_free_blocks == 8
    assert kv.find_prefix(make_request("b", range(9))).num_tokens == 0


def test_usage_counts_add_up():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    run_to_completion(kv, make_request("a", range(8)))
    r = make_request("r", range(50, 55))
    admit(kv, r)
    u = kv.usage()
    assert (u["blocks_used"], u["blocks_cached"], u["blocks_free"]) == (2, 2, 6)
    assert u["blocks_used"] + u["blocks_cached"] + u["blocks_free"] == u["blocks_total"]


def test_invalid_pool_sizes():
    with pytest.raises(ValueError):
        KVCacheManager(num_blocks=0)
    with pytest.raises(ValueError):
        KVCacheManager(num_blocks=4, block_size=0)


def test_pool_size_from_a_memory_budget():
    # Llama-3.1-70B: 80 layers, 8 KV heads of 128, bf16: 320 KiB per token, 5 MiB per block.
    per_block = kv_cache_bytes_per_block(16, 80, 8, 128, 2)
    assert per_block == 16 * 327_680
    assert num_blocks_for_memory(10 * 2**30, 16, 80, 8, 128, 2) == 2048
    assert num_blocks_for_memory(per_block - 1, 16, 80, 8, 128, 2) == 0
