"""Chunk sizes on the CPU: the batched kernels (permsym_core.batched.chunk_elems) on a trial's string images in
chunks of 2^20 entries (this code) against the one chunk size of e9f2e3a (2^24 entries on every device), and the
dense Hessian's sample chunks (permsym_core.hessian: 2^21 entries, or 1,024 GEMM rows) against 931eb5d's 2^25,
in the same run, with agreement.
"""
from __future__ import annotations

import resource
import time
from itertools import combinations
from typing import NamedTuple

import torch

from permsym_core import batched, hessian, surgery
from permsym_core.config import TrialConfig
from permsym_core.landscape import Landscape
from permsym_core.mlp import MLPSpec
from permsym_core.study import _Trial
from permsym_core.tasks import make_task

TITLE = "Chunk sizes on the CPU: the batched kernels and the dense Hessian's sample chunks"
BASELINE_ELEMS = 1 << 24       # e9f2e3a's CHUNK_ELEMS, on every device
HESSIAN_BASELINE_ELEMS = 1 << 25   # 931eb5d's sample chunk of the dense Hessian, on every device
N_HESSIANS = 100               # the Hessians timed: of the first N_HESSIANS vectors
NOTES = f"""\
Cases: the toy task (1,681 inputs), sigmoid student of widths W, seed 1, trained to its certified minimum
theta*, and as many parameter vectors as the strings of an every-pair trial relax at once (one path per pair of
neurons of a hidden layer, 19 interior images each: 114 at width 4, 855 at width 10, 3,610 at width 20, 114
at 3x3): the images of the straight line from theta* to theta* with the pair swapped (realistic values: the
kernels' cost depends on them, through the activation's range). `this code` is permsym_core.batched with
chunk_elems (2^20 entries per chunk on the CPU, shared by its depth + 1 work tensors); the baseline is the same
functions with every chunk at 2^24 entries (e9f2e3a, which used that size on every device; CUDA still does).
Each figure is the best of three means of repeated calls, after a warm-up of both chunkings, the two measured
in alternating order: `batched_loss_grad` of all vectors; the note gives `batched_loss` of all and
`batched_hessians` of the first {N_HESSIANS} the same way (at 3x3, two hidden layers, the Hessians are built one
member at a time whatever the chunk: that ratio is the run's noise), and the minor page faults and system time
of one more loss-and-gradient call (getrusage: glibc's malloc serves a block above 32 MB by a fresh mmap,
which every call faults in again). `agreement` is the largest difference between the two chunkings'
gradients and Hessians (the members are independent, so only the kernels' rounding may differ).
The `structured_hessian` rows build one dense Hessian (permsym_core.hessian) at the landscape's initial point
with its CPU sample chunks (2^21 entries per chunk, at least 1,024 GEMM rows) against one chunk of up to 2^25
entries (931eb5d), on the CPU, on the data and architecture of sweeps/mnist.yaml (5,000 images, 10 principal
components, [8, 6] tanh, softmax: P = 212; without its weight decay, which does not change the build), a wider
MNIST one (50 components, [30] sigmoid: P = 1,840) and the toy width-20 one (one chunk under either rule: its
ratio is the run's noise); same best-of-three means, the new chunks timed first; `agreement` is the largest
relative difference of the Hessians."""


class Timing(NamedTuple):
    loss_grad_ms: float
    loss_ms: float
    hessians_ms: float
    grads: torch.Tensor
    hessians: torch.Tensor
    faults: int                # minor page faults of one loss_grad call
    system_s: float            # its system time


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


def _timed(land: Landscape, thetas: torch.Tensor, elems: int | None, at_least_s: float) -> Timing:
    """The kernels timed with every chunk at `elems` entries (None: chunk_elems, this code)."""
    saved = batched.chunk_elems
    if elems is not None:
        batched.chunk_elems = lambda _device: elems
    try:
        lg = _mean_ms(lambda: batched.batched_loss_grad(land, thetas), at_least_s)
        lo = _mean_ms(lambda: batched.batched_loss(land, thetas), at_least_s / 2)
        he = _mean_ms(lambda: batched.batched_hessians(land, thetas[:N_HESSIANS]), at_least_s / 2)
        grads = batched.batched_loss_grad(land, thetas)[1]
        before = resource.getrusage(resource.RUSAGE_SELF)
        batched.batched_loss_grad(land, thetas)
        after = resource.getrusage(resource.RUSAGE_SELF)
        return Timing(lg, lo, he, grads, batched.batched_hessians(land, thetas[:N_HESSIANS]),
                      after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime)
    finally:
        batched.chunk_elems = saved


