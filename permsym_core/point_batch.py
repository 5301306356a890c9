"""The measurement of permsym_core.points at many points of one architecture at once: the permutation points
of a reduced point (every choice of K of its neurons) or the points of a gamma-line. Their Hessians come from
one batched build (permsym_core.batched), their spectra from one batched eigvalsh, the measured gradient part
of tau from one batched build at the Newton-corrected points and one batched eigvalsh of the differences, the
eigenvectors for the escape tests from one batched eigh over the points with index >= 1. Counts by inertia
(two LDL^T per point) and the escape's loss evaluations stay per point. `points.analyse_point`, one point at a
time, is the reference the tests compare against.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .batched import batched_hessians
from .certify import escape
from .hessian import available_bytes
from .points import PointAnalysis, analyse_point
from .spectra import _dense_fits, analyse


COPIES_PER_POINT = 6   # P x P float64 matrices alive per point: H, H_next, their difference, eigvalsh/eigh workspace


def hessian_shifts(H: Tensor, H_next: Tensor) -> list[float]:
    """certify.hessian_shift for a batch: ||H_next - H||_2 per member."""
    if H.shape[-1] == 0:
        return [0.0] * H.shape[0]
    D = H_next - H
    return torch.linalg.eigvalsh(0.5 * (D + D.transpose(1, 2))).abs().amax(1).tolist()


def analyse_points(landscape, thetas: Tensor, grad_infs: list[float], theta_nexts: Tensor | None = None,
                   max_dense_P: int | None = None, check_escape: bool = True) -> list[PointAnalysis]:
    """[points.analyse_point(landscape, thetas[b], grad_infs[b], theta_next=theta_nexts[b]) for each b],
    batched (see the module docstring); beyond the dense limit, one point at a time (Lanczos)."""
    thetas = landscape.as_theta(thetas)
    M = thetas.shape[0]
    if M == 0:
        return []
    if not _dense_fits(landscape.n_params, landscape.device, max_dense_P):
        return [analyse_point(landscape, thetas[b], grad_infs[b], max_dense_P=max_dense_P, check_escape=check_escape,
                              theta_next=None if theta_nexts is None else theta_nexts[b]) for b in range(M)]
    chunk = max(1, available_bytes(landscape.device) // (COPIES_PER_POINT * 8 * landscape.n_params ** 2))
    if M > chunk:       # the batch holds several dense matrices per point: as many points as free memory allows
        out = []
        for a in range(0, M, chunk):
            out += analyse_points(landscape, thetas[a:a + chunk], grad_infs[a:a + chunk],
                                  None if theta_nexts is None else theta_nexts[a:a + chunk], max_dense_P, check_escape)
        return out
    H = batched_hessians(landscape, thetas)
    shifts = (hessian_shifts(H, batched_hessians(landscape, landscape.as_theta(theta_nexts)))
              if theta_nexts is not None else [None] * M)
    eigs = torch.linalg.eigvalsh(H).cpu().numpy()
    reports = [analyse(H[b], grad_infs[b], hessian_shift=shifts[b], eigs=eigs[b]) for b in range(M)]
    out = [PointAnalysis(rep, None) for rep in reports]
    todo = [b for b, rep in enumerate(reports) if check_escape and rep.index >= 1]
    if todo:
        lam, V = torch.linalg.eigh(H[todo])
        for c, b in enumerate(todo):
            out[b].escape = escape(landscape, thetas[b], lam[c], V[c], reports[b].tau)
    return out


def gamma_line(landscape, red_landscape, red_theta: Tensor, layer: int, neuron: int, reduced_index: int,
               gammas) -> dict:
    """Index and n_zero of the full network along the gamma-line of one duplicated neuron of the reduced point
    (red_landscape, red_theta), beside the index the split block M_gamma predicts: the points of the line
    analysed as one batch (their gradients too), B and C of the block computed once."""
    from . import surgery
    from .batched import batched_loss_grad
    from .permutation import predicted_index, split_eigenvalues_line

    spec = red_landscape.spec
    thetas = torch.stack([surgery.duplicate(spec, red_theta, layer, [neuron], g)[1] for g in gammas])
    grad_infs = batched_loss_grad(landscape, thetas)[1].abs().amax(1).tolist()
    reports = [a.report for a in analyse_points(landscape, thetas, grad_infs, check_escape=False)]
    blocks = split_eigenvalues_line(red_landscape, red_theta, layer, neuron, gammas)
    return {"gammas": list(gammas), "index": [r.index for r in reports], "n_zero": [r.n_zero for r in reports],
            "index_predicted": [predicted_index([e], reduced_index, r.tau) for e, r in zip(blocks, reports)]}
