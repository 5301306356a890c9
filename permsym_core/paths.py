"""Equal-loss paths between partner minima: theta* -> permutation point -> P_ij theta*.

The first half runs from the trained network theta* to the permutation point built by merging its neurons
i and j (the merged neuron duplicated back into slots i and j). It starts as a straight line and is relaxed
into a minimum-energy path by the simplified string method (preconditioned, both ends fixed). The second half
is its mirror image under the exchange of i and j, so the whole path is symmetric and ends at the partner
minimum.

What makes a path relaxed is measured, not assumed: the largest gradient component perpendicular to the
path over its interior images (`max_perp_grad`) against a stated tolerance, PERP_GRAD_RTOL x the straight
line's (`perp_grad_tol`), giving `relaxed_converged`; the barrier beside the straight line's; and whether the
highest image is the permutation point (expected of a minimum-energy path when that point is a first-order
saddle). A straight (unrelaxed) path has max_perp_grad = the straight line's and never passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import surgery
from .landscape import Landscape

PERP_GRAD_RTOL = 0.1        # relaxed: perpendicular gradient below this fraction of the straight line's
BARRIER_RTOL = 1e-12        # round-off allowed when comparing the barrier with the straight line's


def _tangents(images: Tensor, energies: Tensor) -> Tensor:
    """Improved (energy-weighted upwind) tangents of the interior images, normalised."""
    fwd = images[2:] - images[1:-1]
    bwd = images[1:-1] - images[:-2]
    e_prev, e, e_next = energies[:-2], energies[1:-1], energies[2:]
    up = (e_next > e) & (e > e_prev)
    down = (e_next < e) & (e < e_prev)
    dmax = torch.maximum((e_next - e).abs(), (e_prev - e).abs())
    dmin = torch.minimum((e_next - e).abs(), (e_prev - e).abs())
    mixed = torch.where((e_next > e_prev)[:, None], fwd * dmax[:, None] + bwd * dmin[:, None],
                        fwd * dmin[:, None] + bwd * dmax[:, None])
    tau = torch.where(up[:, None], fwd, torch.where(down[:, None], bwd, mixed))
    return tau / tau.norm(dim=1, keepdim=True).clamp_min(1e-300)


def _batched_loss_grad(landscape: Landscape):
    """images (M, P) -> (losses (M,), grads (M, P)) in one vectorised pass (torch.func.vmap)."""
    from torch.func import grad_and_value, vmap

    from .autodiff import loss_fn

    f = vmap(grad_and_value(loss_fn(landscape)))

    def evaluate(images: Tensor) -> tuple[Tensor, Tensor]:
        grads, losses = f(images)
        return losses, grads

    return evaluate


PRECONDITIONERS = ("auto", "local", "start", "ends", "scalar")
PATH_PRECONDITIONER = "auto"      # what a trial uses (permsym_core.study); see _preconditioner
PATH_REFRESH = 10                 # ... and how often its per-image Hessians are rebuilt (iterations)
LOCAL_SHIFT, SHARED_SHIFT = 1e-8, 1e-6     # M = |H| + shift * max|lambda| I


def _abs_solver(H: Tensor, rel_shift: float):
    """g -> (|H| + rel_shift max|lambda| I)^{-1} g (absolute eigenvalues, as in saddle-free Newton)."""
    eigs, vecs = torch.linalg.eigh(H)
    scale = eigs.abs() + rel_shift * float(eigs.abs().max())
    return lambda g: (g @ vecs) / scale @ vecs.T


def _preconditioner(landscape: Landscape, theta: Tensor, local_max_P: int = 400, mode: str = "auto",
                    end: Tensor | None = None, refresh: int = 1):
    """(images, g) -> M^{-1} g per interior image (images[m] the (m+1)-th of n, both ends excluded).

    mode "local": M = |H(image)| + LOCAL_SHIFT lambda_max I per image (a dense Hessian and eigh per image and
    iteration, or, with refresh R > 1, rebuilt at the images of every R-th call only and kept in between);
    "start": M = |H(theta)| + SHARED_SHIFT lambda_max I for every image (the preconditioned NEB of
    Makri, Ortner and Kermode 2019); "ends": M^{-1} = (1 - t) M_start^{-1} + t M_end^{-1}, t = m / (n - 1) the
    image's place on the path, M_x = |H(x)| + LOCAL_SHIFT lambda_max I at the path's two ends (two Hessians per
    path, the start's shared by every path from theta*: SPD, and |H| of the saddle where the string crosses
    it); "scalar": 1/lambda_max(theta). "auto" (the former rule): local for P <= local_max_P, start up to
    P = 4000 when dense fits, scalar beyond. A dense mode falls back to scalar when the Hessian does not fit."""
    from .hessian import dense_fits

    if mode not in PRECONDITIONERS:
        raise ValueError(f"precond: expected one of {', '.join(PRECONDITIONERS)}, got {mode!r}")
    P = theta.numel()
    if mode == "auto":
        mode = "local" if P <= local_max_P else ("start" if P <= 4000 and dense_fits(P, theta.device) else "scalar")
    elif mode != "scalar" and not dense_fits(P, theta.device):
        mode = "scalar"
    if mode == "local":
        state = {"calls": 0, "solvers": None}

        def solve_local(images, g):
            if state["calls"] % refresh == 0:
                state["solvers"] = [_abs_solver(landscape.hessian(x), LOCAL_SHIFT) for x in images]
            state["calls"] += 1
            return torch.stack([solve(gi) for solve, gi in zip(state["solvers"], g)])
        return solve_local
    if mode == "start":
        solve = _abs_solver(landscape.hessian(theta), SHARED_SHIFT)
        return lambda images, g: solve(g)
    if mode == "ends":
        if end is None:
            raise ValueError("precond 'ends': the path's end point is needed")
        s0, s1 = _abs_solver(landscape.hessian(theta), LOCAL_SHIFT), _abs_solver(landscape.hessian(end), LOCAL_SHIFT)

        def solve_ends(images, g):
            n = images.shape[0] + 2
            t = torch.arange(1, n - 1, dtype=g.dtype, device=g.device)[:, None] / (n - 1)
            return (1 - t) * s0(g) + t * s1(g)
        return solve_ends
    lam_max = max(_lambda_max(landscape, theta), 1e-12)
    return lambda images, g: g / lam_max


def _reparametrise(images: Tensor) -> Tensor:
    """The same polyline with its images at equal arc length (ends fixed)."""
    seg = (images[1:] - images[:-1]).norm(dim=1)
    s = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    if float(s[-1]) == 0.0:
        return images
    target = torch.linspace(0, float(s[-1]), images.shape[0], dtype=images.dtype, device=images.device)
    idx = torch.searchsorted(s, target).clamp(1, images.shape[0] - 1)
    w = ((target - s[idx - 1]) / (s[idx] - s[idx - 1]).clamp_min(1e-300))[:, None]
    out = (1 - w) * images[idx - 1] + w * images[idx]
    out[0], out[-1] = images[0], images[-1]
    return out


def string_path(landscape: Landscape, start: Tensor, end: Tensor, n_images: int = 21, iters: int = 60,
                precond: str = "auto", refresh: int = 1) -> tuple[Tensor, Tensor, dict]:
    """Relax the straight line start -> end (both fixed) into a minimum-energy path by the simplified string
    method (E, Ren and Vanden-Eijnden 2007): a preconditioned descent step of every interior image, each kept
    only when it lowers that image's loss (its own trust radius shrinks otherwise), then reparametrisation to
    equal arc length. Returns (images, losses, info): info has the iterations, whether it stopped for want of a
    descent step (stalled), and the largest gradient component perpendicular to the path that remains.
    precond: see _preconditioner. This is the one-path reference; permsym_core.strings relaxes many paths in
    one batch, the same arithmetic."""
    ts = torch.linspace(0, 1, n_images, dtype=start.dtype, device=start.device)[:, None]
    images = (1 - ts) * start + ts * end
    evaluate = _batched_loss_grad(landscape)
    precond = _preconditioner(landscape, start, mode=precond, end=end, refresh=refresh)
    losses, grads = evaluate(images)
    spacing = float((end - start).norm()) / (n_images - 1)
    radius = torch.full((n_images - 2, 1), 0.5 * spacing, dtype=start.dtype, device=start.device)
    it = 0
    for it in range(1, iters + 1):
        if float(radius.max()) < 1e-10 * spacing:
            break                                   # no descent step left: relaxed as far as n_images allow
        step = precond(images[1:-1], grads[1:-1])
        step = step * (radius / step.norm(dim=1, keepdim=True).clamp_min(1e-300)).clamp_max(1.0)
        trial = images.clone()
        trial[1:-1] = images[1:-1] - step
        new_losses, _ = evaluate(trial)
        ok = (torch.isfinite(new_losses[1:-1]) & (new_losses[1:-1] <= losses[1:-1]))[:, None]
        radius = torch.where(ok, (1.5 * radius).clamp_max(spacing), 0.5 * radius)
        trial[1:-1] = torch.where(ok, trial[1:-1], images[1:-1])     # each image keeps only its own descent
        images = _reparametrise(trial)
        losses, grads = evaluate(images)
    info = {"method": "string", "iterations": it, "max_perp_grad": _perp_grad(images, losses, grads),
            "stalled": float(radius.max()) < 1e-10 * spacing, "image_spacing": spacing}
    return images, losses.detach(), info


def _perp_grad(images: Tensor, losses: Tensor, grads: Tensor) -> float:
    """max over the interior images of |g - (g . tau) tau|_inf (tau: the upwind tangent); 0 without any."""
    if images.shape[0] < 3:
        return 0.0
    tau = _tangents(images, losses)
    g = grads[1:-1]
    return float((g - (g * tau).sum(1, keepdim=True) * tau).abs().max())


def perp_grad(landscape: Landscape, images: Tensor) -> float:
    """The largest gradient component perpendicular to the polyline `images` at its interior images."""
    losses, grads = _batched_loss_grad(landscape)(images)
    return _perp_grad(images, losses, grads)


def _lambda_max(landscape: Landscape, theta: Tensor, iters: int = 30) -> float:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(theta.numel(), generator=gen, dtype=theta.dtype).to(theta.device)
    lam = 0.0
    for _ in range(iters):
        v = v / v.norm()
        hv = landscape.hvp(theta, v)
        lam = float(v @ hv)
        v = hv
    return abs(lam)


@dataclass
class HalfPath:
    """theta* -> permutation point: the images (both ends included), their losses, the string method's state
    (None when not relaxed), and the straight line's losses and perpendicular gradient."""

    images: Tensor
    losses: list[float]
    string: dict | None
    straight_losses: list[float]
    straight_perp_grad: float
    perp_grad: float