def _fault_text(t: Timing) -> str:
    return f"{t.faults:,} page faults, {t.system_s * 1e3:.0f} ms system time per loss_grad call"


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
                _timed(land, thetas, None, 0.0), _timed(land, thetas, BASELINE_ELEMS, 0.0)    # warm-ups
                if threads == 1:
                    new = _timed(land, thetas, None, at_least_s)
                    old = _timed(land, thetas, BASELINE_ELEMS, at_least_s)
                else:                                                   # the other order
                    old = _timed(land, thetas, BASELINE_ELEMS, at_least_s)
                    new = _timed(land, thetas, None, at_least_s)
                diff = max(float((new.grads - old.grads).abs().max()),
                           float((new.hessians - old.hessians).abs().max()))
                case = f"toy {'x'.join(map(str, widths))} sigmoid: {M} vectors"
                base = dict(benchmark="batched_chunk", case=case, P=spec.n_params, threads=threads)
                rows += [dict(base, method="chunk_elems (2^20 entries)", seconds=new.loss_grad_ms / 1e3,
                              ratio=old.loss_grad_ms / new.loss_grad_ms, baseline="2^24 entries (e9f2e3a)",
                              agreement=f"max |diff| {diff:.1e}",
                              note=f"loss {old.loss_ms / new.loss_ms:.2f}x ({new.loss_ms:.1f} ms), Hessians "
                                   f"{old.hessians_ms / new.hessians_ms:.2f}x ({new.hessians_ms:.1f} ms); "
                                   f"{_fault_text(new)}", diff=diff),
                         dict(base, method="2^24 entries (e9f2e3a)", seconds=old.loss_grad_ms / 1e3,
                              note=f"loss {old.loss_ms:.1f} ms, Hessians {old.hessians_ms:.1f} ms; "
                                   f"{_fault_text(old)}")]
        torch.set_num_threads(before)
        rows += _hessian_rows(quick)
    finally:
        torch.set_num_threads(before)
    return rows


def _hessian_rows(quick: bool) -> list[dict]:
    plan = [("toy", (20,), "sigmoid", {})] if quick else [
        ("mnist", (8, 6), "tanh", dict(pca=10, n_samples=None, target="class")),
        ("mnist", (30,), "sigmoid", dict(pca=50, n_samples=None, target="class")),
        ("toy", (20,), "sigmoid", {})]
    rows = []
    for name, widths, act, opts in plan:
        task = make_task(name, seed=0, activation=act, student_widths=list(widths), **opts)
        spec = MLPSpec((task.n_in, *widths, task.n_out), act, task.default_bias, task.output)
        land = Landscape(spec, task.X, task.Y, device="cpu")
        theta = spec.init(0)
        saved = hessian.CPU_CHUNK_ELEMS

        def build(elems):
            hessian.CPU_CHUNK_ELEMS = elems
            try:
                return _mean_ms(lambda: hessian.structured_hessian(land, theta), 0.3 if quick else 1.5)
            finally:
                hessian.CPU_CHUNK_ELEMS = saved

        build(saved), build(HESSIAN_BASELINE_ELEMS)                                        # warm-ups
        new, old = build(saved), build(HESSIAN_BASELINE_ELEMS)
        H_new = hessian.structured_hessian(land, theta)
        hessian.CPU_CHUNK_ELEMS = HESSIAN_BASELINE_ELEMS
        try:
            H_old = hessian.structured_hessian(land, theta)
        finally:
            hessian.CPU_CHUNK_ELEMS = saved
        diff = float((H_new - H_old).abs().max() / H_old.abs().max())
        case = f"{name} {list(widths)} {act}, N = {land.N}: one dense Hessian"
        base = dict(benchmark="batched_chunk", case=case, P=spec.n_params, threads=torch.get_num_threads(),
                    part="hessian")
        rows += [dict(base, method="structured_hessian, CPU sample chunks", seconds=new / 1e3, ratio=old / new,
                      baseline="structured_hessian, 2^25-entry chunks (931eb5d)", agreement=f"rel diff {diff:.1e}",
                      diff=diff),
                 dict(base, method="structured_hessian, 2^25-entry chunks (931eb5d)", seconds=old / 1e3)]
    return rows


def targets(rows: list[dict]) -> list[str]:
    hess = [r for r in rows if r.get("part") == "hessian" and "ratio" in r]
    out = ["no target of its own: one dense Hessian with CPU sample chunks runs at "
           + ", ".join(f"{r['ratio']:.2f}x ({r['case'].split(':')[0]})" for r in hess)
           + " the speed of one 2^25-entry chunk; "
           + ("relative agreement within" if max(r["diff"] for r in hess) <= 1e-12 else "DISAGREEMENT:")
           + f" {max(r['diff'] for r in hess):.1e}"
           ] if hess else ["not measured: the dense Hessian's sample chunks"]
    return _batched_targets([r for r in rows if r.get("part") != "hessian"]) + out


def _batched_targets(rows: list[dict]) -> list[str]:
    ours = [r for r in rows if "ratio" in r]
    if not ours:
        return ["not measured: the batched chunk size"]
    worst = min(ours, key=lambda r: r["ratio"])
    best = max(r["ratio"] for r in ours)
    diff = max(r["diff"] for r in ours)
    return [f"no target of its own (it serves issue 12's string and batched targets): the loss and gradient in "
            f"2^20-entry chunks run at {worst['ratio']:.2f}x-{best:.2f}x the speed of 2^24-entry chunks (the "
            f"least: {worst['case']}, {worst['threads']} threads); "
            f"{'agreement within' if diff <= 1e-12 else 'DISAGREEMENT:'} {diff:.1e}"]
