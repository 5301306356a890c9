"""Trials per Ray Tune trial: a grid sweep's pending trials cut into chunks that one worker runs in turn.

Ray Tune costs ~0.17 s per Tune trial on this machine (measured with a no-op trainable, 2026-12-02), more
than a trivial permsym trial takes; a chunk pays it once for several trials. Chunk sizes follow guided
self-scheduling (Polychronopoulos and Kuck 1987): each chunk takes ceil(remaining / (GSS_FACTOR * slots))
trials, so the first chunks are long and the last ones are single trials, and no worker is left with a long
chunk while the others are idle at the end of the sweep. A sweep with no more than GSS_FACTOR * slots trials
gets one trial per chunk (every small sweep runs exactly as before). `trials_per_task: n` in the spec fixes
the size instead.

With a cost per trial (sweeps.cost, a rough model) the trials are first ordered longest first when several run
at once (LPT: a long trial started last would leave the other workers idle while it runs) and the chunks are cut by cost instead of
count: each takes trials until its cost reaches remaining cost / (GSS_FACTOR * slots), so an expensive trial
runs alone and cheap ones are grouped. With equal costs this is exactly `chunk_sizes`.
"""
from __future__ import annotations

import math
from typing import Sequence, TypeVar

T = TypeVar("T")

GSS_FACTOR = 4          # chunks per worker for what remains: the tail imbalance is at most one small chunk
MAX_CHUNK = 64          # at most this many trials per Tune trial under `auto` (a crash retries the chunk's unfinished ones)


def chunk_sizes(n: int, slots: int, fixed: int | None = None) -> list[int]:
    """Sizes of the chunks of n trials on `slots` concurrent workers (sum n, each >= 1)."""
    if n <= 0:
        return []
    if fixed is not None:
        return [min(fixed, n - i) for i in range(0, n, fixed)]
    sizes, left = [], n
    slots = max(1, int(slots))
    while left:
        k = min(MAX_CHUNK, max(1, math.ceil(left / (GSS_FACTOR * slots))))
        sizes.append(k)
        left -= k
    return sizes


def chunked(items: Sequence[T], slots: int, fixed: int | None = None) -> list[list[T]]:
    """`items` in order, cut by `chunk_sizes`."""
    out, i = [], 0
    for k in chunk_sizes(len(items), slots, fixed):
        out.append(list(items[i:i + k]))
        i += k
    return out


def cost_chunks(items: Sequence[T], costs: Sequence[float], slots: int, fixed: int | None = None
                ) -> list[list[T]]:
    """`items` ordered by cost, longest first (ties keep their order; on one slot the order cannot change
    when the sweep ends, so the grid's order is kept), cut into chunks of about equal cost by guided
    self-scheduling on the remaining cost (at most MAX_CHUNK trials each); `fixed`: that many per chunk."""
    if len(costs) != len(items):
        raise ValueError(f"costs: expected {len(items)} values, got {len(costs)}")
    order = list(range(len(items)))
    if int(slots) > 1:
        order.sort(key=lambda i: -float(costs[i]))
    if fixed is not None:
        return chunked([items[i] for i in order], slots, fixed)
    slots = max(1, int(slots))
    if len(order) <= GSS_FACTOR * slots:            # a small sweep: one trial per Tune trial, as chunk_sizes
        return [[items[i]] for i in order]
    left = sum(float(costs[i]) for i in order)
    out, j = [], 0
    while j < len(order):
        target = left / (GSS_FACTOR * slots)
        chunk, spent = [], 0.0
        while j < len(order) and len(chunk) < MAX_CHUNK and (not chunk or spent < target * (1 - 1e-9)):
            chunk.append(items[order[j]])
            spent += float(costs[order[j]])
            j += 1
        out.append(chunk)
        left -= spent
    return out
