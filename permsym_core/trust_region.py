"""Trust-region steps of permsym_core.minimize: the exact subproblem in the Hessian's eigenbasis and two step
models, dense (one eigendecomposition per accepted point) and matrix-free (Steihaug-Toint CG on
Hessian-vector products). The iteration itself (acceptance, radius, stop reasons) is minimize._trust_region.
A model's `step` is a generator: it yields the Hessian or the Hessian-vector products it needs as requests to
the minimisation's driver (see minimize.minimisation).
"""
from __future__ import annotations

import math
from typing import Generator

import numpy as np
import torch
from torch import Tensor

from .mlp import DTYPE

ZERO_CURV = 1e-12           # eigenvalues below this x |lambda|_max count as zero curvature in the subproblem
Request = tuple             # what a minimisation asks its driver: ("loss_grad" | "hessian", theta) or ("hvp", theta, v)
Step = tuple                # (step p, predicted change of the loss, |p|)


class _Stop(Exception):
    """Ends a minimisation with a stop reason ("diverged", "time_limit", ...); raised by the step models too."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def subproblem(lam: np.ndarray, gt: np.ndarray, delta: float, tau: float = 0.0) -> tuple[np.ndarray, float]:
    """argmin over |c| <= delta of gt.c + c.diag(lam).c/2 (eigenbasis coordinates) and the model change.

    Eigenvalues with |lam| <= tau are below eigh's resolution and count as exactly zero: such a direction
    is then flat (exact symmetries, e.g. a softmax's shift of all logits), so the hard case never spends the
    radius on it; it only takes a step along a genuinely negative eigenvalue."""
    if tau > 0:
        lam = np.where(np.abs(lam) <= tau, 0.0, lam)
    gnorm = float(np.linalg.norm(gt))
    scale = max(float(np.abs(lam).max()), 1e-300)
    lo = max(0.0, -float(lam[0]))

    def step(mu):
        den = lam + mu
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(den > 0, -gt / den, 0.0)
        return c

    def model(c):
        return float(gt @ c + 0.5 * (lam * c * c).sum())

    if lam[0] > 0:
        c = -gt / lam
        if np.linalg.norm(c) <= delta:
            return c, model(c)
    # ||c(mu)|| decreases on (lo, inf); find ||c(mu)|| = delta, or the hard case at mu = lo.
    mu_a = 0.0 if lam[0] > 0 else lo + max(lo, scale) * 1e-14 + 1e-300
    c_a = step(mu_a)
    if lam[0] <= 0 and np.linalg.norm(c_a) < delta:   # hard case: no root above lo; add a lowest-eigenvector component
        if lo == 0.0:            # zero curvature only (flat directions): the regularised step is the answer
            return c_a, model(c_a)
        c = step(lo) if lo > 0 else c_a
        near = lam + lo <= max(lo, scale) * 1e-14
        rest = float(np.linalg.norm(c[~near]))
        c[near] = 0.0
        j = int(np.flatnonzero(near)[0]) if near.any() else 0
        c[j] = math.sqrt(max(delta ** 2 - rest ** 2, 0.0)) * (-1.0 if gt[j] > 0 else 1.0)
        return c, model(c)
    # Newton on phi(mu) = 1/|c(mu)| - 1/delta (More & Sorensen): phi is concave and increasing on (lo, inf), so
    # from mu_a (|c| > delta, phi < 0) the iterates rise monotonically to the root without overshooting;
    # bisection on [mu_a, mu_b] is the fallback should round-off stall it.
    mu_b = lo + gnorm / delta + scale
    mu = mu_a
    for _ in range(200):
        c = step(mu)
        n = float(np.linalg.norm(c))
        if abs(n - delta) <= 1e-12 * delta:
            break
        if n > delta:
            mu_a = mu
        else:
            mu_b = mu
        if mu_b - mu_a <= 1e-15 * mu_b:
            mu = mu_b
            break
        den = lam + mu
        q = float((c * c / np.where(den > 0, den, np.inf)).sum())     # -d|c|/dmu = q / |c|
        nxt = mu + (n * n / max(q, 1e-300)) * (n - delta) / delta
        mu = nxt if mu_a < nxt < mu_b else (math.sqrt(mu_a * mu_b) if mu_a > 0 and mu_b / mu_a > 4
                                            else 0.5 * (mu_a + mu_b))
    c = step(mu)
    n = float(np.linalg.norm(c))
    if n > delta:                         # the root approached from inside the round-off: land on the sphere
        c = c * (delta / n)
    elif n < delta and lam[0] < 0:        # near the hard case mu resolves to 1e-15 mu only (|c| short by up to
        rest = float(np.linalg.norm(c[1:]))   # ~1e-6): the rest goes along the lowest eigenvector, downhill
        c[0] = math.copysign(math.sqrt(max(delta ** 2 - rest ** 2, 0.0)), c[0] if c[0] != 0 else -gt[0])
    return c, model(c)


class _DenseModel:
    """The exact subproblem in the eigenbasis of the dense Hessian (one build and eigh per accepted point)."""

    def __init__(self):
        self.lam = self.V = None

    def moved(self) -> None:
        self.lam = None

    def step(self, theta: Tensor, g: Tensor, delta: float) -> Generator[Request, object, Step]:
        if self.lam is None:
            H = yield ("hessian", theta)
            if not bool(torch.isfinite(H).all()):
                raise _Stop("diverged")
            lam_t, self.V = torch.linalg.eigh(H)
            self.lam = lam_t.cpu().numpy()
        gt = (self.V.T @ g).cpu().numpy()
        c, pred = subproblem(self.lam, gt, delta, ZERO_CURV * float(np.abs(self.lam).max()))
        return self.V @ torch.as_tensor(c, dtype=DTYPE, device=self.V.device), pred, float(np.linalg.norm(c))


class _KrylovModel:
    """Matrix-free subproblem: Steihaug-Toint truncated conjugate gradients on Hessian-vector products
    (Nocedal & Wright, Algorithm 7.2), stopped at |r| <= min(0.5, sqrt|g|) |g| (superlinear near a minimum),
    on the trust-region boundary, or along a direction of non-positive curvature (left downhill)."""

    def __init__(self, max_cg: int):
        self.max_cg = max_cg
        self.hvps = 0

    def moved(self) -> None:
        pass

    @staticmethod
    def _to_boundary(z: Tensor, d: Tensor, delta: float) -> float:
        a, b, c = float(d @ d), 2.0 * float(z @ d), float(z @ z) - delta ** 2
        return (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)

    def step(self, theta: Tensor, g: Tensor, delta: float) -> Generator[Request, object, Step]:
        gnorm = float(g.norm())
        tol = min(0.5, math.sqrt(gnorm)) * gnorm
        z, Bz = torch.zeros_like(g), torch.zeros_like(g)
        r, d = g.clone(), -g
        rr = float(r @ r)
        for _ in range(self.max_cg):
            Bd = yield ("hvp", theta, d)
            self.hvps += 1
            if not bool(torch.isfinite(Bd).all()):
                raise _Stop("diverged")
            dBd = float(d @ Bd)
            if dBd <= 0 or math.sqrt(float((z + (rr / dBd) * d) @ (z + (rr / dBd) * d))) >= delta:
                t = self._to_boundary(z, d, delta)
                z, Bz = z + t * d, Bz + t * Bd
                break
            alpha = rr / dBd
            z, Bz = z + alpha * d, Bz + alpha * Bd
            r = r + alpha * Bd
            rr_new = float(r @ r)
            if math.sqrt(rr_new) <= tol:
                break
            d = -r + (rr_new / rr) * d
            rr = rr_new
        pred = float(g @ z) + 0.5 * float(z @ Bz)
        return z, pred, float(z.norm())
