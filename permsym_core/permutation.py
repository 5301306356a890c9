"""Permutation points and their checks: the Fukumizu-Amari matrix and its index prediction, the equal-loss
plateau, and the gamma-line scan.

At gamma = 1/2 the Hessian commutes with the exchange P_ij, so it splits exactly into a block on the
P_ij-symmetric subspace, which is congruent to the reduced network's Hessian (duplication is a linear
embedding E with E^T H E = H_reduced), and a block on the antisymmetric subspace. When neuron m feeds a single
unit (n_{k+1} = 1) the antisymmetric block is diag(B/2, 0): B is the Fukumizu-Amari matrix
B = sum_n (sum_o a_o delta_{n,o}) sigma''(z_{n,m}) x_n x_n^T, with delta the back-propagated error of layer
k+1 (it includes the 1/N of the mean), x_n the input of layer k (with a 1 for the bias). Hence
index(point) = index(reduced) + sum over duplicated neurons of #{eig(B) < 0} (Sylvester), and for other gamma
the sign rule of Fukumizu and Amari (2000): #{eig(B) < 0} inside (0, 1), #{eig(B) > 0} outside [0, 1].
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


def fa_matrix(landscape: Landscape, theta: Tensor, layer: int, neuron: int) -> np.ndarray:
    """The Fukumizu-Amari matrix of neuron m of hidden layer k, generalised with the back-propagated error of
    layer k+1: (n_{k-1} [+1]) x (n_{k-1} [+1])."""
    spec = landscape.spec
    deltas, zs, hs = backprop_errors(landscape, theta)
    a = surgery.outgoing(spec, landscape.as_theta(theta), layer)[:, neuron]        # (n_{k+1},)
    weight = (deltas[layer] @ a) * landscape.act.d2f(zs[layer - 1][:, neuron])      # (N,)
    x = hs[layer - 1]
    if spec.biases[layer - 1]:
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    B = (x * weight[:, None]).T @ x
    return (0.5 * (B + B.T)).cpu().numpy()


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

