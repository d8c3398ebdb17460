"""Paged KV block pool with prefix caching (control plane only: no tensors).

The KV cache is a fixed pool of ``num_blocks`` blocks of ``block_size`` token slots;
this module decides which block holds which positions of which request. Position
``p`` of a request lives in slot ``block_ids[p // block_size] * block_size +
p % block_size`` of the per-layer KV tensors that the model runner owns.

Prefix caching
--------------
A FULL block is identified by a chained hash: ``H(parent_hash, its token ids)``,
with the empty bytes as the parent of the first block. Equal hashes therefore mean
an equal token sequence from position 0 through the end of the block, which is what
makes the block's keys and values reusable by another request.

The hash is BLAKE2b with a 128-bit digest over the parent digest and the block's
token ids (8 bytes each). At 128 bits an accidental collision is out of reach for
any realistic cache (about 2**64 distinct blocks for even odds), so a hash hit is
trusted without comparing token ids; that keeps the lookup to one dict probe per
block and the manager free of a token copy per block.

Only full blocks are shared: a partial last block is private to its request and is
never registered. A shared block is never written again. Because the last token
of every request must be computed (its hidden state is the reward), the cache hit
is capped at ``num_tokens - 1`` tokens and rounded down to a block boundary, so the
block holding the last token is always a private one.

Block states
------------
Every block is in exactly one state:

- free: refcount 0, no hash; handed out first.
- cached: refcount 0, registered hash; kept in least-recently-used order and
  evicted (hash dropped) only when no free block is left.
- used: refcount > 0 (held by one or more running requests), hashed or not.

``check_invariants`` verifies this partition; the tests call it after every step.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from engine.request import Request


def hash_block_tokens(parent_hash: bytes, token_ids: Sequence[int]) -> bytes:
    """128-bit chained hash of one full block (see the module docstring)."""
    h = hashlib.blake2b(parent_hash, digest_size=16)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def hash_full_blocks(token_ids: Sequence[int], block_size: int, start: int = 0,
                     parent_hash: bytes = b"") -> list[bytes]:
    """Chained hashes of the full blocks of ``token_ids`` from block ``start`` on."""
    hashes = []
    for b in range(start, len(token_ids) // block_size):
        parent_hash = hash_block_tokens(parent_hash, token_ids[b * block_size:(b + 1) * block_size])
        hashes.append(parent_hash)
    return hashes


def kv_cache_bytes_per_block(block_size: int, num_layers: int, num_kv_heads: int,
                             head_dim: int, dtype_bytes: int) -> int:
    """Bytes one block occupies across all layers: a key and a value per slot."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * dtype_bytes


