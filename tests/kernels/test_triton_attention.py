"""paged_prefill_attention's triton backend against the reference: on CPU tensors
through Triton's interpreter (fp32, fp16) and on CUDA tensors compiled (gpu marker).

Cases: GQA ratios 1/4/8, block sizes 1/5/16, head_dim 18 (padded to a power of two),
64 and 128; empty and single-token chunks, chunks after a cached prefix, chunks that
start and end inside a block, chunks longer than one query tile (64 rows), and a chunk
after a prefix of several key tiles (64 keys each), which go through the unmasked loop."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close
from test_paged_attention import make_batch
from triton_testing import device_dtype  # noqa: F401  (fixture)

import kernels
from kernels.paged_attention import paged_prefill_attention_reference

# (cached tokens, new tokens) per sequence
BATCH = [(0, 7), (5, 1), (33, 70), (0, 1), (100, 0), (16, 16), (3, 0), (200, 75)]
# (q heads, kv heads, block size, head_dim)
LAYOUTS = [(4, 4, 1, 64), (8, 2, 5, 18), (8, 1, 16, 128)]


def _to(args, device):
    q, kc, vc, tables, starts, lens = args
    return q.to(device), kc.to(device), vc.to(device), tables.to(device), starts, lens


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: "{}q{}kv-block{}-d{}".format(*x))
def test_matches_reference(device_dtype, layout):  # noqa: F811
    device, dtype = device_dtype
    num_q, num_kv, block_size, head_dim = layout
    args = _to(make_batch(BATCH, num_q, num_kv, head_dim, block_size, dtype), device)
    scale = head_dim**-0.5
    out = kernels.paged_prefill_attention(*args, scale, backend="triton")
    assert_close(out, paged_prefill_attention_reference(*args, scale), "triton attention")


def test_metadata_as_tensors_and_a_batch_of_empty_chunks(device_dtype):  # noqa: F811
    device, dtype = device_dtype
    q, kc, vc, tables, starts, lens = _to(make_batch(BATCH[:3], 8, 2, 64, 16, dtype), device)
    expected = paged_prefill_attention_reference(q, kc, vc, tables, starts, lens, 0.125)
    out = kernels.paged_prefill_attention(
        q, kc, vc, tables, torch.tensor(starts, dtype=torch.int32, device=device),
        torch.tensor(lens, device=device), 0.125, backend="triton",
    )  # fmt: skip
    assert_close(out, expected, "tensor metadata")
    empty = kernels.paged_prefill_attention(
        q[:0], kc, vc, tables[:2], [0, 0, 0], [5, 9], 0.125, backend="triton"
    )
    assert empty.shape == (0, 8, 64)


def test_rejects_a_context_shorter_than_its_chunk(device_dtype):  # noqa: F811
    device, dtype = device_dtype
    q, kc, vc, tables, starts, _ = _to(make_batch([(0, 7), (3, 2)], 4, 4, 16, 4, dtype), device)
    with pytest.raises(ValueError, match="context_len 1 < query_len 2"):
        kernels.paged_prefill_attention(q, kc, vc, tables, starts, [7, 1], 1.0, backend="triton")
