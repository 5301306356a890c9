"""The scipy finishes of permsym_core.minimize ("lbfgs", "trust-exact"): scipy.optimize.minimize on the exact
gradient (and Hessian), with the minimisation's own acceptance, snapshots, certificate and time limit in its
callback. Synchronous, unlike the trust regions: scipy's callbacks cannot yield, so the landscape is evaluated
here (run.raw) instead of through the minimisation's driver.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor


def scipy_finish(run, theta: Tensor, max_iter: int, method: str) -> tuple[Tensor, str]:
    """The finish by scipy.optimize.minimize: "lbfgs" (L-BFGS-B, restarted while it makes progress) or
    "trust-exact"; `run` is the minimisation's bookkeeping (minimize._Run: raw, accept, snapshot, iters,
    tol, deadline, land). Returns (point, stop reason)."""
    from scipy.optimize import minimize

    dev = theta.device
    to_t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64), device=dev)  # noqa: E731
    state = {"stop": None}

    def fun(x):
        loss, g = run.raw(to_t(x))
        g = g.cpu().numpy()
        if not (math.isfinite(loss) and np.isfinite(g).all()):
            return math.inf if method != "lbfgs" else 1e300, np.zeros_like(g)
        return loss, g

    def hess(x):
        return run.land.hessian(to_t(x)).cpu().numpy()

    def callback(intermediate_result):
        x = to_t(intermediate_result.x)
        run.iters["second_order"] += 1
        loss, g = run.raw(x)
        ginf = run.accept(x, loss, g)
        run.snapshot(run.iters["second_order"], loss, x)
        state["x"] = x
        if ginf <= run.tol:
            state["stop"] = "converged"
            raise StopIteration
        if run.deadline is not None and time.perf_counter() > run.deadline:
            state["stop"] = "time_limit"
            raise StopIteration

    x = theta
    reason = "max_iter"
    for _restart in range(20 if method == "lbfgs" else 1):
        left = max_iter - run.iters["second_order"]
        if left <= 0:
            return x, "max_iter"
        state["x"] = x
        if method == "lbfgs":
            res = minimize(fun, x.cpu().numpy(), jac=True, method="L-BFGS-B", callback=callback,
                           options={"maxiter": left, "maxfun": 50 * left, "gtol": run.tol, "ftol": 0.0,
                                    "maxcor": 30})
        else:
            res = minimize(fun, x.cpu().numpy(), jac=True, hess=hess, method="trust-exact", callback=callback,
                           options={"maxiter": left, "gtol": run.tol})
        if state["stop"] is not None:
            return state["x"], state["stop"]
        x_new = to_t(res.x)
        loss, g = run.raw(x_new)
        ginf = run.accept(x_new, loss, g)
        if ginf <= run.tol:
            return x_new, "converged"
        if res.nit == 0 or (method == "lbfgs" and run.iters["second_order"] >= max_iter):
            reason = "max_iter" if run.iters["second_order"] >= max_iter else "stalled"
            return x_new, reason
        x = x_new
        reason = "max_iter" if res.nit >= left else "stalled"
    return x, reason
