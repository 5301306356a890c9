"""Certified minimisation: time to |grad|_inf <= 1e-10 with permsym_core.minimize.minimise (Adam warm-up, then a
trust region on the exact structured Hessian) against (a) Adam alone for the same wall time and (b) scipy's
trust-exact fed by the torch.func Hessian and the exact gradient, from the same Adam warm-up point.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from permsym_core.autodiff import autodiff_hessian
from permsym_core.landscape import Landscape
from permsym_core.minimize import minimise
from permsym_core.mlp import DTYPE, MLPSpec
from permsym_core.tasks import make_task

from .hessian import timed

TITLE = "Certified minimisation: time to |grad|_inf <= 1e-10"
TOL = 1e-10
LR = 0.05               # minimise's default warm-up learning rate, also used by Adam alone
ADAM_STEPS = 3000       # minimise's default warm-up budget
LIMIT_MAX_S = 30.0      # the scipy baselines stop here (at P ~ 1,000 they take minutes on 2 cores)
NOTES = f"""\
Cases: the toy task (2-k-1, sigmoid, no biases, N = 1681, seed 0 init) and a random teacher task (20 inputs,
teacher widths [20], sigmoid, N = 500, seed 0) learned by a 20-45-1 student with biases (P = 991); 2 threads.
`minimise` rows: the full pipeline from the initial point (Adam warm-up, lr {LR}, at most {ADAM_STEPS} steps, until
|grad|_inf <= 1e-4, then the trust region on the structured Hessian); their baseline is `Adam alone`: the same
Adam (same lr and betas, from the same initial point) run for the same wall time, whose best |grad|_inf is
reported (ratio = Adam's time to 1e-10 / ours when Adam gets there, else `-`: Adam did not reach 1e-10 in that
time). `trust region` rows: our second-order phase alone, from the Adam warm-up point (the point `minimise`
hands over); baseline: scipy.optimize.minimize(method="trust-exact") from the same point with the exact
gradient (Landscape.loss_grad) and the Hessian by torch.func.hessian (autodiff.autodiff_hessian), stopped by a
callback as soon as |grad|_inf <= 1e-10 (scipy's own gtol tests the 2-norm), or at its time limit (20x ours,
at least 10 s, at most {LIMIT_MAX_S:g} s; a baseline stopped there gives ratio `-` and "ratio > x" in `note`). Every time is the best of up to 5 calls (3 for the full pipeline) or 2 s of
calls; Adam alone runs once, for the pipeline's best time. `scipy trust-exact + structured H` is minimise(method="trust-exact"): scipy's
algorithm with our Hessian, which separates the Hessian's share of the gain from the algorithm's. ratio =
baseline seconds / method seconds; `agreement` compares the final losses of ours and the baseline."""


@dataclass(frozen=True)
class Case:
    name: str
    task: str
    width: int
    task_options: tuple = ()
    bias: bool = False

    def landscape(self) -> tuple[Landscape, torch.Tensor]:
        task = make_task(self.task, seed=0, activation="sigmoid", **dict(self.task_options))
        spec = MLPSpec((task.n_in, self.width, task.n_out), "sigmoid", self.bias, "regression")
        L = Landscape(spec, task.X, task.Y)
        return L, L.as_theta(spec.init(0))


TEACHER = Case("teacher 20-[20] -> 20-45-1", "teacher", 45,
               (("input_dim", 20), ("widths", [20]), ("n_samples", 500)), bias=True)


def cases(quick: bool) -> list[Case]:
    toy = [Case(f"toy 2-{k}-1", "toy", k) for k in ((3, 4) if quick else (3, 4, 5))]
    return toy if quick else toy + [TEACHER]


def ginf(L: Landscape, theta: torch.Tensor) -> tuple[float, float]:
    loss, g = L.loss_grad(theta)
    return float(loss), float(g.abs().max())


def adam_alone(L: Landscape, theta0: torch.Tensor, budget_s: float, lr: float = LR) -> dict:
    """Full-batch Adam exactly as minimise's warm-up (no early hand-over) for budget_s seconds: the best
    |grad|_inf met, the steps taken, and the time at which |grad|_inf <= TOL was first met (None if never)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    theta = theta0.detach().clone()
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    best, t_hit, t = math.inf, None, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        t += 1
        with torch.no_grad():
            loss, g = L.loss_grad(theta)
        gi = float(g.abs().max())
        if not math.isfinite(gi):
            break
        best = min(best, gi)
        if gi <= TOL:
            t_hit = time.perf_counter() - t0
            break
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        theta = theta - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return {"best_grad_inf": best, "steps": t, "t_hit": t_hit, "seconds": time.perf_counter() - t0}


