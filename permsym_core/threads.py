"""How many CPU threads torch gets for one landscape: one when its operations are too small to share.

A trial's work is thousands of small operations: a loss and gradient on N samples (its largest tensors are
N x the widest layer), a structured Hessian (per-sample Jacobians, N x P) and an eigh of P x P. Below a size,
handing each one to two OpenMP threads costs more than it saves: the threads' wake-up (or, with a spinning
wait policy, their competition with everything else on the cores) is paid per operation. Measured on this
project's 2-core machine (AMD EPYC, OMP_WAIT_POLICY=PASSIVE, the package's default), 2 threads against 1
(loss_grad / Hessian; N x max(widest layer, P) in brackets):
- toy 2-10-1 on 1,681 samples [68,921]: 2.0x / 1.2x slower; 2-20-1 [136,161]: 2.2x / 1.3x slower; 2-10-10-1
  [253,831]: 2.0x / 1.35x slower; 2-50-1 [337,881]: 0.5-1.2x / 0.89x (about even); 2-20-1 on 10,000 samples
  [810,000]: 0.84x / 0.71x (faster);
- a 5-5-5-5-1 tanh net on 500 samples [48,000]: 5.4x / 1.6x slower;
- MNIST-like 10-8-6-10 softmax on 1,000 samples [212,000]: 2.9x slower / 0.70x; on 5,000 [1,060,000]: 0.91x /
  0.69x; 784-30-10 on 1,000 images 0.72x (loss_grad);
- eigh: P = 100 4.2x slower, 300 2.8x, 600 1.55x, 1,000 1.02x, 2,000 0.67x.
So work runs on one thread when its largest tensor (batch x N x max(widest layer, P)) has fewer than
SMALL_ELEMENTS entries and its landscape fewer than SMALL_PARAMS parameters; otherwise on torch's thread
count as it was set (the cores, or a sweep's CPUs per trial). run_trial runs on its landscape's count and the
batched string method (every image of every path at once) on its own: a toy trial at width 6, seed 1, took
18.7 s on two threads, 13.3 s on one, and 12.5 s on one with the strings on two.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

SMALL_ELEMENTS = 2 ** 18        # 262,144: between 253,831 (2 threads slower) and 337,881 (about even), above
SMALL_PARAMS = 1000             # eigh breaks even with 2 threads near P = 1,000 (measured above)


_ceilings: list[int] = []      # the thread counts the enclosing landscape_threads blocks started from


def threads_for(elements: int, n_params: int, device: torch.device | str = "cpu", available: int = 1) -> int:
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
def landscape_threads(landscape, batch: int = 1) -> Iterator[int]:
    """Run the block on the threads `batch` members of `landscape` at once need (threads_for of batch x N x
    max(its widest layer, P)), out of the count the outermost such block started from (torch's count then: the
    cores, or a sweep's CPUs per trial), so that a batched phase inside a one-thread trial gets its threads
    back. Yields the count."""
    ceiling = _ceilings[-1] if _ceilings else torch.get_num_threads()
    largest = batch * landscape.N * max(*landscape.spec.widths, landscape.n_params)
    n = threads_for(largest, landscape.n_params, landscape.device, ceiling)
    _ceilings.append(ceiling)
    try:
        with torch_threads(n):
            yield n
    finally:
        _ceilings.pop()
