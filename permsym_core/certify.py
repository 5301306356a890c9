"""Certifying a critical point: Newton polishing on the exact Hessian, and saddles certified by escape.

- `polish(landscape, theta)`: Newton steps theta - H^+ g on the exact dense Hessian (pseudo-inverse over the
  eigenvalues above a cut of ZERO_CUTS x max|lambda|, so exact flat directions are left alone), each kept only
  when it lowers |grad|_inf, until the gradient stops falling. At a certified point (|grad|_inf <= 1e-10) one or two
  steps reach the round-off floor (~1e-16), so the zero tolerance tau is set by round-off, not by how close
  the minimiser happened to stop. Returns the point, its gradient, the Hessian at it (already built) and the
  Newton correction still left there; `hessian_shift` turns that correction into the measured gradient part
  of tau: ||H(theta + delta) - H(theta)||_2 bounds how far any eigenvalue moves to the exact point (Weyl).
- `escape(landscape, theta, eigenvalues, eigenvectors, tau)`: along each negative eigenvector v (lambda <
  -tau), the loss at theta +- eps v for two step sizes eps and eps/2. The symmetric second difference
  (L(+) + L(-))/2 - L(0) must equal 0.5 lambda eps^2 within ESCAPE_RTOL at both sizes (the odd terms of the
  Taylor series, the gradient's included, cancel in it), and the lower of L(+), L(-) must lie below L(0) by
  at least that predicted drop's half. The step size is the largest of a halving ladder at which the
  quadratic model holds; a direction where none does is reported uncertified: the point is then not counted
  as a saddle.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

EPS = float(np.finfo(np.float64).eps)
ZERO_CUTS = (1e-12, 1e-9, 1e-6)   # Newton pseudo-inverse: eigenvalues below a cut x max|lambda| are left out
POLISH_MAX_STEPS = 8
ESCAPE_RTOL = 0.1         # measured symmetric drop within 10 % of 0.5 lambda eps^2, at eps and eps/2
ESCAPE_MAX_DIRECTIONS = None   # every negative direction (a cap leaves the saddle uncertified)
ESCAPE_MIN_REL_DROP = 1e-9   # the predicted drop must be at least this x |L| (far above the loss's round-off)


@dataclass
class Polished:
    theta: Tensor
    loss: float
    grad_inf: float
    grad_inf_before: float
    steps: int
    hessian: Tensor
    newton_step: Tensor          # the Newton correction still left at theta (what a further step would do)

    def info(self) -> dict:
        return {"grad_inf_before": self.grad_inf_before, "grad_inf_after": self.grad_inf, "newton_steps": self.steps,
                "newton_step_norm": float(self.newton_step.norm())}


def _newton_steps(H: Tensor, g: Tensor) -> list[Tensor]:
    """-H^+ g over the eigenvalues above each cut of ZERO_CUTS (x max|lambda|), most inclusive first."""
    lam, V = torch.linalg.eigh(H)
    gt = V.T @ g
    top = float(lam.abs().max()) if lam.numel() else 0.0
    out = []
    for cut in ZERO_CUTS:
        keep = lam.abs() > cut * top
        inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
        out.append(-(V @ (inv * gt)))
    return out


def polish(landscape, theta: Tensor, max_steps: int = POLISH_MAX_STEPS) -> Polished:
    """Newton steps on the exact Hessian while they lower |grad|_inf (see the module docstring). Each step
    tries the pseudo-inverse with the cuts of ZERO_CUTS in turn (a point on a manifold of critical points has
    eigenvalues ~1e-10 x max|lambda| whose inverses only add noise) and keeps the first that helps."""
    th = landscape.as_theta(theta).detach().clone()
    loss, g = landscape.loss_grad(th)
    g0 = ginf = float(g.abs().max())
    H = landscape.hessian(th)
    steps = 0
    cands = _newton_steps(H, g)
    for _ in range(max_steps):
        if ginf == 0.0:
            break
        for step in cands:
            new = th + step
            loss_n, g_n = landscape.loss_grad(new)
            ginf_n = float(g_n.abs().max())
            if math.isfinite(loss_n) and ginf_n < ginf:
                break
        else:
            break
        th, loss, g, ginf = new, loss_n, g_n, ginf_n
        H = landscape.hessian(th)
        cands = _newton_steps(H, g)
        steps += 1
    return Polished(theta=th, loss=float(loss), grad_inf=ginf, grad_inf_before=g0, steps=steps, hessian=H,
                    newton_step=cands[0])


def hessian_shift(landscape, theta: Tensor, theta_next: Tensor, H: Tensor | None = None) -> float:
    """||H(theta_next) - H(theta)||_2: with theta_next the Newton-corrected point, the furthest any eigenvalue
    moves on the way to the exact critical point (Weyl), i.e. the gradient part of the zero tolerance."""
    H0 = landscape.hessian(theta) if H is None else H
    D = landscape.hessian(theta_next) - H0
    return float(torch.linalg.eigvalsh(0.5 * (D + D.T)).abs().max()) if D.numel() else 0.0


@dataclass
class Escape:
    """The escape test at one point: one entry per checked negative direction."""

    certified: bool
    n_negative: int
    n_checked: int
    directions: list = field(default_factory=list)   # {lambda, eps, predicted, measured, rel_err, drop, ok}
    rtol: float = ESCAPE_RTOL

    def to_dict(self) -> dict:
        return asdict(self)


def _direction(landscape, theta: Tensor, loss0: float, lam: float, v: Tensor, scale: float) -> dict:
    """Find the largest step of a halving ladder where the quadratic model 0.5 lam eps^2 holds at eps and
    eps/2; report the first step that works, or the best attempt."""
    floor = ESCAPE_MIN_REL_DROP * max(abs(loss0), 1e-300)
    eps = min(0.1 * scale, math.sqrt(2.0 * max(1e-4 * abs(loss0), floor) / abs(lam)))
    best = None
    for _ in range(40):
        out = []
        for e in (eps, 0.5 * eps):
            lp, lm = landscape.loss(theta + e * v), landscape.loss(theta - e * v)
            pred = 0.5 * lam * e * e
            meas = 0.5 * (lp + lm) - loss0
            out.append({"eps": e, "predicted": pred, "measured": meas, "rel_err": abs(meas / pred - 1.0),
                        "drop": min(lp, lm) - loss0})
        ok = all(o["rel_err"] <= ESCAPE_RTOL and o["drop"] <= 0.5 * o["predicted"] for o in out)
        row = {"lambda": lam, **out[0], "rel_err_half": out[1]["rel_err"], "ok": ok}
        if ok:
            return row
        if best is None or row["rel_err"] < best["rel_err"]:
            best = row
        if -0.5 * lam * (0.25 * eps) ** 2 < floor:        # the next halving would sink into round-off
            break
        eps *= 0.5
    return best


def escape(landscape, theta: Tensor, eigenvalues: Tensor, eigenvectors: Tensor, tau: float,
           max_directions: int | None = ESCAPE_MAX_DIRECTIONS) -> Escape:
    """Check the predicted loss drop along each negative eigenvector (lambda < -tau); see the module doc."""
    th = landscape.as_theta(theta)
    lam = eigenvalues.detach()
    neg = torch.nonzero(lam < -tau).flatten().tolist()
    loss0 = landscape.loss(th)
    scale = max(1.0, float(th.abs().max()))
    chosen = neg if max_directions is None else neg[:max_directions]
    dirs = [_direction(landscape, th, loss0, float(lam[i]), eigenvectors[:, i], scale) for i in chosen]
    return Escape(certified=bool(neg) and len(dirs) == len(neg) and all(d["ok"] for d in dirs),
                  n_negative=len(neg), n_checked=len(dirs),
                  directions=dirs)