def scipy_trust_exact_autodiff(L: Landscape, theta0: torch.Tensor, time_limit_s: float, max_iter: int = 2000) -> dict:
    """scipy trust-exact with the exact gradient and the torch.func Hessian, stopped once |grad|_inf <= TOL."""
    from scipy.optimize import minimize

    to_t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))  # noqa: E731
    state = {"x": theta0.detach().cpu().numpy(), "reason": "max_iter", "nit": 0}
    t0 = time.perf_counter()

    def fun(x):
        loss, g = L.loss_grad(to_t(x))
        return float(loss), g.detach().cpu().numpy()

    def hess(x):
        return autodiff_hessian(L, to_t(x)).detach().cpu().numpy()

    def callback(intermediate_result):
        state["nit"] += 1
        state["x"] = intermediate_result.x
        if ginf(L, to_t(intermediate_result.x))[1] <= TOL:
            state["reason"] = "converged"
            raise StopIteration
        if time.perf_counter() - t0 > time_limit_s:
            state["reason"] = "time_limit"
            raise StopIteration

    res = minimize(fun, state["x"], jac=True, hess=hess, method="trust-exact", callback=callback,
                   options={"maxiter": max_iter, "gtol": TOL})
    seconds = time.perf_counter() - t0
    x = to_t(state["x"] if state["reason"] != "max_iter" else res.x)
    loss, gi = ginf(L, x)
    return {"seconds": seconds, "loss": loss, "grad_inf": gi, "converged": gi <= TOL, "iterations": state["nit"],
            "stop": "converged" if gi <= TOL else (state["reason"] if state["reason"] != "max_iter" else res.message)}


def fmt_g(x: float) -> str:
    return f"{x:.1e}"


def loss_agreement(a: float, b: float) -> str:
    return f"|dL| = {abs(a - b):.1e} (L = {a:.3g})"


