"""How many CPU threads torch gets for one landscape: one when its operations are too small to share.

A trial's work is thousands of small operations: a loss and gradient on N samples (its largest tensors are
N x the widest layer), a structured Hessian (per-sample Jacobians, N x P) and an eigh of P x P. Below a size,
handing each one to two OpenMP threads costs more than it saves: the threads' wake-up (or, with a spinning
wait policy, their competition with everything else on the cores) is paid per operation. Measured on this
project's 2-core machine (AMD EPYC, OMP_WAIT_POLICY=PASSIVE, the package's default), 2 threads against 1
(loss_grad / Hessian; N x P in brackets):
- toy 2-10-1 on 1,681 samples [68,921]: 2.0x / 1.2x slower; 2-20-1 [136,161]: 2.2x / 1.3x slower; 2-10-10-1
  [253,831]: 2.0x / 1.35x slower; 2-50-1 [337,881]: 0.5-1.2x / 0.89x (about even); 2-20-1 on 10,000 samples
  [810,000]: 0.84x / 0.71x (faster);
- a 5-5-5-5-1 tanh net on 500 samples [48,000]: 5.4x / 1.6x slower;
- MNIST-like 10-8-6-10 softmax on 1,000 samples [212,000]: 2.9x slower / 0.70x; on 5,000 [1,060,000]: 0.91x /
  0.69x; 784-30-10 on 1,000 images 0.72x (loss_grad);
- eigh: P = 100 4.2x slower, 300 2.8x, 600 1.55x, 1,000 1.02x, 2,000 0.67x.
Every layer's width is at most P (each unit has a weight), so N x P is a landscape's largest tensor. Work
runs on one thread when it (times the batch) has fewer than SMALL_ELEMENTS entries and the landscape fewer
than SMALL_PARAMS parameters; otherwise on torch's thread count as it was set (the cores, or a sweep's CPUs
per trial). Near the threshold the loss and the Hessian pull apart (the 10-8-6-10 net on 1,000 samples runs
on one thread: its loss 2.9x faster, its Hessian 1.4x slower); above it both gain. run_trial runs on its
landscape's count and the batched string method (every image of every path at once) on its own: a toy trial
at width 6, seed 1, took 18.7 s on two threads, 13.3 s on one, and 12.5 s on one with the strings on two.
torch's count is one per process: the ceilings are kept per Python thread, but two Python threads running
trials at once still share torch's one count (sweeps run each trial in its own process).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from .landscape import Landscape

SMALL_ELEMENTS = 2 ** 18        # 262,144: between 253,831 (2 threads slower) and 337,881 (about even), above
SMALL_PARAMS = 1000             # eigh breaks even with 2 threads near P = 1,000 (measured above)

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
    ceilings = _local.__dict__.setdefault("ceilings", [])
    ceiling = ceilings[-1] if ceilings else torch.get_num_threads()
    n = threads_for(batch * landscape.N * landscape.n_params, landscape.n_params, landscape.device, ceiling)
    ceilings.append(ceiling)
    try:
        with torch_threads(n):
            yield n
    finally:
        ceilings.pop()
