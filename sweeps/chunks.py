"""Trials per Ray Tune trial: a grid sweep's pending trials cut into chunks that one worker runs in turn.

Ray Tune costs ~0.17 s per Tune trial on this machine (measured with a no-op trainable, BENCHMARKS.md), more
than a trivial permsym trial takes; a chunk pays it once for several trials. Chunk sizes follow guided
self-scheduling (Polychronopoulos and Kuck 1987): each chunk takes ceil(remaining / (GSS_FACTOR * slots))
trials, so the first chunks are long and the last ones are single trials, and no worker is left with a long
chunk while the others are idle at the end of the sweep. A sweep with no more than GSS_FACTOR * slots trials
gets one trial per chunk (every small sweep runs exactly as before). `trials_per_task: n` in the spec fixes
the size instead.
"""
from __future__ import annotations

import math
from typing import Sequence, TypeVar

T = TypeVar("T")

GSS_FACTOR = 4          # chunks per worker for what remains: the tail imbalance is at most one small chunk
MAX_CHUNK = 64          # at most this many trials per Tune trial (a crash retries the chunk's unfinished ones)


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
