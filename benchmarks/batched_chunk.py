"""Batched chunk size (permsym_core.batched.chunk_elems): the loss and gradient, the loss and the Hessians of a
trial's string images in 8 MB chunks on the CPU (CPU_CHUNK_ELEMS, this code) against the one
chunk size of e9f2e3a (CHUNK_ELEMS = 2^24 entries per work tensor, every device), in the same run, with agreement.
"""
from __future__ import annotations

import resource
import time

import torch

from itertools import combinations

from permsym_core import batched, surgery
from permsym_core.config import TrialConfig
from permsym_core.landscape import Landscape
from permsym_core.study import _Trial

TITLE = "Batched chunk size: 8 MB CPU chunks against one size for every device"
BASELINE_ELEMS = 1 << 24       # e9f2e3a's CHUNK_ELEMS, on every device
NOTES = """\
Cases: the toy task (1,681 inputs), sigmoid student of widths W, seed 1, trained to its certified minimum
theta*, and as many parameter vectors as the strings of an every-pair trial relax at once (one path per pair of
neurons of a hidden layer, 19 interior images each: 114 at width 4, 855 at width 10, 3,610 at width 20, 114
at 3x3): the images of the straight line from theta* to theta* with the pair swapped (realistic values: the
kernels' cost depends on them, through the activation's range). `this code` is permsym_core.batched with chunk_elems (2^20 entries on the CPU);
the baseline is the same functions with every chunk at 2^24 entries (e9f2e3a, which used that size on every
device; CUDA still does). Each figure is the best of three means of repeated calls, after a warm-up of both chunkings: `batched_loss_grad` of all
vectors; the note gives `batched_loss` of all and `batched_hessians` of the first 100 the same way, and the minor
page faults and system time of one more loss-and-gradient call (getrusage: glibc's malloc serves a block above
32 MB by a fresh mmap, which every call faults in again).
`agreement` is the largest difference between the two chunkings' gradients and Hessians (the members are
independent, so only the kernels' rounding may differ)."""


def _mean_ms(f, at_least_s: float) -> float:
    """The best of 3 means of repeated calls (each over at least at_least_s / 3 after a warm-up call)."""
    f()
    best = float("inf")
    for _ in range(3):
        t0, n = time.perf_counter(), 0
        while n < 2 or time.perf_counter() - t0 < at_least_s / 3:
            f()
            n += 1
        best = min(best, (time.perf_counter() - t0) / n * 1e3)
    return best


def _faults(f) -> tuple[int, float]:
    """(minor page faults, system seconds) of this process during one call of f."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    f()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime


def _timed(land: Landscape, thetas: torch.Tensor, elems: int | None, at_least_s: float):
    """(loss_grad ms, loss ms, hessians ms, grads, Hessians, (faults, system s) of one loss_grad call) with the
    chunk size `elems` (None: chunk_elems)."""
    saved = batched.chunk_elems
    if elems is not None:
        batched.chunk_elems = lambda _device: elems
    try:
        lg = _mean_ms(lambda: batched.batched_loss_grad(land, thetas), at_least_s)
        lo = _mean_ms(lambda: batched.batched_loss(land, thetas), at_least_s / 2)
        he = _mean_ms(lambda: batched.batched_hessians(land, thetas[:100]), at_least_s / 2)
        return (lg, lo, he, batched.batched_loss_grad(land, thetas)[1], batched.batched_hessians(land, thetas[:100]),
                _faults(lambda: batched.batched_loss_grad(land, thetas)))
    finally:
        batched.chunk_elems = saved


def _images(widths: tuple[int, ...]) -> tuple[Landscape, torch.Tensor]:
    """The toy landscape of `widths` and the 19 interior images of the line from its minimum theta* to theta*
    with each pair of neurons of each hidden layer swapped."""
    trial = _Trial(TrialConfig(task="toy", widths=widths, seed=1))
    if not trial.train_minimum()["converged"]:
        raise RuntimeError(f"toy {widths}: no certified minimum")
    star, spec = trial.theta_star, trial.spec
    ends = torch.stack([surgery.swap(spec, star, layer, i, j) for layer in range(1, spec.depth)
                        for i, j in combinations(range(spec.widths[layer]), 2)])
    t = torch.linspace(0, 1, 21, dtype=star.dtype)[None, 1:-1, None]
    return trial.landscape, ((1 - t) * star + t * ends[:, None]).reshape(-1, spec.n_params)     # line by line


def _fault_text(faults: tuple[int, float]) -> str:
    return f"{faults[0]:,} page faults, {faults[1] * 1e3:.0f} ms system time per loss_grad call"


def run(quick: bool = False) -> list[dict]:
    plan = [(4,)] if quick else [(4,), (10,), (20,), (3, 3)]
    at_least_s = 0.3 if quick else 1.0
    before = torch.get_num_threads()
    rows = []
    try:
        for widths in plan:
            land, thetas = _images(widths)
            M, spec = thetas.shape[0], land.spec
            for threads in (1, 2):
                torch.set_num_threads(threads)
                _timed(land, thetas, BASELINE_ELEMS, 0.0)                       # warm-up of both
                new = _timed(land, thetas, None, at_least_s)
                old = _timed(land, thetas, BASELINE_ELEMS, at_least_s)
                diff = max(float((new[3] - old[3]).abs().max()), float((new[4] - old[4]).abs().max()))
                case = f"toy {'x'.join(map(str, widths))} sigmoid: {M} vectors"
                base = dict(benchmark="batched_chunk", case=case, P=spec.n_params, threads=threads)
                rows += [dict(base, method=f"chunk_elems ({batched.chunk_elems('cpu') >> 20} Mi entries)",
                              seconds=new[0] / 1e3, ratio=old[0] / new[0], baseline="2^24 entries (e9f2e3a)",
                              agreement=f"max |diff| {diff:.1e}",
                              note=f"loss {old[1] / new[1]:.2f}x ({new[1]:.1f} ms), Hessians {old[2] / new[2]:.2f}x "
                                   f"({new[2]:.1f} ms); {_fault_text(new[5])}", diff=diff),
                         dict(base, method="2^24 entries (e9f2e3a)", seconds=old[0] / 1e3,
                              note=f"loss {old[1]:.1f} ms, Hessians {old[2]:.1f} ms; {_fault_text(old[5])}")]
    finally:
        torch.set_num_threads(before)
    return rows


def targets(rows: list[dict]) -> list[str]:
    ours = [r for r in rows if "ratio" in r]
    if not ours:
        return ["not measured: the batched chunk size"]
    worst = min(ours, key=lambda r: r["ratio"])
    diff = max(r["diff"] for r in ours)
    return [f"no target of its own (it serves issue 12's string and batched targets): the loss and gradient in "
            f"2^20-entry chunks run at {min(r['ratio'] for r in ours):.2f}x-{max(r['ratio'] for r in ours):.2f}x "
            f"the speed of 2^24-entry chunks (the least: {worst['case']}, {worst['threads']} threads); "
            f"{'agreement within' if diff <= 1e-12 else 'DISAGREEMENT:'} {diff:.1e}"]
