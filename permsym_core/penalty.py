"""An L2 penalty (weight decay) that keeps the permutation construction exact.

The penalised loss of a network is  F(theta) = L(theta) + 1/2 sum_p c_p theta_p^2  with one coefficient per
parameter. For the full network every c_p is the weight decay lambda. A reduced network stands for a full one
in which some neurons are copies: hidden neuron i of layer k stands for m_k[i] identical copies (its
multiplicity; 1 for an ordinary neuron, 2 for a merged pair, the sum of the parts for a merge of merged
neurons), and its outgoing weight w is shared equally by them. Embedding the reduced parameters into the full
network, theta_full = E theta_red, copies every incoming weight and bias of i m_k[i] times and divides every
outgoing weight by the multiplicity of its source, so the full penalty restricted to the image of E is

    1/2 lambda theta_red^T diag(E^T E) theta_red,   diag(E^T E) = m_k[i] / m_{k-1}[j] for W_k[i, j],
                                                                   m_k[i]              for b_k[i],

with m_0 = m_d = 1 (inputs and outputs are never copied). The image of E is the set of full parameters fixed
by the permutations that swap copies, and F is invariant under those permutations, so by the principle of
symmetric criticality a critical point of the reduced problem with these coefficients, embedded with equal
shares (gamma = 1/2 for a pair), is an exact critical point of the full penalised loss. A reduced network
trained with the plain lambda everywhere is not: split at gamma = 1/2 (a pair, m = 2), the gradient of the
full F is +lambda u / 2 on each copy's incoming weights and bias u and -lambda a_c on each copy's outgoing
weights a_c = a / 2 (tested). Two things change against the unpenalised landscape: the penalty makes F
coercive (its sublevel sets are bounded, so no minimisation runs off along a channel to infinity; one can
still stop at its iteration or time limit), and it lifts the gamma-line: the data loss is constant along
it, but a split with shares gamma, 1 - gamma other than 1/2 is not critical (F grows along the line as
lambda |a|^2 (gamma - 1/2)^2, a the merged neuron's outgoing weight vector), so each permutation point is
isolated along it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from .mlp import DTYPE, MLPSpec


PENALTY_FORM = ("loss + 1/2 weight_decay sum theta^2 over every weight and bias (the recorded loss includes it, "
                "data_loss does not); in a reduced network, where neuron i of layer k stands for m_k[i] copies, "
                "W_k[i, j] has coefficient weight_decay m_k[i] / m_(k-1)[j] and b_k[i] weight_decay m_k[i] "
                "(m = 1 for inputs, outputs and ordinary neurons); points split the merged neurons only "
                "(gamma = 1/2); no gamma-line, plateau, paths or valleys")


def check_weight_decay(weight_decay: float) -> float:
    lam = float(weight_decay)
    if not lam >= 0.0 or lam == float("inf"):
        raise ValueError(f"weight_decay: expected a finite number >= 0, got {weight_decay!r}")
    return lam


def l2_coefficients(spec: MLPSpec, weight_decay: float,
                    multiplicities: Mapping[int, Sequence[int]] | None = None) -> Tensor:
    """The per-parameter coefficients c (P,) of the penalty 1/2 sum c theta^2 of `spec`, whose hidden layer k
    neurons stand for multiplicities[k] copies each (default: 1 for every neuron, i.e. c = weight_decay)."""
    lam = check_weight_decay(weight_decay)
    mult = {k: [1] * spec.widths[k] for k in range(spec.depth + 1)}
    for k, m in (multiplicities or {}).items():
        if not 1 <= k < spec.depth or len(m) != spec.widths[k] or any(int(x) < 1 for x in m):
            raise ValueError(f"multiplicities[{k}]: expected {spec.widths[k] if 1 <= k < spec.depth else 'no'} "
                             f"integers >= 1 for hidden layer {k}, got {list(m)}")
        mult[k] = [int(x) for x in m]
    c = torch.empty(spec.n_params, dtype=DTYPE)
    views = spec.views(c)
    for k in range(1, spec.depth + 1):
        W, b = views[k - 1]
        m_out = torch.tensor(mult[k], dtype=DTYPE)
        m_in = torch.tensor(mult[k - 1], dtype=DTYPE)
        W.copy_(lam * m_out[:, None] / m_in[None, :])
        if b is not None:
            b.copy_(lam * m_out)
    return c


def merged_multiplicities(spec: MLPSpec, layer: int, pairs: Sequence[tuple[int, int]],
                          multiplicities: Mapping[int, Sequence[int]] | None = None) -> dict[int, list[int]]:
    """The multiplicities of the network surgery.merge(spec, theta, layer, pairs) leaves: each pair (i, j) becomes
    one neuron at min(i, j) standing for m[i] + m[j] copies, the other neurons keep theirs."""
    mult = {k: list(m) for k, m in (multiplicities or {}).items()}
    m = mult.get(layer, [1] * spec.widths[layer])
    partner = {min(i, j): max(i, j) for i, j in pairs}
    dropped = set(partner.values())
    mult[layer] = [m[p] + (m[partner[p]] if p in partner else 0) for p in range(len(m)) if p not in dropped]
    return mult


def penalty_value_grad(coefficients: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """(1/2 sum c theta^2, c * theta) for theta (P,) or (M, P)."""
    ct = coefficients * theta
    return 0.5 * (ct * theta).sum(-1), ct
