"""Permutation points and their checks: the exact antisymmetric block and the index it predicts, the
Fukumizu-Amari matrix, the equal-loss plateau, and the gamma-line.

The exact index, for any layer, any number of next-layer units and any order K. Duplicate neuron m of a
reduced critical point (incoming w, outgoing a in R^{n_{k+1}}) into copies i, j with outgoing gamma a and
(1 - gamma) a. Perturb w_i = w + e(p + (1-gamma) d), w_j = w + e(p - gamma d), a_i = gamma a + e(gamma q + r),
a_j = (1-gamma) a + e((1-gamma) q - r). The layer's contribution to z_{k+1} is
    a sigma(w.x) + e [a sigma'(w.x) p.x + q sigma(w.x)] + e^2 [a sigma'' (p.x)^2 / 2 + sigma' (p.x) q]
                 + e^2 [gamma (1-gamma) a sigma'' (d.x)^2 / 2 + sigma' (d.x) r] + O(e^3):
(p, q) enter exactly as the reduced network's own perturbation, (d, r) only at second order. With delta_n =
dLoss/dz_{k+1} of sample n (1/N included) the Hessian is therefore congruent to
    diag(H_reduced, M_gamma),   M_gamma = [[gamma (1-gamma) B, C], [C^T, 0]],
    B = sum_n (delta_n . a) sigma''(z_nm) x_n x_n^T   (the Fukumizu-Amari matrix),
    C = sum_n sigma'(z_nm) x_n delta_n^T              ((n_{k-1} [+1]) x n_{k+1}),
x_n the input of layer k (with a 1 for the bias). At gamma = 1/2 the congruence is orthogonal on the
antisymmetric directions (u, -u, v, -v)/sqrt(2) (d = 2u, r = v): the Hessian's eigenvalues there are exactly
those of S = [[B/2, C], [C^T, 0]]. Hence, by Sylvester's law, index(point) = index(reduced) + sum over the K
duplicated neurons of #{eig(S) < 0} (the pairs' antisymmetric subspaces are mutually orthogonal invariant
subspaces: each exchange flips its own and fixes the others). For a single next-layer unit the reduced
point's criticality in w gives (delta . a) sigma' x summed = 0, so C = 0 and S = diag(B/2, 0): the rule of
Fukumizu and Amari (2000), #{eig(B) < 0} inside (0, 1) and #{eig(B) > 0} outside [0, 1]. With several units
C != 0 (only C a = 0), and [[*, C], [C^T, 0]] has at least rank(C) negative eigenvalues: a layer feeding
n_{k+1} units gives index >= rank(C), generically n_{k+1} - 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from . import surgery
from .landscape import Landscape
from .mlp import MLPSpec

GAMMA_GRID = (-0.9, -0.6, -0.3, -0.1, 0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.6, 1.9)


def backprop_errors(landscape: Landscape, theta: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """(deltas, zs, hs): dLoss/dz_k per sample for k = 1..d (including the 1/N), pre-activations, inputs."""
    cache = landscape.forward(theta)
    layers = landscape.spec.views(landscape.as_theta(theta))
    d = landscape.spec.depth
    deltas: list[Tensor] = [None] * d  # type: ignore[list-item]
    delta = landscape.output_error(cache.out)
    deltas[d - 1] = delta
    for k in range(d, 1, -1):
        delta = (delta @ layers[k - 1][0]) * landscape.act.df(cache.zs[k - 2])
        deltas[k - 2] = delta
    return deltas, cache.zs, cache.hs


def _neuron_terms(landscape: Landscape, theta: Tensor, layer: int, neuron: int) -> tuple[Tensor, Tensor]:
    """(B, C) of neuron m of hidden layer k at the reduced point theta (see the module docstring)."""
    spec = landscape.spec
    deltas, zs, hs = backprop_errors(landscape, theta)
    a = surgery.outgoing(spec, landscape.as_theta(theta), layer)[:, neuron]        # (n_{k+1},)
    z = zs[layer - 1][:, neuron]
    delta = deltas[layer]                                                           # (N, n_{k+1})
    weight = (delta @ a) * landscape.act.d2f(z)                                     # (N,)
    x = hs[layer - 1]
    if spec.biases[layer - 1]:
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    B = (x * weight[:, None]).T @ x
    C = (x * landscape.act.df(z)[:, None]).T @ delta
    return 0.5 * (B + B.T), C


def fa_matrix(landscape: Landscape, theta: Tensor, layer: int, neuron: int) -> np.ndarray:
    """The Fukumizu-Amari matrix of neuron m of hidden layer k, generalised with the back-propagated error of
    layer k+1: (n_{k-1} [+1]) x (n_{k-1} [+1])."""
    return _neuron_terms(landscape, theta, layer, neuron)[0].cpu().numpy()


def split_block(landscape: Landscape, theta: Tensor, layer: int, neuron: int, gamma: float = 0.5) -> np.ndarray:
    """M_gamma = [[gamma (1 - gamma) B, C], [C^T, 0]] of neuron m at the reduced point theta; at gamma = 1/2
    it is returned as S = [[B/2, C], [C^T, 0]], whose eigenvalues are exactly the Hessian's on the
    antisymmetric directions of the duplicated pair (at other gamma only its inertia is the Hessian's)."""
    return _split_block(*_neuron_terms(landscape, theta, layer, neuron), gamma)


def _split_block(B: Tensor, C: Tensor, gamma: float) -> np.ndarray:
    c = 0.5 if gamma == 0.5 else gamma * (1.0 - gamma)
    n_in, n_out = C.shape
    M = torch.zeros(n_in + n_out, n_in + n_out, dtype=B.dtype, device=B.device)
    M[:n_in, :n_in] = c * B
    M[:n_in, n_in:] = C
    M[n_in:, :n_in] = C.T
    return M.cpu().numpy()


def split_eigenvalues(landscape: Landscape, theta: Tensor, layer: int, neuron: int, gamma: float = 0.5
                      ) -> np.ndarray:
    return np.linalg.eigvalsh(split_block(landscape, theta, layer, neuron, gamma))


def split_eigenvalues_line(landscape: Landscape, theta: Tensor, layer: int, neuron: int,
                           gammas: Sequence[float]) -> list[np.ndarray]:
    """split_eigenvalues at every gamma of a line, B and C computed once."""
    B, C = _neuron_terms(landscape, theta, layer, neuron)
    return [np.linalg.eigvalsh(_split_block(B, C, g)) for g in gammas]


def predicted_index(block_eigs: Sequence[np.ndarray], reduced_index: int, tau: float) -> int:
    """reduced index + #{eigenvalues of the duplicated neurons' blocks below -tau}."""
    return int(reduced_index + sum(int(np.sum(np.asarray(e) < -tau)) for e in block_eigs))


def c_spectrum(landscape: Landscape, theta: Tensor, layer: int, neuron: int) -> tuple[np.ndarray, float]:
    """(singular values of C, max(lambda_max(B/2), 0)) of neuron m: what `negative_lower_bound` needs."""
    B, C = _neuron_terms(landscape, theta, layer, neuron)
    sv = np.linalg.svd(C.cpu().numpy(), compute_uv=False)
    return sv, max(float(np.linalg.eigvalsh(0.5 * B.cpu().numpy())[-1]), 0.0)


def negative_lower_bound(sv: np.ndarray, a: float, tau: float) -> int:
    """A lower bound on #{eigenvalues of S = [[B/2, C], [C^T, 0]] below -tau}, from C alone: with (u_i, v_i)
    the top-k singular pairs of C and x = (-alpha U c, V c), x^T S x / |x|^2 <= (alpha^2 a - 2 alpha s_k) /
    (1 + alpha^2), whose minimum over alpha is (a - sqrt(a^2 + 4 s_k^2)) / 2 (a = max(lambda_max(B/2), 0));
    by Courant-Fischer S has at least k eigenvalues at or below it. So every singular value with
    (a - sqrt(a^2 + 4 s^2)) / 2 < -tau, i.e. s^2 > tau (a + tau), gives one negative eigenvalue: at tau = 0 the
    classical n_neg >= rank C."""
    return int(np.sum(np.asarray(sv) ** 2 > tau * (a + tau)))


def fa_prediction(B_eigs: Sequence[np.ndarray], gamma: float, reduced_index: int, tau: float) -> int:
    """Predicted index at split gamma: reduced index plus, per duplicated neuron, the eigenvalues of B whose
    Hessian counterpart 2 gamma (1 - gamma) lambda_B is below -tau (inside (0, 1)) or, outside [0, 1], the
    ones above +tau in B (where 2 gamma (1 - gamma) < 0 flips the sign)."""
    scale = 2.0 * gamma * (1.0 - gamma)
    return int(reduced_index + sum(int(np.sum(scale * np.asarray(e) < -tau)) for e in B_eigs))


def duplicated_positions(n_reduced: int, neurons: Sequence[int]) -> list[tuple[int, int]]:
    """Slots (i, i+1) of each duplicated neuron in the network built by surgery.duplicate."""
    dup = sorted(set(neurons))
    return [(m + sum(1 for q in dup if q < m), m + sum(1 for q in dup if q < m) + 1) for m in neurons]


def plateau_check(landscape: Landscape, red_spec: MLPSpec, red_theta: Tensor, layer: int,
                  neurons: Sequence[int], seed: int = 0, n_random: int = 4) -> dict:
    """On the plateau of the first duplicated neuron of the permutation point built by duplicating `neurons`
    (the others stay split 1/2 : 1/2):
    - max relative loss change for (a_i + t, a_j - t), t random in R^{n_{k+1}} (several scales);
    - max |grad|_inf along the common-ratio line (gamma in a grid, which must stay critical);
    - |grad|_inf off the line (t not parallel to a; None when n_{k+1} = 1, where every t is on the line)."""
    spec = landscape.spec
    neuron = neurons[0]
    i, j = duplicated_positions(red_spec.widths[layer], neurons)[0]
    theta = surgery.duplicate(red_spec, red_theta, layer, neurons, 0.5)[1]
    loss0 = landscape.loss(theta)
    gen = torch.Generator().manual_seed(seed)
    a = surgery.outgoing(red_spec, red_theta, layer)[:, neuron]
    n_out = a.numel()
    scale = float(a.abs().max()) or 1.0
    rel = 0.0
    off_grad = None
    for r in range(n_random):
        t = torch.randn(n_out, generator=gen, dtype=theta.dtype).to(theta.device) * scale * (0.5 + r)
        moved = theta.clone()
        W_out = spec.views(moved)[layer][0]
        W_out[:, i] += t
        W_out[:, j] -= t
        loss_t, grad_t = landscape.loss_grad(moved)
        rel = max(rel, abs(loss_t - loss0) / max(abs(loss0), 1e-300))
        if n_out > 1:
            g = float(grad_t.abs().max())
            off_grad = g if off_grad is None else min(off_grad, g)
    line = 0.0
    for gamma in (-0.5, 0.2, 0.5, 0.8, 1.5):
        th = surgery.duplicate(red_spec, red_theta, layer, neurons, [gamma] + [0.5] * (len(neurons) - 1))[1]
        line = max(line, float(landscape.grad(th).abs().max()))
    return {"max_rel_dloss": rel, "line_grad_inf": line, "off_line_grad_inf": off_grad}

