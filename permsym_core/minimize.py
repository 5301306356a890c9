"""Certified minimisation: take a network to a critical point with |grad|_inf <= grad_tol (float64).

Pipeline (after MLPGradientFlow.jl's train: a first-order phase, then a second-order polish):
1. Warm-up: full-batch Adam on the exact gradient (deterministic), keeping the lowest-loss point, stopped
   early once |grad|_inf <= ADAM_SWITCH_TOL (the second-order finish is faster from there).
2. Finish, chosen by ``method`` ("auto": "trust-region" while P <= DENSE_MAX_P and the trial's dense limit,
   else "lbfgs+krylov": L-BFGS, then, if it did not certify, "trust-krylov" for up to max_iter more):
   - "trust-region": Newton trust region on the exact dense Hessian, the subproblem solved exactly in the
     Hessian's eigenbasis (indefinite H and the hard case included, so saddles are left downhill). Near the
     minimum, where predicted decreases fall below the loss's round-off, a step is accepted when it lowers
     |grad|_inf instead (plain ratio tests stall there).
   - "trust-krylov": the same trust region, matrix-free: the subproblem by Steihaug-Toint truncated CG on
     Hessian-vector products (Landscape.hvp), so |grad|_inf <= 1e-10 is certified above the dense limit where
     L-BFGS stalls at the loss's round-off; the same acceptance rule.
   - "trust-exact": scipy.optimize.minimize(method="trust-exact") on the same Hessian (kept to compare).
   - "lbfgs": scipy L-BFGS-B on the exact gradient (gtol = grad_tol, an infinity norm), restarted while it
     makes progress.
``warmup=False`` skips step 1: the finish alone stays near the start (used from merged networks).

Whatever happens, the gradient is recomputed at the returned point with Landscape.loss_grad and
``converged`` is decided from that measurement alone. Divergence (non-finite loss or gradient, a loss above
DIVERGE_ABS or above DIVERGE_REL x the initial loss) ends as stop_reason "diverged" with the last good point; a trust region
that keeps descending while |theta| grows past UNBOUNDED_GROWTH x its hand-over norm (a minimum at infinity:
saturating units, a softmax separating classes) ends as "unbounded", the numbers in info["unbounded"];
a run along a channel to infinity (permsym_core.channels: the loss keeps falling while named neurons' weights
grow, measured on snapshots of the last CHANNEL_WINDOW iterations, checked every CHANNEL_EVERY iterations from
CHANNEL_MIN_ITER on, and once more on any unconverged ending) ends as "channel", the measurement in
info["channel"]; a wall-time budget ends as "time_limit"; the iteration budget as "max_iter"; a trust region that shrinks to
nothing or an optimiser that gives up without converging as "stalled". No exception escapes for these.
Tensors live on the landscape's device (CUDA works); only the scipy methods go through CPU numpy.

The algorithm is one generator, `minimisation`: every loss-and-gradient, Hessian and Hessian-vector product it
needs is a request it yields (`serve` answers one). `minimise` answers each at once;
permsym_core.minimise_batched runs many minimisations of one architecture in lock step and answers each round's
requests with batched calls. The scipy methods call the landscape from their callbacks directly.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Generator

import numpy as np
import torch
from torch import Tensor

from .minimize_scipy import scipy_finish
from .trust_region import Request, _DenseModel, _KrylovModel, _Stop

DENSE_MAX_P = 2000          # exact-Hessian trust region up to this many parameters, matrix-free beyond
ADAM_SWITCH_TOL = 1e-4      # the warm-up hands over once |grad|_inf is this small
UNBOUNDED_GROWTH = 10.0     # |theta| beyond this x max(|theta| at the hand-over, 10): a minimum at infinity
DIVERGE_ABS = 1e10
DIVERGE_REL = 1e6
CHANNEL_EVERY = 25          # snapshot (and channel check) period of the second-order phase, in iterations
CHANNEL_MIN_ITER = 1000     # no channel call before this many second-order iterations, at the ending too: at
#                             300 a (2, 2, 2) sigmoid student of its own teacher (a zero-loss finite minimum,
#                             reached after ~330 more) was called a channel (loss -40 % and |theta_D| +2 % per 25)
CHANNEL_WINDOW = 250        # the window of snapshots a channel is measured on
STOP_REASONS = ("converged", "max_iter", "time_limit", "diverged", "stalled", "unbounded", "channel")
METHODS = ("auto", "trust-region", "trust-krylov", "trust-exact", "lbfgs", "lbfgs+krylov")
KRYLOV_MAX_CG = 250         # conjugate-gradient steps (HVPs) per trust-krylov subproblem, at most P
_EPS = np.finfo(np.float64).eps


@dataclass
class MinimiseResult:
    theta: Tensor
    loss: float
    grad_inf: float
    converged: bool
    iterations: dict          # {"adam": steps taken, "second_order": second-order iterations}
    wall_s: float
    stop_reason: str
    method: str               # the second-order method used ("none" when it did not run)
    grad_tol: float = 1e-10
    info: dict = field(default_factory=dict)

    def to_dict(self, with_theta: bool = True) -> dict:
        d = {"loss": self.loss, "grad_inf": self.grad_inf, "converged": self.converged,
             "iterations": dict(self.iterations), "wall_s": self.wall_s, "stop_reason": self.stop_reason,
             "method": self.method, "grad_tol": self.grad_tol, "info": dict(self.info)}
        if with_theta:
            d["theta"] = self.theta.detach().cpu().tolist()
        return d


class _Run:
    """Book-keeping of one call: evaluations, the best finite point, divergence and the time budget."""

    def __init__(self, landscape, grad_tol, time_limit_s):
        self.land = landscape
        self.tol = grad_tol
        self.t0 = time.perf_counter()
        self.deadline = None if time_limit_s is None else self.t0 + float(time_limit_s)
        self.loss0 = None
        self.best = None            # (loss, theta) of the lowest finite loss met at an accepted point
        self.iters = {"adam": 0, "second_order": 0}
        self.info = {}
        self.history: list[tuple[int, float, Tensor]] = []   # (iteration, loss, theta) snapshots

    def snapshot(self, it: int, loss: float, theta: Tensor) -> None:
        if it % CHANNEL_EVERY == 0 and (not self.history or self.history[-1][0] != it):
            self.history.append((it, loss, theta.detach().clone()))
            if len(self.history) > 4 * CHANNEL_WINDOW // CHANNEL_EVERY:
                del self.history[0]

    def channel(self, it: int):
        """The channel on the last CHANNEL_WINDOW iterations' snapshots (None: not one; never with a weight decay,
        whose coercive loss has no channel to infinity: a slow descent there ends as max_iter or time_limit)."""
        from .channels import detect_channel

        win = [h for h in self.history if h[0] >= it - CHANNEL_WINDOW]
        if len(win) < 3 or not hasattr(self.land, "spec") or getattr(self.land, "penalty", None) is not None:
            return None
        try:
            ch = detect_channel(self.land, win)
        except (RuntimeError, ValueError):
            return None
        if ch is not None:
            self.info["channel"] = ch.to_dict()
        return ch

    def check_time(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise _Stop("time_limit")

    def raw(self, theta: Tensor) -> tuple[float, Tensor]:
        """Loss and gradient now, no checks (the scipy methods' callbacks, which cannot yield)."""
        return serve(self.land, ("loss_grad", theta))

    @staticmethod
    def ask(theta: Tensor) -> Generator[Request, object, tuple[float, Tensor]]:
        """Loss and gradient as a request to the driver, no checks (a trial point may be bad without the run
        diverging)."""
        return (yield ("loss_grad", theta))

    def accept(self, theta: Tensor, loss: float, g: Tensor) -> float:
        """Record an accepted iterate; raise _Stop("diverged") when it is non-finite or exploding."""
        ginf = float(g.abs().max()) if g.numel() else 0.0
        if not (math.isfinite(loss) and math.isfinite(ginf)):
            raise _Stop("diverged")
        if self.loss0 is None:
            self.loss0 = loss
        if loss > DIVERGE_ABS or (self.loss0 > 0 and loss > DIVERGE_REL * self.loss0):
            raise _Stop("diverged")
        if self.best is None or loss < self.best[0]:
            self.best = (loss, theta.detach().clone())
        return ginf


# --- warm-up --------------------------------------------------------------------------------------

def _adam(run: _Run, theta: Tensor, steps: int, lr: float) -> Generator[Request, object, Tensor]:
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for t in range(1, steps + 1):
        run.check_time()
        loss, g = yield from run.ask(theta)
        ginf = run.accept(theta, loss, g)
        if ginf <= max(ADAM_SWITCH_TOL, run.tol):
            break
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        theta = theta - lr * step
        run.iters["adam"] = t
    else:
        loss, g = yield from run.ask(theta)
        run.accept(theta, loss, g)
    return run.best[1].clone()


# --- trust region (its step models: permsym_core.trust_region) ------------------------------------

def _trust_region(run: _Run, theta: Tensor, max_iter: int, model=None
                  ) -> Generator[Request, object, tuple[Tensor, str]]:
    """Trust-region iterations; the step from `model` (default: the dense eigenbasis subproblem)."""
    model = _DenseModel() if model is None else model
    loss, g = yield from run.ask(theta)
    ginf = run.accept(theta, loss, g)
    if ginf <= run.tol:
        return theta, "converged"
    delta = max(1.0, 0.1 * float(theta.norm()))
    rmax = UNBOUNDED_GROWTH * max(float(theta.norm()), 10.0)
    dmax = 1e3 * (1.0 + float(theta.norm()))
    for it in range(1, max_iter + 1):
        run.check_time()
        run.iters["second_order"] = it
        run.snapshot(it - 1, loss, theta)
        if it - 1 >= CHANNEL_MIN_ITER and (it - 1) % CHANNEL_EVERY == 0 and run.channel(it - 1) is not None:
            return theta, "channel"
        p, pred, pnorm = yield from model.step(theta, g, delta)
        new = theta + p
        loss_n, g_n = yield from run.ask(new)
        ginf_n = float(g_n.abs().max())
        actual = loss_n - loss
        noise = 1e3 * _EPS * abs(loss) + 1e-300
        if not (math.isfinite(loss_n) and math.isfinite(ginf_n)):
            rho = -math.inf
        elif -pred <= noise:        # below the loss's resolution: judge the step by the gradient
            rho = 1.0 if (ginf_n < ginf and actual <= noise) else -1.0
        else:
            rho = actual / pred
        if rho < 0.25:
            delta = 0.25 * pnorm
        elif rho > 0.75 and pnorm >= 0.99 * delta:
            delta = min(2.0 * delta, dmax)
        if rho > 1e-4:
            theta, loss, g = new, loss_n, g_n
            ginf = run.accept(theta, loss, g)
            model.moved()
            if ginf <= run.tol:
                return theta, "converged"
            if float(theta.norm()) > rmax:      # still descending while the weights run away: no finite minimum here
                run.info["unbounded"] = {"theta_norm": float(theta.norm()), "limit": rmax, "loss": loss,
                                         "grad_inf": ginf}
                return theta, "unbounded"
        if delta <= 1e-15 * (1.0 + float(theta.norm())):
            return theta, "stalled"
    return theta, "max_iter"


# --- entry point ----------------------------------------------------------------------------------

def dense_second_order(P: int, dense_max_params: int | None = None) -> bool:
    """Whether "auto" finishes on the dense Hessian: P <= DENSE_MAX_P (a dense eigh per iteration stays cheap)
    and P <= dense_max_params (the trial's dense/iterative threshold, see permsym_core.config) when given."""
    return P <= DENSE_MAX_P and (dense_max_params is None or P <= dense_max_params)


def serve(landscape, request: Request):
    """Answer one request of a minimisation: ("loss_grad", theta), ("hessian", theta) or ("hvp", theta, v)."""
    kind, theta = request[0], request[1]
    with torch.no_grad():
        if kind == "loss_grad":
            return landscape.loss_grad(theta)
        if kind == "hessian":
            return landscape.hessian(theta)
        if kind == "hvp":
            return landscape.hvp(theta, request[2])
    raise ValueError(f"request: expected loss_grad, hessian or hvp, got {kind!r}")


def minimise(landscape, theta0, **options) -> MinimiseResult:
    """Minimise `landscape` from theta0 to |grad|_inf <= grad_tol; see the module docstring and minimisation()
    for the options. Each request of the minimisation is answered at once, by the landscape itself."""
    run = minimisation(landscape, theta0, **options)
    reply, failure = None, None
    try:
        while True:
            request = run.send(reply) if failure is None else run.throw(failure)
            try:
                reply, failure = serve(landscape, request), None
            except Exception as exc:            # noqa: BLE001  (where the minimisation asked: it decides)
                failure = exc
    except StopIteration as done:
        return done.value


def minimisation(landscape, theta0, *, grad_tol: float = 1e-10, max_iter: int = 2000, adam_steps: int = 3000,
                 lr: float = 0.05, time_limit_s: float | None = None, seed: int = 0, method: str = "auto",
                 warmup: bool = True, dense_max_params: int | None = None
                 ) -> Generator[Request, object, MinimiseResult]:
    """The minimisation as a generator: it yields each loss-and-gradient, Hessian and Hessian-vector product
    it needs as a request (see serve), takes the answer back by send(), and returns the MinimiseResult.
    minimise() answers one by one; permsym_core.minimise_batched answers many minimisations' requests in
    batched calls.

    `seed` is recorded for reproducibility (the pipeline itself draws no random numbers)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    run = _Run(landscape, float(grad_tol), time_limit_s)
    theta = landscape.as_theta(theta0).detach().clone()
    P = theta.numel()
    used = method if method != "auto" else ("trust-region" if dense_second_order(P, dense_max_params)
                                            else "lbfgs+krylov")
    ran = "none"
    reason = "max_iter"
    run_info_error = None
    try:
        loss, g = yield from run.ask(theta)
        if run.accept(theta, loss, g) <= run.tol:
            reason = "converged"
        else:
            if warmup and adam_steps > 0:
                theta = yield from _adam(run, theta, adam_steps, lr)
            if max_iter > 0:
                ran = used
                if used == "trust-region":
                    theta, reason = yield from _trust_region(run, theta, max_iter)
                elif used == "trust-krylov":
                    krylov = _KrylovModel(max_cg=min(P, KRYLOV_MAX_CG))
                    theta, reason = yield from _trust_region(run, theta, max_iter, krylov)
                    run.info["hvps"] = krylov.hvps
                else:
                    theta, reason = scipy_finish(run, theta, max_iter, "lbfgs" if used == "lbfgs+krylov" else used)
                    if used == "lbfgs+krylov" and reason in ("max_iter", "stalled"):   # L-BFGS did not certify:
                        krylov = _KrylovModel(max_cg=min(P, KRYLOV_MAX_CG))            # the matrix-free finish
                        done = run.iters["second_order"]
                        run.history.clear()            # channel snapshots are numbered per phase
                        try:
                            theta, reason = yield from _trust_region(run, theta, max_iter, krylov)
                        finally:                       # a _Stop (time limit, divergence) keeps the count too
                            run.iters["second_order"] += done
                            run.info["hvps"] = krylov.hvps
    except _Stop as stop:
        reason = stop.reason
        if run.best is not None:
            theta = run.best[1]
    except (RuntimeError, np.linalg.LinAlgError, ValueError) as exc:   # e.g. eigh failing on a bad matrix
        reason = "stalled" if run.best is not None else "diverged"
        theta = run.best[1] if run.best is not None else theta
        run_info_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    # The verdict: measured at the returned point, nothing else.
    loss, g = yield from run.ask(theta)
    ginf = float(g.abs().max()) if g.numel() else 0.0
    ok = math.isfinite(loss) and math.isfinite(ginf)
    converged = ok and ginf <= grad_tol and reason != "diverged"
    if converged:
        reason = "converged"
    elif reason == "converged":
        reason = "stalled"
    if (not converged and reason in ("max_iter", "time_limit", "stalled", "unbounded") and run.history
            and (reason == "unbounded" or run.history[-1][0] >= CHANNEL_MIN_ITER)):
        if run.channel(run.history[-1][0]) is not None:     # the unconverged ending, measured: a channel?
            reason = "channel"
    info = {"n_params": P, "lr": lr, "adam_steps": adam_steps, "warmup": warmup, "seed": seed,
            "time_limit_s": time_limit_s, "max_iter": max_iter}
    info.update(run.info)
    if run_info_error:
        info["error"] = run_info_error
    return MinimiseResult(theta=theta, loss=float(loss), grad_inf=ginf, converged=converged,
                          iterations=dict(run.iters), wall_s=time.perf_counter() - run.t0, stop_reason=reason,
                          method=ran, grad_tol=float(grad_tol), info=info)


minimize = minimise
