"""engine/distributed/protocol.py: a step's metadata survives the trip to the workers."""

from __future__ import annotations

import torch

from engine.distributed.protocol import pack_step, payload_numel, step_sizes, unpack_step
from engine.runner import prepare_batch
from engine.scheduler import ScheduledChunk


def test_a_packed_step_unpacks_to_the_same_tensors():
    chunks = [
        ScheduledChunk("a", (5, 6, 7), 0, 3, (4,), True),
        ScheduledChunk("b", tuple(range(20)), 16, 36, (1, 2, 3), False),  # a middle chunk
        ScheduledChunk("c", (9,), 40, 41, (7, 8, 9), True),  # a cache hit's last token
    ]
    input_ids, meta = prepare_batch(chunks, 16, torch.device("cpu"))
    sizes = step_sizes(input_ids, meta)
    assert sizes == (24, 3, 2, 3)
    flat = pack_step(input_ids, meta)
    assert flat.dtype == torch.int64 and flat.numel() == payload_numel(sizes)
    got_ids, got = unpack_step(flat.clone(), sizes)
    assert torch.equal(got_ids, input_ids)
    for name in meta.__slots__:
        want, have = getattr(meta, name), getattr(got, name)
        assert have.dtype == want.dtype, name
        assert torch.equal(have, want), name
        assert have.is_contiguous(), name


def test_a_step_without_outputs_unpacks_to_empty_output_fields():
    chunks = [ScheduledChunk("a", tuple(range(16)), 0, 16, (0,), False)]
    input_ids, meta = prepare_batch(chunks, 16, torch.device("cpu"))
    _, got = unpack_step(pack_step(input_ids, meta), step_sizes(input_ids, meta))
    assert got.num_outputs == 0
    assert got.last_block_tables.shape == (0, 1)
    assert torch.equal(got.last_query_start_loc, torch.zeros(1, dtype=torch.int64))