def run_case(case: Case) -> list[dict]:
    L, theta0 = case.landscape()
    base = dict(benchmark="minimise", case=case.name, P=L.n_params, threads=torch.get_num_threads())
    rows = []
    # 1. the full pipeline from the initial point, against Adam alone for the same wall time
    t_ours, ours = timed(lambda: minimise(L, theta0, grad_tol=TOL), min_seconds=2.0, max_repeats=3)
    ours.wall_s = t_ours
    adam = adam_alone(L, theta0, ours.wall_s)
    reached = adam["t_hit"] is not None
    rows.append(dict(base, method="minimise (Adam warm-up + trust region)", seconds=ours.wall_s,
                     ratio=adam["t_hit"] / ours.wall_s if reached else None,
                     baseline="Adam alone, same wall time",
                     agreement=(f"Adam reached 1e-10 too" if reached else
                                f"Adam did not reach 1e-10 (best {fmt_g(adam['best_grad_inf'])})"),
                     note=f"|g| {fmt_g(ours.grad_inf)}, {ours.stop_reason}; {ours.iterations['adam']} Adam steps + "
                          f"{ours.iterations['second_order']} TR iterations",
                     converged=ours.converged, grad_inf=ours.grad_inf))
    rows.append(dict(base, method="Adam alone", seconds=adam["seconds"],
                     note=f"best |g| {fmt_g(adam['best_grad_inf'])} in {adam['steps']} steps; "
                          + (f"reached 1e-10 at {adam['t_hit']:.2f} s" if reached else "did not reach 1e-10"),
                     converged=reached, grad_inf=adam["best_grad_inf"]))
    # 2. second-order phase alone, from the same warm-up point
    warm = minimise(L, theta0, grad_tol=TOL, max_iter=0).theta
    t_tr, tr = timed(lambda: minimise(L, warm, grad_tol=TOL, warmup=False, method="trust-region"), min_seconds=2.0)
    limit = min(LIMIT_MAX_S, max(10.0, 20 * t_tr))
    t_sp, sp = timed(lambda: scipy_trust_exact_autodiff(L, warm, limit), min_seconds=2.0)
    sp["seconds"] = t_sp if sp["converged"] else sp["seconds"]
    t_te, te = timed(lambda: minimise(L, warm, grad_tol=TOL, warmup=False, method="trust-exact", time_limit_s=limit),
                     min_seconds=2.0)
    tr.wall_s, te.wall_s = t_tr, t_te
    scipy_name = "scipy trust-exact + torch.func Hessian"
    both = "both reached 1e-10" if (tr.converged and sp["converged"]) else (
        f"ours {'reached' if tr.converged else 'missed'}, baseline {'reached' if sp['converged'] else 'missed'} 1e-10")
    rows.append(dict(base, method="trust region, structured H (ours)", seconds=tr.wall_s,
                     ratio=sp["seconds"] / tr.wall_s if sp["converged"] else None, baseline=scipy_name,
                     agreement=f"{both}; {loss_agreement(tr.loss, sp['loss'])}",
                     note=f"from the warm-up point; |g| {fmt_g(tr.grad_inf)}, {tr.iterations['second_order']} iterations"
                          + ("" if sp["converged"] else f"; baseline stopped at {sp['seconds']:.0f} s: ratio > "
                             f"{sp['seconds'] / tr.wall_s:.1f}"),
                     converged=tr.converged, grad_inf=tr.grad_inf))
    rows.append(dict(base, method=scipy_name, seconds=sp["seconds"],
                     note=f"|g| {fmt_g(sp['grad_inf'])}, {sp['stop']}; {sp['iterations']} iterations",
                     converged=sp["converged"], grad_inf=sp["grad_inf"]))
    rows.append(dict(base, method="scipy trust-exact + structured H", seconds=te.wall_s,
                     ratio=sp["seconds"] / te.wall_s if (sp["converged"] and te.converged) else None,
                     baseline=scipy_name, agreement=loss_agreement(te.loss, sp["loss"]),
                     note=f"|g| {fmt_g(te.grad_inf)}, {te.stop_reason}; {te.iterations['second_order']} iterations"
                          + ("" if te.converged else f"; stopped at its {limit:.0f} s limit"),
                     converged=te.converged, grad_inf=te.grad_inf))
    # 3. matrix-free finishes (what "auto" runs above the dense threshold), from the same warm-up point
    t_lb, lb = timed(lambda: minimise(L, warm, grad_tol=TOL, warmup=False, method="lbfgs"), max_repeats=1)
    t_kr, kr = timed(lambda: minimise(L, warm, grad_tol=TOL, warmup=False, method="lbfgs+krylov"), max_repeats=1)
    rows.append(dict(base, method="L-BFGS + Krylov trust region (matrix-free)", seconds=t_kr,
                     ratio=t_lb / t_kr if (lb.converged and kr.converged) else None, baseline="L-BFGS alone",
                     agreement=(f"ours {'reached' if kr.converged else 'missed'}, L-BFGS "
                                f"{'reached' if lb.converged else 'missed'} 1e-10; {loss_agreement(kr.loss, tr.loss)} "
                                f"against the dense trust region"),
                     note=f"|g| {fmt_g(kr.grad_inf)}, {kr.stop_reason}; {kr.iterations['second_order']} iterations, "
                          f"{kr.info.get('hvps', 0)} HVPs", converged=kr.converged, grad_inf=kr.grad_inf))
    rows.append(dict(base, method="L-BFGS alone", seconds=t_lb,
                     note=f"|g| {fmt_g(lb.grad_inf)}, {lb.stop_reason}; {lb.iterations['second_order']} iterations",
                     converged=lb.converged, grad_inf=lb.grad_inf))
    return rows


def check(width: int = 3) -> dict:
    """Correctness only: minimise on toy width `width` reaches 1e-10 (measured at the returned point)."""
    L, theta0 = Case(f"toy 2-{width}-1", "toy", width).landscape()
    res = minimise(L, theta0, grad_tol=TOL)
    return {"converged": res.converged, "grad_inf": ginf(L, res.theta)[1], "stop_reason": res.stop_reason}


