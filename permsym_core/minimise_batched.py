"""Many minimisations of one architecture on one data set in lock step, each round one batched call.

`minimise_many(landscape, thetas0, **options)` returns what `[minimise(landscape, t, **options) for t in
thetas0]` returns, member for member. Each member is the sequential algorithm of permsym_core.minimize
unchanged (`minimisation`, a generator: Adam warm-up, dense trust region, its own stopping rule, certificate,
channel test and time budget); it yields every loss-and-gradient and Hessian it needs as a request. Each
round collects one request from every member still running and answers them together: the losses and
gradients by permsym_core.batched.batched_loss_grad, the Hessians by batched_hessians (one batched build for
one hidden layer), Hessian-vector products one by one. A member that has returned leaves; the rest go on.
What each member computes differs from its sequential run only by the rounding of the batched kernels (about
1e-16 per call), so both end at the same certified points (tested against the sequential path, the oracle).

On this CPU the batched kernels cost about what the loop of sequential calls costs (BENCHMARKS.md, "Batched
reduced training"), so the trial batches where the device is CUDA (TrialConfig.batch_reduced = "auto") or
when asked ("on").
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .batched import batched_hessians, batched_loss_grad
from .minimize import MinimiseResult, minimisation, serve
from .trust_region import Request

def _answer(landscape, kind: str, requests: list[Request]) -> list:
    """The replies to requests of one kind, in order: batched where a batched kernel exists."""
    if kind == "loss_grad":
        with torch.no_grad():
            losses, grads = batched_loss_grad(landscape, torch.stack([r[1] for r in requests]))
        return [(float(loss), g) for loss, g in zip(losses.tolist(), grads)]
    if kind == "hessian":
        with torch.no_grad():
            return list(batched_hessians(landscape, torch.stack([r[1] for r in requests])))
    return [serve(landscape, r) for r in requests]


def minimise_many(landscape, thetas0: Sequence[Tensor], **options) -> list[MinimiseResult]:
    """minimise(landscape, t, **options) for every t of thetas0, in lock step (see the module docstring)."""
    runs = {i: minimisation(landscape, t, **options) for i, t in enumerate(thetas0)}
    results: dict[int, MinimiseResult] = {}
    replies: dict[int, tuple[object, BaseException | None]] = {i: (None, None) for i in runs}
    rounds = 0
    while runs:
        asked: dict[int, Request] = {}
        for i, (reply, failure) in replies.items():
            try:
                asked[i] = runs[i].send(reply) if failure is None else runs[i].throw(failure)
            except StopIteration as done:
                results[i] = done.value
                del runs[i]
        replies = {}
        rounds += bool(asked)
        for kind in {r[0] for r in asked.values()}:
            ids = [i for i, r in asked.items() if r[0] == kind]
            try:
                answers = _answer(landscape, kind, [asked[i] for i in ids])
                replies.update({i: (a, None) for i, a in zip(ids, answers)})
            except Exception as exc:            # noqa: BLE001  (each member meets it where it asked)
                replies.update({i: (None, exc) for i in ids})
    out = [results[i] for i in range(len(thetas0))]
    for r in out:
        r.info["batched"] = {"members": len(out), "rounds": rounds}
    return out
