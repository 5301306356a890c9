"""The string method of permsym_core.paths on many paths at once: every path of a trial starts at theta*, so
all of them are relaxed together, each iteration one batched loss-and-gradient call over every image of every
path still moving (permsym_core.batched) and one batched preconditioner solve.

The arithmetic is that of paths.string_path, path by path (the same steps, trust radii, acceptance and
reparametrisation; a path stops on its own when it has no descent step left), which stays as the reference
the tests compare against. The preconditioners are those of paths._preconditioner. "local" (what "auto",
the trial's choice, picks for P <= 400) builds the Hessians of all images in one batched call
(batched.batched_hessians) and factorises them in one batched eigh, every `refresh` iterations
(paths.PATH_REFRESH in a trial); "ends" needs one Hessian at theta* for all paths and one per path at its
permutation point.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .batched import batched_hessians, batched_loss, batched_loss_grad, chunk_elems
from .hessian import dense_fits
from .landscape import Landscape
from .paths import LOCAL_SHIFT, PRECONDITIONERS, SHARED_SHIFT, HalfPath, _lambda_max
from .threads import landscape_threads

GROUP_ELEMS = 1 << 26      # trace_halves relaxes paths in groups whose per-image factors (P x P) total at most this


def _tangents(images: Tensor, energies: Tensor) -> Tensor:
    """paths._tangents with a leading path dimension: images (B, n, P), energies (B, n) -> (B, n-2, P)."""
    fwd = images[:, 2:] - images[:, 1:-1]
    bwd = images[:, 1:-1] - images[:, :-2]
    e_prev, e, e_next = energies[:, :-2], energies[:, 1:-1], energies[:, 2:]
    up = ((e_next > e) & (e > e_prev))[..., None]
    down = ((e_next < e) & (e < e_prev))[..., None]
    dmax = torch.maximum((e_next - e).abs(), (e_prev - e).abs())[..., None]
    dmin = torch.minimum((e_next - e).abs(), (e_prev - e).abs())[..., None]
    mixed = torch.where((e_next > e_prev)[..., None], fwd * dmax + bwd * dmin, fwd * dmin + bwd * dmax)
    tau = torch.where(up, fwd, torch.where(down, bwd, mixed))
    return tau / tau.norm(dim=2, keepdim=True).clamp_min(1e-300)


def perp_grads(images: Tensor, losses: Tensor, grads: Tensor) -> Tensor:
    """Per path, max over interior images of |g - (g . tau) tau|_inf (paths._perp_grad); zeros without any."""
    if images.shape[1] < 3:
        return images.new_zeros(images.shape[0])
    tau = _tangents(images, losses)
    g = grads[:, 1:-1]
    return (g - (g * tau).sum(2, keepdim=True) * tau).abs().amax((1, 2))


def _reparametrise(images: Tensor) -> Tensor:
    """paths._reparametrise per path: images (B, n, P) at equal arc length, ends fixed."""
    B, n, _ = images.shape
    seg = (images[:, 1:] - images[:, :-1]).norm(dim=2)
    s = torch.cat([seg.new_zeros(B, 1), seg.cumsum(1)], dim=1)
    total = s[:, -1:]
    frac = torch.linspace(0, 1, n, dtype=images.dtype, device=images.device)[None]
    target = torch.where(frac == 1.0, total, frac * total)
    idx = torch.searchsorted(s.contiguous(), target.contiguous()).clamp(1, n - 1)
    s_lo, s_hi = s.gather(1, idx - 1), s.gather(1, idx)
    w = ((target - s_lo) / (s_hi - s_lo).clamp_min(1e-300))[..., None]
    lo = images.gather(1, (idx - 1)[..., None].expand_as(images))
    hi = images.gather(1, idx[..., None].expand_as(images))
    out = (1 - w) * lo + w * hi
    out[:, 0], out[:, -1] = images[:, 0], images[:, -1]
    return torch.where((total == 0.0)[..., None], images, out)


def _abs_factors(H: Tensor, rel_shift: float) -> tuple[Tensor, Tensor]:
    """Eigenvectors V (.., P, P) and 1 / (|lambda| + rel_shift max|lambda|) (.., P) of (a batch of) H."""
    eigs, vecs = torch.linalg.eigh(H)
    a = eigs.abs()
    return vecs, 1.0 / (a + rel_shift * a.amax(-1, keepdim=True))


def _solve(V: Tensor, inv: Tensor, g: Tensor) -> Tensor:
    """V diag(inv) V^T g for g (B, m, P), V (P, P) or (B, P, P)."""
    return ((g @ V) * inv[..., None, :]) @ V.transpose(-1, -2)


def _preconditioner(landscape: Landscape, start: Tensor, ends: Tensor, mode: str, n_images: int, refresh: int = 1):
    """(rows, images (b, m, P), g (b, m, P)) -> M^{-1} g for the paths `rows` (see paths._preconditioner)."""
    if mode not in PRECONDITIONERS:
        raise ValueError(f"precond: expected one of {', '.join(PRECONDITIONERS)}, got {mode!r}")
    P = start.numel()
    if mode == "auto":
        mode = "local" if P <= 400 else ("start" if P <= 4000 and dense_fits(P, start.device) else "scalar")
    elif mode != "scalar" and not dense_fits(P, start.device):
        mode = "scalar"
    if mode == "local":
        step = max(1, chunk_elems(start.device) // (P * P))
        B, m = ends.shape[0], n_images - 2
        V = start.new_zeros(B, m, P, P)
        inv = start.new_zeros(B, m, P)
        state = {"calls": 0}

        def local(rows, images, g):
            if state["calls"] % refresh == 0:        # every path still moving is at the same iteration
                x = images.reshape(-1, P)
                Vs, invs = [], []
                for a in range(0, x.shape[0], step):
                    Va, ia = _abs_factors(batched_hessians(landscape, x[a:a + step]), LOCAL_SHIFT)
                    Vs.append(Va), invs.append(ia)
                V[rows] = torch.cat(Vs).reshape(-1, m, P, P)
                inv[rows] = torch.cat(invs).reshape(-1, m, P)
            state["calls"] += 1
            return _solve(V[rows].reshape(-1, P, P), inv[rows].reshape(-1, P), g.reshape(-1, 1, P)).reshape(g.shape)
        return local
    if mode == "start":
        V0, inv0 = _abs_factors(landscape.hessian(start), SHARED_SHIFT)
        return lambda rows, images, g: _solve(V0, inv0, g)
    if mode == "ends":
        V0, inv0 = _abs_factors(landscape.hessian(start), LOCAL_SHIFT)
        V1, inv1 = _abs_factors(torch.stack([landscape.hessian(e) for e in ends]), LOCAL_SHIFT)
        t = torch.arange(1, n_images - 1, dtype=start.dtype, device=start.device)[None, :, None] / (n_images - 1)
        return lambda rows, images, g: (1 - t) * _solve(V0, inv0, g) + t * _solve(V1[rows], inv1[rows], g)
    lam_max = max(_lambda_max(landscape, start), 1e-12)
    return lambda rows, images, g: g / lam_max


def _evaluate(landscape: Landscape, images: Tensor) -> tuple[Tensor, Tensor]:
    B, n, P = images.shape
    losses, grads = batched_loss_grad(landscape, images.reshape(B * n, P))
    return losses.reshape(B, n), grads.reshape(B, n, P)


def string_paths(landscape: Landscape, start: Tensor, ends: Tensor, n_images: int = 21, iters: int = 60,
                 precond: str = "auto", refresh: int = 1) -> tuple[Tensor, Tensor, list[dict]]:
    """paths.string_path from `start` to each row of ends (B, P), all at once. Returns images (B, n, P),
    losses (B, n) and one info dict per path (the keys of string_path's)."""
    start = landscape.as_theta(start)
    ends = landscape.as_theta(ends)
    B = ends.shape[0]
    ts = torch.linspace(0, 1, n_images, dtype=start.dtype, device=start.device)[None, :, None]
    images = (1 - ts) * start + ts * ends[:, None]
    pre = _preconditioner(landscape, start, ends, precond, n_images, refresh)
    losses, grads = _evaluate(landscape, images)
    spacing = (ends - start).norm(dim=1) / (n_images - 1)
    radius = (0.5 * spacing)[:, None, None].expand(B, n_images - 2, 1).clone()
    iterations = torch.full((B,), iters, dtype=torch.long)
    active = torch.ones(B, dtype=torch.bool, device=start.device)
    for it in range(1, iters + 1):
        stop = active & (radius.amax((1, 2)) < 1e-10 * spacing)
        iterations[stop.cpu()] = it
        active &= ~stop
        rows = active.nonzero().flatten()
        if rows.numel() == 0:
            break
        img, g, rad, ls, sp = images[rows], grads[rows], radius[rows], losses[rows], spacing[rows][:, None, None]
        step = pre(rows, img[:, 1:-1], g[:, 1:-1])
        step = step * (rad / step.norm(dim=2, keepdim=True).clamp_min(1e-300)).clamp_max(1.0)
        trial = img.clone()
        trial[:, 1:-1] = img[:, 1:-1] - step
        b, m = rows.numel(), n_images - 2
        new_losses = batched_loss(landscape, trial[:, 1:-1].reshape(b * m, -1)).reshape(b, m)
        ok = (torch.isfinite(new_losses) & (new_losses <= ls[:, 1:-1]))[..., None]
        rad = torch.where(ok, torch.minimum(1.5 * rad, sp), 0.5 * rad)
        trial[:, 1:-1] = torch.where(ok, trial[:, 1:-1], img[:, 1:-1])
        img = _reparametrise(trial)
        new_l, new_g = _evaluate(landscape, img)
        images[rows], losses[rows], grads[rows], radius[rows] = img, new_l, new_g, rad
    if iters == 0:
        iterations[:] = 0
    perp = perp_grads(images, losses, grads).tolist()
    stalled = (radius.amax((1, 2)) < 1e-10 * spacing).tolist()
    infos = [{"method": "string", "iterations": int(iterations[b]), "max_perp_grad": float(perp[b]),
              "stalled": bool(stalled[b]), "image_spacing": float(spacing[b])} for b in range(B)]
    return images, losses.detach(), infos


def trace_halves(landscape: Landscape, theta_star: Tensor, points: Tensor, n_images: int, relax: bool = True,
                 iters: int = 60, precond: str = "auto", refresh: int = 1) -> list[HalfPath]:
    """paths.trace_half for every row of points (B, P), the straight lines and the string method batched (in
    groups of paths small enough that the local preconditioner's stored eigenvectors stay under GROUP_ELEMS)."""
    theta_star = landscape.as_theta(theta_star)
    points = landscape.as_theta(points)
    ts = torch.linspace(0, 1, n_images, dtype=theta_star.dtype, device=theta_star.device)[None, :, None]
    straight = (1 - ts) * theta_star + ts * points[:, None]
    s_losses, s_grads = _evaluate(landscape, straight)
    s_perp = perp_grads(straight, s_losses, s_grads).tolist()
    s_list = s_losses.tolist()
    if not relax:
        return [HalfPath(straight[b], s_list[b], None, s_list[b], s_perp[b], s_perp[b])
                for b in range(points.shape[0])]
    P = points.shape[1]
    group = max(1, GROUP_ELEMS // max((n_images - 2) * P * P, 1))     # the local factors of a group fit
    out = []
    for a in range(0, points.shape[0], group):
        with landscape_threads(landscape, batch=min(group, points.shape[0] - a) * n_images):
            images, losses, infos = string_paths(landscape, theta_star, points[a:a + group], n_images, iters,
                                                 precond, refresh)
        l_list = losses.tolist()
        out += [HalfPath(images[b], l_list[b], infos[b], s_list[a + b], s_perp[a + b], infos[b]["max_perp_grad"])
                for b in range(images.shape[0])]
    return out
