"""The descent leg of a saddle: a measured path from a saddle down to a minimum, loss falling all the way.

From a saddle theta_p (a critical point with a negative Hessian eigenvalue), step a little along a negative
eigenvector v (the most negative first; either sign), then descend by damped Newton steps
d = -(H + mu I)^-1 g with H + mu I positive definite (a descent direction; mu -> 0 in the minimum's basin,
where the steps become Newton's and converge quadratically). A step is taken only when the loss, sampled at
SEGMENT_SAMPLES points inside the straight segment and at its end, falls all along it (to `slack`); otherwise
mu grows (shorter, more gradient-like steps), and shrinks again after each accepted step
(Levenberg-Marquardt). The leg is the polyline of the accepted points, kept with its interior samples, so its
losses are measured along the whole path, not only at its vertices. Nothing is assumed: `monotone` is
measured on the final samples, `end_converged` is the minimum's certificate (|grad|_inf <= grad_tol) and
`reaches` says whether that minimum is the reference one (theta*, up to a permutation of neurons and the
exact sign flips of permsym_core.canonical.orient).

At a saddle of index k the legs along its first min(k, max_directions) negative eigenvectors, both signs
each, are tried in order until one ends at the reference minimum; of those tried the kept one is the first
that gets there, else a monotone one before one that is not, a certified minimum before one that is not, and
then the lowest end.
Used by permsym_core.trial_paths for the first leg of theta* -> permutation point -> valley -> sigma(point) ->
sigma theta* where the relaxed string from theta* climbs above the point.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import surgery
from .canonical import orient
from .landscape import Landscape
from .minimize import dense_second_order

STEP_RTOL = 1e-3          # the first step: STEP_RTOL x max(1, |theta_p|_inf) along v, halved until the loss drops
SEGMENT_SAMPLES = 4       # interior samples per segment of the polyline
SAME_MIN_RTOL = 1e-6      # two certified minima are one when they agree to this, relative to max(1, |theta|_inf)
MU_GROW = 10.0            # damping growth after a rejected step
MAX_REJECT = 40           # rejected steps in a row before the descent gives up
END_INDEX_RTOL = 1e-8     # an eigenvalue at the end counts as negative below -END_INDEX_RTOL x max |eigenvalue|


@dataclass
class DescentLeg:
    images: Tensor            # (n, P): the minimum first, the saddle last (the orientation of a traced half)
    losses: list[float]       # the loss at each image
    eigenvalue: float         # the Hessian eigenvalue at the saddle whose eigenvector the leg leaves along
    direction: int            # which one: 0 the most negative, 1 the next, ... (see max_directions)
    sign: int                 # +1 or -1: the side of the eigenvector taken
    end_converged: bool       # the descent's end passed the gradient test (|grad|_inf <= grad_tol)
    end_grad_inf: float
    end_index: int | None     # negative Hessian eigenvalues at the end (below -END_INDEX_RTOL max|lambda|); None
    #                           when the end did not pass the gradient test
    end_is_minimum: bool      # gradient test passed and end_index == 0: a certified minimum
    reaches: bool             # the end is the reference minimum up to permutation (and exact sign flips)
    end_distance: float       # max |theta_ref - P theta_end| over the best permutation P
    monotone: bool            # the sampled losses never rise on the way down (to `slack`)

    def to_dict(self) -> dict:
        return {"eigenvalue": self.eigenvalue, "direction": self.direction, "sign": self.sign,
                "end_converged": self.end_converged,
                "end_grad_inf": self.end_grad_inf, "end_index": self.end_index,
                "end_is_minimum": self.end_is_minimum, "end_index_rtol": END_INDEX_RTOL,
                "reaches_theta_star": self.reaches,
                "end_distance": self.end_distance, "monotone": self.monotone, "n_images": len(self.losses)}


def n_negative(w: Tensor) -> int:
    """Eigenvalues below -END_INDEX_RTOL x max |eigenvalue| (the index, at this tolerance)."""
    return int((w < -END_INDEX_RTOL * float(w.abs().max())).sum())


def _segment(x: Tensor, d: Tensor, samples: int) -> Tensor:
    """`samples` evenly spaced points inside x -> x + d, and its end."""
    ts = torch.linspace(0, 1, samples + 2, dtype=x.dtype, device=x.device)[1:, None]
    return x + ts * d


def monotone_descent(landscape: Landscape, x0: Tensor, *, grad_tol: float, max_iter: int, slack: float
                     ) -> tuple[list[Tensor], list[float], bool, float]:
    """Damped Newton from x0 with every step's segment checked to fall (module docstring). Returns (the
    sampled path: x0, then each accepted segment's samples, in order; their losses; certified; |grad|_inf
    at the end)."""
    from .batched import batched_loss

    x = x0
    loss, g = landscape.loss_grad(x)
    path, losses = [x], [float(loss)]
    damp = 0.0                      # Levenberg-Marquardt memory: grows on a rejected step, shrinks on an accepted one
    for _ in range(max_iter):
        ginf = float(g.abs().max())
        if ginf <= grad_tol:
            return path, losses, True, ginf
        w, V = torch.linalg.eigh(landscape.hessian(x))
        scale = max(float(w.abs().max()), 1e-300)
        shift = max(0.0, -float(w[0])) * 1.5 + 1e-12 * scale       # H + shift I is positive definite
        gv = V.T @ g
        for _ in range(MAX_REJECT):
            d = -(V @ (gv / (w + shift + damp)))
            seg = _segment(x, d, SEGMENT_SAMPLES)
            ls = batched_loss(landscape, seg).tolist()
            prev = [losses[-1]] + ls[:-1]
            if ls[-1] <= losses[-1] and all(b <= a + slack for a, b in zip(prev, ls)):
                damp /= MU_GROW
                break
            damp = max(damp * MU_GROW, 1e-8 * scale)
        else:
            return path, losses, False, ginf
        x = seg[-1]
        path += list(seg)
        losses += ls
        loss, g = landscape.loss_grad(x)
    return path, losses, False, float(g.abs().max())


def descent_leg(landscape: Landscape, theta_p: Tensor, theta_ref: Tensor, *, grad_tol: float = 1e-10,
                max_iter: int = 200, slack: float = 0.0, dense_max_params: int | None = None,
                max_directions: int = 1) -> DescentLeg | None:
    """The descent leg from the saddle theta_p (see the module docstring); None when the Hessian at theta_p
    has no negative eigenvalue or is too large to build densely (dense_max_params, as in the minimiser).
    `slack`: how much a sampled loss may rise over the one before it and still count as falling (the loss's
    resolution at this scale). `max_directions`: at a saddle of index k, the legs along the first
    min(k, max_directions) negative eigenvectors (most negative first), both signs each, are tried until one
    reaches the reference minimum (a higher-order saddle's unstable manifold has k dimensions; the most
    negative direction alone may lead elsewhere)."""
    from .batched import batched_loss

    spec = landscape.spec
    if not dense_second_order(theta_p.numel(), dense_max_params):
        return None
    w, V = torch.linalg.eigh(landscape.hessian(theta_p))
    if not float(w[0]) < 0:
        return None
    loss_p = landscape.loss(theta_p)
    ref = orient(spec, theta_ref)
    tol = SAME_MIN_RTOL * max(1.0, float(theta_ref.abs().max()))
    n_neg = n_negative(w) or 1
    best = None
    for i, sign in [(i, s) for i in range(min(n_neg, max(1, max_directions))) for s in (1, -1)]:
        v = V[:, i]
        eps = STEP_RTOL * max(1.0, float(theta_p.abs().max()))
        for _ in range(40):
            x0 = theta_p + sign * eps * v
            if landscape.loss(x0) < loss_p:
                break
            eps /= 2
        else:
            continue
        first = _segment(theta_p, x0 - theta_p, SEGMENT_SAMPLES)
        pts, ls, ok, ginf = monotone_descent(landscape, x0, grad_tol=grad_tol, max_iter=max_iter, slack=slack)
        images = torch.cat([theta_p[None], first[:-1], torch.stack(pts)])
        losses = [loss_p] + batched_loss(landscape, first[:-1]).tolist() + ls
        dist = surgery.distance_up_to_permutation(spec, ref, orient(spec, pts[-1]))
        end_index = None
        if ok:
            end_index = n_negative(torch.linalg.eigvalsh(landscape.hessian(pts[-1])))
        is_min = bool(ok and end_index == 0)
        leg = DescentLeg(images=images.flip(0), losses=losses[::-1], eigenvalue=float(w[i]), direction=i,
                         sign=sign,
                         end_converged=ok, end_grad_inf=ginf, end_index=end_index, end_is_minimum=is_min,
                         reaches=bool(is_min and dist <= tol),
                         end_distance=float(dist),
                         monotone=all(b <= a + slack for a, b in zip(losses[:-1], losses[1:])))
        rank = (not leg.reaches, not leg.monotone, not leg.end_is_minimum, leg.losses[0])
        if best is None or rank < best[0]:
            best = (rank, leg)
        if leg.reaches:                       # theta* itself: the other side cannot do better
            break
    return None if best is None else best[1]
