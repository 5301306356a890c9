"""How many CPU threads torch gets for one landscape: one when its operations are too small to share.

A trial's work is thousands of small operations: a loss and gradient on N samples, a structured Hessian (its
per-sample Jacobian is N x P; every layer's width is at most P) and an eigh of P x P. Below a size, handing
each one to two OpenMP threads costs more than it saves: the threads' wake-up is paid per operation (under
a spinning wait policy, their competition with everything else on the cores). So work runs on one thread
when batch x N x P is below SMALL_ELEMENTS and P below SMALL_PARAMS, and otherwise on torch's count as it
was set (the cores, or a sweep's CPUs per trial). On this project's 2-core machine a second thread made the
toy task's loss and gradient 2-5.4x slower and its Hessians 1.2-1.6x slower; the thresholds sit where the
measured ratios cross 1 (BENCHMARKS.md, "Measured outside the harness (2026-12-07)").

run_trial's block is the outermost: the whole trial runs on its landscape's count. Inside it only the batched
string method (strings.trace_halves, every image of every path at once) asks again with its batch, out of
the count the outermost block started from; every other phase stays on the trial's count. torch's count is
one per process: the ceilings are kept per Python thread, but two Python threads running trials at once
still share torch's one count (sweeps run each trial in its own process).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from .landscape import Landscape

SMALL_ELEMENTS = 2 ** 18        # 262,144: between N x P = 253,831 (2 threads slower) and 337,881 (about even)
SMALL_PARAMS = 1000             # eigh breaks even with 2 threads near P = 1,000

_local = threading.local()      # .ceilings: the thread counts the enclosing landscape_threads blocks started from


def threads_for(elements: int, n_params: int, device: torch.device | str, available: int) -> int:
    """The CPU threads for work whose largest tensor has `elements` entries on a landscape of `n_params`
    parameters: 1 when it is small (module docstring), else `available`. CUDA work keeps `available`: its
    CPU threads only launch kernels."""
    if torch.device(device).type != "cpu":
        return available
    return 1 if elements < SMALL_ELEMENTS and n_params < SMALL_PARAMS else available


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside the block and put back after it, also on an exception."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def landscape_threads(landscape: "Landscape", batch: int = 1) -> Iterator[int]:
    """Run the block on the threads `batch` parameter vectors of `landscape` at once need (threads_for of
    batch x N x P), out of the count the outermost such block started from (torch's count then: the cores, or
    a sweep's CPUs per trial). run_trial's block is the outermost; the batched strings' block inside it gets
    the cores back. Yields the count."""
    if not hasattr(_local, "ceilings"):
        _local.ceilings = []
    ceilings = _local.ceilings
    ceiling = ceilings[-1] if ceilings else torch.get_num_threads()
    n = threads_for(batch * landscape.N * landscape.n_params, landscape.n_params, landscape.device, ceiling)
    ceilings.append(ceiling)
    try:
        with torch_threads(n):
            yield n
    finally:
        ceilings.pop()
