"""Many minimisations of one architecture on one data set in lock step, each round one batched call.

`minimise_many(landscape, thetas0, **options)` runs, for every start, the sequential algorithm of
permsym_core.minimize unchanged (`minimisation`, a generator: Adam warm-up, dense trust region, its own
stopping rule, certificate, channel test and time budget), which yields every loss-and-gradient and Hessian it
needs as a request. Each round collects one request from every member still running and answers them
together: the losses and gradients by one permsym_core.batched.batched_loss_grad call, the Hessians by
batched_hessians (one batched build for one hidden layer, Landscape.hessian per member deeper), Hessian-vector
products one by one. When a batched answer fails (memory, a bad member), that round is answered one by one, so
only a member whose own request fails meets the error, where its sequential run would. A member that has
returned leaves; the rest go on. Members run in groups that keep their dense P x P matrices within free memory.

What a member computes differs from its sequential run by the rounding of the batched kernels, bit for bit
equal except where a product has a dimension of 1 (a single-output layer). The tests find the same stop
reasons, iteration counts and certified losses on the toy task and a two-hidden-layer tanh teacher; in a nearly
flat landscape that last bit can decide which certified minimum a member reaches (README, "Devices and the
dense threshold"). Each result's wall_s is its group's elapsed time, and its info gains
"batched": {"members", "rounds"}.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .batched import batched_hessians, batched_loss_grad
from .hessian import available_bytes
from .minimize import MinimiseResult, minimisation, serve
from .trust_region import Request

GROUP_COPIES = 4            # P x P float64 matrices alive per member in lock step (see _group_size)


def _answer(landscape, kind: str, requests: list[Request]) -> list:
    """The replies to requests of one kind, in order: batched where a batched kernel exists."""
    if kind == "loss_grad":
        with torch.no_grad():
            losses, grads = batched_loss_grad(landscape, torch.stack([r[1] for r in requests]))
        return [(float(loss), g.clone()) for loss, g in zip(losses.tolist(), grads)]   # own storage: a kept
        #                                                     gradient must not hold the whole round's tensor
    if kind == "hessian":
        with torch.no_grad():
            return list(batched_hessians(landscape, torch.stack([r[1] for r in requests])))
    return [serve(landscape, r) for r in requests]


def _replies(landscape, kind: str, ids: list[int], asked: dict[int, Request]) -> dict:
    """{member: (answer, None) or (None, exception)} for the requests of one kind: batched, or, when the batch
    fails, one by one (only a member whose own request fails gets the error)."""
    try:
        return {i: (a, None) for i, a in zip(ids, _answer(landscape, kind, [asked[i] for i in ids]))}
    except Exception:                           # noqa: BLE001  (answered one by one below)
        out = {}
        for i in ids:
            try:
                out[i] = (serve(landscape, asked[i]), None)
            except Exception as exc:            # noqa: BLE001  (the member meets it where it asked)
                out[i] = (None, exc)
        return out


def _group_size(landscape, n: int) -> int:
    """Members per lock-step group: their dense matrices (a Hessian in the batch and an eigenbasis kept by
    each member's trust region, plus the batch's workspace: GROUP_COPIES x P^2 float64 each) within half the
    free memory of the landscape's device."""
    per = GROUP_COPIES * 8 * landscape.n_params ** 2
    return max(1, min(n, available_bytes(landscape.device) // 2 // max(per, 1)))


def _lock_step(landscape, thetas0: list, options: dict) -> list[MinimiseResult]:
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
        rounds += bool(asked)
        replies = {}
        for kind in {r[0] for r in asked.values()}:
            replies.update(_replies(landscape, kind, [i for i, r in asked.items() if r[0] == kind], asked))
    out = [results[i] for i in range(len(thetas0))]
    for r in out:
        r.info["batched"] = {"members": len(out), "rounds": rounds}
    return out


def minimise_many(landscape, thetas0: Sequence[Tensor], **options) -> list[MinimiseResult]:
    """minimise(landscape, t, **options) for every t of thetas0, in lock step (see the module docstring)."""
    thetas0 = list(thetas0)
    step = _group_size(landscape, max(len(thetas0), 1))
    out: list[MinimiseResult] = []
    for a in range(0, len(thetas0), step):
        out += _lock_step(landscape, thetas0[a:a + step], options)
    return out
