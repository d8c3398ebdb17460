"""One step's metadata as one int64 tensor, broadcast from rank 0 to the other ranks.

The pipe message that wakes a worker carries the step's sizes (T tokens, S sequences,
N outputs, B block-table columns); the broadcast carries every field of the step,
flattened in FIELDS order, so a step costs one collective however many fields it has.
"""

from __future__ import annotations

import torch

from ..model import BatchMetadata

# (field, length in terms of the sizes T, S, N, B)
FIELDS = (
    ("input_ids", lambda t, s, n, b: t),
    ("positions", lambda t, s, n, b: t),
    ("slot_mapping", lambda t, s, n, b: t),
    ("query_start_loc", lambda t, s, n, b: s + 1),
    ("context_lens", lambda t, s, n, b: s),
    ("block_tables", lambda t, s, n, b: s * b),
    ("last_token_indices", lambda t, s, n, b: n),
    ("last_block_tables", lambda t, s, n, b: n * b),
    ("last_context_lens", lambda t, s, n, b: n),
    ("last_query_start_loc", lambda t, s, n, b: n + 1),
)


def step_sizes(input_ids: torch.Tensor, meta: BatchMetadata) -> tuple[int, int, int, int]:
    return (
        input_ids.shape[0],
        meta.context_lens.shape[0],
        meta.num_outputs,
        meta.block_tables.shape[1],
    )


def payload_numel(sizes: tuple[int, int, int, int]) -> int:
    return sum(length(*sizes) for _, length in FIELDS)


def pack_step(input_ids: torch.Tensor, meta: BatchMetadata) -> torch.Tensor:
    """Every field of the step, flattened to int64 and concatenated (FIELDS order)."""
    parts = [input_ids] + [getattr(meta, name) for name, _ in FIELDS[1:]]
    return torch.cat([p.reshape(-1).to(torch.int64) for p in parts])


def unpack_step(flat: torch.Tensor, sizes) -> tuple[torch.Tensor, BatchMetadata]:
    """The inverse of pack_step: (input_ids, metadata) as prepare_batch makes them."""
    _, s, n, b = sizes
    fields, start = {}, 0
    for name, length in FIELDS:
        end = start + length(*sizes)
        fields[name] = flat[start:end]
        start = end
    fields["block_tables"] = fields["block_tables"].view(s, b).to(torch.int32)
    fields["last_block_tables"] = fields["last_block_tables"].view(n, b).to(torch.int32)
    input_ids = fields.pop("input_ids")
    return input_ids, BatchMetadata(**fields)
