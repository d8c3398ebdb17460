"""Packing sequences into forward passes under a token budget.

Longest first: long sequences are packed together while the budget still has room,
and the short ones fill the gaps, which keeps the number of forward passes (and the
per-pass overhead) low. A sequence longer than the budget runs alone.
"""

from __future__ import annotations


def pack_by_token_budget(lengths: list[int], budget: int) -> list[list[int]]:
    """Group sequence indices into batches of at most `budget` tokens (first-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                batches[b].append(i)
                room[b] -= n
                break
        else:
            batches.append([i])
            room.append(max(budget - n, 0))
    return batches