def trace_half(landscape: Landscape, theta_star: Tensor, point: Tensor, n_images: int, relax: bool = True,
               iters: int = 60, precond: str = "auto", refresh: int = 1) -> HalfPath:
    """The first half of a permutation path: the straight line theta* -> point, relaxed by string_path when
    `relax`, with the straight line's measurements beside it."""
    ts = torch.linspace(0, 1, n_images, dtype=theta_star.dtype, device=theta_star.device)[:, None]
    straight = (1 - ts) * theta_star + ts * point
    s_losses, s_grads = _batched_loss_grad(landscape)(straight)
    s_perp = _perp_grad(straight, s_losses, s_grads)
    s_losses = [float(v) for v in s_losses]
    if not relax:
        return HalfPath(straight, s_losses, None, s_losses, s_perp, s_perp)
    images, losses, info = string_path(landscape, theta_star, point, n_images=n_images, iters=iters,
                                     precond=precond, refresh=refresh)
    return HalfPath(images, [float(v) for v in losses], info, s_losses, s_perp, info["max_perp_grad"])


def path_record(landscape: Landscape, half: HalfPath, layer: int, pair: tuple[int, int]) -> dict:
    """The record of theta* -> point -> P_ij theta* (the second half the mirror image of `half`)."""
    spec = landscape.spec
    from .batched import batched_loss

    index = torch.arange(spec.n_params, dtype=half.images.dtype, device=half.images.device)
    swapped = surgery.swap(spec, index, layer, *pair).long()      # P_ij as a gather of parameters
    mirrored = half.images.flip(0)[1:][:, swapped]
    all_losses = half.losses + batched_loss(landscape, mirrored).tolist()
    barrier = max(all_losses) - all_losses[0]
    straight_barrier = max(half.straight_losses) - half.straight_losses[0]
    point_loss = half.losses[-1]
    tol = PERP_GRAD_RTOL * half.straight_perp_grad
    return {
        "layer": layer,
        "pair": [int(pair[0]), int(pair[1])],
        "losses": all_losses,
        "barrier": barrier,
        "relaxed": half.string is not None,
        "string": half.string,
        "point_loss": point_loss,
        "straight_barrier": straight_barrier,
        "barrier_le_straight": bool(barrier <= straight_barrier + BARRIER_RTOL * max(abs(straight_barrier),
                                                                                    abs(point_loss))),
        "max_perp_grad": half.perp_grad,
        "straight_max_perp_grad": half.straight_perp_grad,
        "perp_grad_rtol": PERP_GRAD_RTOL,
        "perp_grad_tol": tol,
        "relaxed_converged": bool(half.string is not None and half.perp_grad <= tol),
        "highest_at_point": bool(max(half.losses) <= point_loss + BARRIER_RTOL * abs(point_loss)),
    }


def permutation_path(landscape: Landscape, theta_star: Tensor, point: Tensor, layer: int,
                     pair: tuple[int, int], n_points: int = 41, relax: bool = True, iters: int = 60) -> dict:
    """The path theta* -> point -> P_ij theta* with at least n_points losses, and its barrier."""
    half = (max(n_points, 3) + 1) // 2          # images of the first half, both ends included
    return path_record(landscape, trace_half(landscape, theta_star, point, half, relax, iters), layer, pair)