def warm_up() -> None:
    L, theta0 = Case("warm-up", "toy", 2).landscape()
    warm = minimise(L, theta0, adam_steps=50, max_iter=0).theta
    minimise(L, warm, warmup=False, max_iter=3)
    minimise(L, warm, warmup=False, method="trust-exact", max_iter=3)
    scipy_trust_exact_autodiff(L, warm, 5.0, max_iter=3)
    adam_alone(L, theta0, 0.05)


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(2)
    warm_up()
    rows = []
    for case in cases(quick):
        rows += run_case(case)
    return rows + ([] if quick else matrix_free_rows())


def matrix_free_rows(max_iter: int = 400) -> list[dict]:
    """The case where L-BFGS does not certify within max_iter: toy 2-6-1, seed 0, from its initial point
    (tests/test_minimize.py checks the same): L-BFGS alone against "auto" above a dense threshold of 10."""
    L, theta0 = Case("toy 2-6-1", "toy", 6).landscape()
    base = dict(benchmark="minimise", case=f"toy 2-6-1, max_iter {max_iter}", P=L.n_params,
                threads=torch.get_num_threads())
    t_lb, lb = timed(lambda: minimise(L, theta0, grad_tol=TOL, max_iter=max_iter, method="lbfgs"), max_repeats=1)
    t_kr, kr = timed(lambda: minimise(L, theta0, grad_tol=TOL, max_iter=max_iter, dense_max_params=10),
                     max_repeats=1)
    dense = minimise(L, theta0, grad_tol=TOL, max_iter=max_iter)
    return [dict(base, method="L-BFGS + Krylov trust region (matrix-free)", seconds=t_kr, baseline="L-BFGS alone",
                 agreement=(f"ours {'reached' if kr.converged else 'missed'}, L-BFGS "
                            f"{'reached' if lb.converged else 'missed'} 1e-10; {loss_agreement(kr.loss, dense.loss)} "
                            f"against the dense trust region"),
                 note=f"|g| {fmt_g(kr.grad_inf)}, {kr.stop_reason}; {kr.iterations['second_order']} iterations, "
                      f"{kr.info.get('hvps', 0)} HVPs", converged=kr.converged, grad_inf=kr.grad_inf),
            dict(base, method="L-BFGS alone", seconds=t_lb,
                 note=f"|g| {fmt_g(lb.grad_inf)}, {lb.stop_reason}; {lb.iterations['second_order']} iterations",
                 converged=lb.converged, grad_inf=lb.grad_inf)]


def targets(rows: list[dict]) -> list[str]:
    """No numeric target in issue 6: report whether each method reached 1e-10 and the speed-ups."""
    ours = [r for r in rows if r["method"].startswith("minimise")]
    tr = [r for r in rows if r["method"].startswith("trust region")]
    out = [("MET" if all(r["converged"] for r in ours) else "NOT MET")
           + ": minimise reaches |grad|_inf <= 1e-10 in every case — "
           + ", ".join(f"{r['case']}: {r['seconds']:.2f} s" for r in ours) + "."]
    out.append("Adam alone in the same wall time: " + "; ".join(
        f"{r['case']}: {r['agreement']}" for r in ours) + ".")
    out.append("Trust region (structured H) vs scipy trust-exact + torch.func Hessian from the warm-up point: "
               + ", ".join(f"{r['case']}: " + (f"{r['ratio']:.1f}x" if r.get("ratio") else "baseline missed 1e-10")
                           for r in tr) + ".")
    mf = [r for r in rows if r["method"].startswith("L-BFGS + Krylov")]
    lb = {r["case"]: r for r in rows if r["method"] == "L-BFGS alone"}
    if mf:
        out.append("Matrix-free finish (issue 12: certifies where L-BFGS does not): " + "; ".join(
            f"{r['case']}: L-BFGS + Krylov {'reached' if r['converged'] else 'missed'} 1e-10 "
            f"(|g| {fmt_g(r['grad_inf'])}), L-BFGS alone {'reached' if lb[r['case']]['converged'] else 'missed'} it "
            f"(|g| {fmt_g(lb[r['case']]['grad_inf'])})" for r in mf) + ".")
    return out