def num_blocks_for_memory(memory_bytes: int, block_size: int, num_layers: int,
                          num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """How many blocks fit in ``memory_bytes`` (``num_kv_heads`` per device under TP)."""
    per_block = kv_cache_bytes_per_block(block_size, num_layers, num_kv_heads, head_dim,
                                         dtype_bytes)
    return max(0, int(memory_bytes) // per_block)


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """The cached blocks a request can start from, and the tokens they hold."""

    block_ids: tuple[int, ...]
    num_tokens: int


NO_HIT = PrefixHit((), 0)


class KVCacheManager:
    """Reference-counted block pool with a chained-hash prefix cache and LRU eviction.

    Not thread-safe: the scheduler serializes every call.
    """

    def __init__(self, num_blocks: int, block_size: int = 16,
                 enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._block_hash: list[bytes | None] = [None] * num_blocks
        self._hash_to_block: dict[bytes, int] = {}
        self._free: deque[int] = deque(range(num_blocks))
        # Cached blocks, least recently released first (popitem(last=False) evicts).
        self._evictable: OrderedDict[int, None] = OrderedDict()
        # Per request: how many of its leading full blocks went through cache_full_blocks.
        self._num_registered: dict[str, int] = {}
        self.num_evictions = 0

    # ------------------------------------------------------------------ lookup
    def block_hashes(self, request: Request) -> list[bytes]:
        """The chained hashes of the request's full blocks (computed once, kept on it)."""
        num_full = request.num_tokens // self.block_size
        if len(request.block_hashes) < num_full:
            parent = request.block_hashes[-1] if request.block_hashes else b""
            request.block_hashes.extend(hash_full_blocks(
                request.token_ids, self.block_size, len(request.block_hashes), parent))
        return request.block_hashes

    def _longest_hit(self, hashes: Sequence[bytes], max_blocks: int) -> list[int]:
        blocks = []
        for h in hashes[:max_blocks]:
            block = self._hash_to_block.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def num_cached_prefix_tokens(self, token_ids: Sequence[int]) -> int:
        """Length of the longest cached full-block prefix of ``token_ids``.

        No side effects and no cap: ``find_prefix`` applies the last-token cap.
        """
        if not self.enable_prefix_caching:
            return 0
        hashes = hash_full_blocks(token_ids, self.block_size)
        return len(self._longest_hit(hashes, len(hashes))) * self.block_size

    def find_prefix(self, request: Request) -> PrefixHit:
        """Cached blocks a new request may start from, without taking them.

        Capped at ``num_tokens - 1`` rounded down to a block boundary: the last token
        is always computed, into a private block.
        """
        if not self.enable_prefix_caching:
            return NO_HIT
        max_blocks = (request.num_tokens - 1) // self.block_size
        blocks = self._longest_hit(self.block_hashes(request), max_blocks)
        return PrefixHit(tuple(blocks), len(blocks) * self.block_size)

    # -------------------------------------------------------------- allocation
    def num_blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, request: Request, num_new_tokens: int,
                 prefix: PrefixHit = NO_HIT) -> bool:
        """Reserve blocks so the request can hold ``num_computed_tokens + num_new_tokens``.

        ``prefix`` (only on a request that holds no block yet) is taken first: its
        blocks are shared and counted as computed, so the new tokens follow it.
        All or nothing: returns False, changing nothing, when the pool cannot serve it.
        """
        if prefix.block_ids and request.block_ids:
            raise ValueError(f"request {request.request_id!r} already holds blocks")
        start = prefix.num_tokens if prefix.block_ids else request.num_computed_tokens
        held = len(request.block_ids) + len(prefix.block_ids)
        num_new_blocks = max(0, self.num_blocks_needed(start + num_new_tokens) - held)
        # Prefix blocks that sit in the cached state stop being evictable once taken.
        num_prefix_evictable = sum(1 for b in prefix.block_ids if self._ref_counts[b] == 0)
        if num_new_blocks > self.num_available_blocks - num_prefix_evictable:
            return False
        for block in prefix.block_ids:
            self._incref(block)
        request.block_ids.extend(prefix.block_ids)
        for _ in range(num_new_blocks):
            block = self._take_block()
            self._ref_counts[block] = 1
            request.block_ids.append(block)
        if prefix.block_ids:
            # The prefix blocks are registered already; do not register them again.
            self._num_registered[request.request_id] = len(prefix.block_ids)
        return True

    def _incref(self, block: int) -> None:
        if self._ref_counts[block] == 0:
            del self._evictable[block]  # KeyError here means the block was not cached
        self._ref_counts[block] += 1

    def _take_block(self) -> int:
        if self._free:
            return self._free.popleft()
        block, _ = self._evictable.popitem(last=False)
        del self._hash_to_block[self._block_hash[block]]
        self._block_hash[block] = None
        self.num_evictions += 1
        return block

    def cache_full_blocks(self, request: Request) -> None:
        """Register the blocks that ``num_computed_tokens`` has filled since the last call.

        A block whose hash is already registered (another request computed the same
        tokens) stays private: the first copy keeps serving hits.
        """
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        first = self._num_registered.get(rid, 0)
        last = request.num_computed_tokens // self.block_size
        if last <= first:
            return
        hashes = self.block_hashes(request)
        for i in range(first, last):
            block, h = request.block_ids[i], hashes[i]
            if self._block_hash[block] is None and h not in self._hash_to_block:
                self._block_hash[block] = h
                self._hash_to_block[h] = block
        self._num_registered[rid] = last

    def free(self, request: Request) -> None:
        """Release the request's blocks: hashed ones stay cached, the others go free.

        Released last block first, so that when blocks of one request are evicted,
        its tail goes before its head (a prefix is useless without its head).
        """
        for block in reversed(request.block_ids):
            count = self._ref_counts[block] - 1
            if count < 0:
                raise RuntimeError(f"block {block} freed more often than allocated")
            self._ref_counts[block] = count
            if count == 0:
                if self._block_hash[block] is not None:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        request.block_ids.clear()
        self._num_registered.pop(request.request_id, None)

    def reset_prefix_cache(self) -> int:
        """Drop every cached (unreferenced) block; return how many were dropped."""
        dropped = 0
        while self._evictable:
            block, _ = self._evictable.popitem(last=False)
            del self._hash_to_block[self._block_hash[block]]
            self._block_hash[block] = None
            self._free.append(block)
            dropped += 1
        return dropped

    # ---------------------------------------------------------------- counters
    @property
    def num_free_blocks(self) -> int:
        """Blocks holding nothing reusable."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Unreferenced blocks kept for prefix hits (evictable)."""
        return len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one request."""
        return self.num_blocks - len(self._free) - len(self._evictable)

    @property
    def num_available_blocks(self) -> int:
        """Blocks an allocation may take: free ones, then cached ones by eviction."""
        return len(self._free) + len(self._evictable)

    def ref_count(self, block: int) -> int:
        return self._ref_counts[block]

    def usage(self) -> dict[str, int | float]:
        return {
            "blocks_total": self.num_blocks,
            "blocks_used": self.num_used_blocks,
            "blocks_cached": self.num_cached_blocks,
            "blocks_free": self.num_free_blocks,
            "blocks_hashed": len(self._hash_to_block),
            "block_evictions": self.num_evictions,
            "block_usage": self.num_used_blocks / self.num_blocks,
        }

    def check_invariants(self) -> None:
        """Raise AssertionError if the block partition or the hash index is broken."""
        free, cached = list(self._free), list(self._evictable)
        assert len(set(free)) == len(free), "a block is on the free list twice"
        assert not set(free) & set(cached), "a block is both free and cached"
        for block in free + cached:
            assert self._ref_counts[block] == 0, f"block {block} is free but referenced"
        for block in free:
            assert self._block_hash[block] is None, f"free block {block} still has a hash"
        for block in cached:
            assert self._block_hash[block] is not None, f"cached block {block} has no hash"
        assert all(c >= 0 for c in self._ref_counts), "negative refcount"
        num_used = sum(1 for c in self._ref_counts if c > 0)
        assert len(free) + len(cached) + num_used == self.num_blocks, "a block is lost"
        for h, block in self._hash_to_block.items():
            assert self._block_hash[block] == h, f"hash index points at stale block {block}"
        assert len(self._hash_to_block) == sum(h is not None for h in self._block_hash)
