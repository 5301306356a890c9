"""Reducible critical points and their canonical form.

A critical point of a network is *reducible* when it is a critical point of a smaller network embedded:
two neurons of a hidden layer share an incoming vector (their outgoing vectors add up), a neuron is silent
(zero outgoing vector), or the point sits on such a manifold at the loss's resolution. Such points lie on
continua of equal loss, not at isolated points, so they are never multiplied by a symmetry multiplicity.

The test is functional, layer by layer: merge the layer's closest pair (incoming (w_i + w_j)/2, outgoing
a_i + a_j), or drop its weakest neuron (smallest |a_i| x rms of its activation), re-minimise that smaller
network from there (trust region, no warm-up) and compare losses with `same_loss`: equal to SAME_LOSS_RTOL
relative, with an absolute floor of ZERO_LOSS_RTOL x the loss of the zero network (a zero-loss point is
at the loss's resolution once it is that close to 0). When the smaller network reaches the same loss the
point is reducible, and the reduction is repeated on the smaller critical point until nothing applies: the
result is the canonical form (its hidden widths are `canonical_widths`). A pair closer than
COINCIDENT_RTOL (relative to the weights' scale) is labelled "coincident", a neuron whose contribution is
below it "silent"; otherwise the label says the loss matched. Before each test the neurons are put in a
canonical sign (`orient`: for sigmoid and tanh a flip (w, a) -> (-w, -a) is an exact reparametrisation when
its constant is absorbed or cancels), so an antiparallel pair shows as a coincident one and sign-flipped
copies of one point compare equal. Canonical forms are compared up to permutation of every hidden layer
(`same_point`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from . import surgery
from .landscape import Landscape
from .mlp import MLPSpec
from .penalty import merged_multiplicities

SAME_LOSS_RTOL = 1e-9
ZERO_LOSS_RTOL = 1e-12
COINCIDENT_RTOL = 1e-6
DEDUP_PARAM_RTOL = 1e-6      # canonical forms closer than this x max(1, |theta|_inf) after alignment are one point
MAX_REDUCTIONS = 16
# under a weight decay the continua that duplicated, silent or antiparallel neurons give the plain loss are lifted
# (F grows along them), so a reducible point is an exact embedding: only candidates this close are re-minimised
PENALISED_NEAR_RTOL = 1e-3
# sigma(-z) = c - sigma(z): flipping a neuron, (w, a) -> (-w, -a), adds the constant c a to the next layer
REFLECTION = {"sigmoid": 1.0, "tanh": 0.0}


def orient(spec: MLPSpec, theta: Tensor, penalised: bool = False) -> Tensor:
    """theta with every hidden neuron in a canonical sign, where the activation allows it exactly.

    For sigma(-z) = c - sigma(z) (sigmoid: c = 1, tanh: c = 0) the flip (w, a) -> (-w, -a) of a neuron of
    layer k changes the next layer's input by the constant c a, absorbed exactly into layer k+1's bias when it
    has one; without a bias the flips of a layer are applied only when their constants cancel (to round-off).
    A neuron is oriented so that its incoming vector's largest-magnitude entry is positive. Other activations:
    theta unchanged. The result is the same function, with a Hessian orthogonally similar to theta's.
    `penalised` (an L2 penalty on the weights): only flips that leave the penalty unchanged (tanh, c = 0)."""
    c = REFLECTION.get(spec.activation)
    if c is None or (penalised and c != 0.0):
        return theta
    th = theta.clone()
    layers = spec.views(th)
    for k in range(1, spec.depth):
        W, b = layers[k - 1]
        W_next, b_next = layers[k]
        w_full = torch.cat([W, b[:, None]], dim=1) if b is not None else W
        pivot = w_full.gather(1, w_full.abs().argmax(dim=1, keepdim=True))[:, 0]
        flip = pivot < 0
        if not bool(flip.any()):
            continue
        const = c * W_next[:, flip].sum(dim=1)                      # (n_{k+1},)
        if b_next is None and float(const.abs().max()) > 1e-12 * max(1.0, float(W_next.abs().max())):
            continue                                                 # not an exact reparametrisation here
        if b_next is not None:
            b_next += const
        W[flip] = -W[flip]
        if b is not None:
            b[flip] = -b[flip]
        W_next[:, flip] = -W_next[:, flip]
    return th


def zero_loss_scale(landscape: Landscape) -> float:
    """The loss of the network whose output is 0: mean sum of Y^2 (regression), log(C) (classification)."""
    if landscape.spec.output == "classification":
        return float(np.log(landscape.spec.widths[-1]))
    return float((landscape.Y ** 2).sum() / landscape.N)


def same_loss(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= SAME_LOSS_RTOL * max(abs(a), abs(b)) + ZERO_LOSS_RTOL * scale


@dataclass
class Canonical:
    """The canonical form of a critical point: reducible, what reduced it, and the point it reduces to."""

    reducible: bool
    reduced_by: list[str]
    spec: MLPSpec
    theta: Tensor
    loss: float
    steps: list[dict] = field(default_factory=list)
    undetermined_by: list[str] = field(default_factory=list)   # candidates whose smaller net did not converge
    #                                                           but reached the same loss or lower

    @property
    def undetermined(self) -> bool:
        """Not shown reducible, yet not shown irreducible either: never multiplied against the bound."""
        return not self.reducible and bool(self.undetermined_by)

    @property
    def widths(self) -> list[int]:
        return list(self.spec.hidden)

    def summary(self) -> dict:
        return {"reducible": self.reducible, "reduced_by": list(self.reduced_by),
                "reducibility_undetermined": self.undetermined, "undetermined_by": list(self.undetermined_by),
                "canonical_widths": self.widths, "canonical_loss": self.loss}


def _candidates(spec: MLPSpec, theta: Tensor, landscape: Landscape, layer: int):
    """(label, smaller spec, start point, structural distance relative to the weights' scale, the smaller
    network's multiplicities) of the layer's closest pair merged, its weakest neuron dropped and (sigmoid,
    tanh) its closest antiparallel pair merged."""
    n = spec.widths[layer]
    scale = max(1.0, float(theta.abs().max()))
    W = surgery.incoming(spec, theta, layer)
    d = torch.cdist(W, W) + torch.diag(torch.full((n,), float("inf"), dtype=W.dtype, device=W.device))
    flat = int(torch.argmin(d))
    i, j = sorted((flat // n, flat % n))
    dist = float(d[i, j]) / scale
    red_spec, red0, _ = surgery.merge(spec, theta, layer, [(i, j)])
    kind = "coincident" if dist <= COINCIDENT_RTOL else "merge"
    mult = landscape.multiplicities
    yield (f"{kind} L{layer} ({i},{j})", red_spec, red0, dist,
           merged_multiplicities(spec, layer, [(i, j)], mult))
    h = landscape.forward(theta).hs[layer][:, :]                     # (N, n_k): the layer's activations
    contrib = surgery.outgoing(spec, theta, layer).norm(dim=0) * h.pow(2).mean(0).sqrt()
    m = int(torch.argmin(contrib))
    rel = float(contrib[m]) / max(float(contrib.max()), 1e-300)
    keep = [p for p in range(n) if p != m]
    drop_spec, drop0 = surgery.expand(spec, theta, layer, keep, [1.0] * len(keep))
    kind = "silent" if rel <= COINCIDENT_RTOL else "drop"
    dropped = {k: list(v) for k, v in mult.items()}
    if layer in dropped:
        dropped[layer] = [x for p, x in enumerate(dropped[layer]) if p != m]
    yield f"{kind} L{layer} {m}", drop_spec, drop0, rel, dropped
    if spec.activation in REFLECTION and (landscape.penalty is None or REFLECTION[spec.activation] == 0.0):
        for label, small_spec, start, dist_a, (i_a, j_a) in _antiparallel(spec, theta, layer, W, scale):
            yield label, small_spec, start, dist_a, merged_multiplicities(spec, layer, [(i_a, j_a)], mult)


def _antiparallel(spec: MLPSpec, theta: Tensor, layer: int, W: Tensor, scale: float):
    """The closest antiparallel pair (w_j ~ -w_i) of a layer whose activation has sigma(-z) = c - sigma(z):
    a_i sigma(w_i.x) + a_j sigma(-w_i.x) = (a_i - a_j) sigma(w_i.x) + c a_j, so the pair is one neuron plus the
    constant c a_j, which goes into layer k+1's bias, or, without one, is cancelled by flipping the neuron m
    whose own flip constant c a_m cancels it best (m = argmin |c a_j + c a_m|)."""
    c = REFLECTION[spec.activation]
    n = W.shape[0]
    d = torch.cdist(W, -W) + torch.diag(torch.full((n,), float("inf"), dtype=W.dtype, device=W.device))
    flat = int(torch.argmin(d))
    i, j = sorted((flat // n, flat % n))
    dist = float(d[i, j]) / scale
    th = theta.clone()
    layers = spec.views(th)
    Wk, bk = layers[layer - 1]
    W_next, b_next = layers[layer]
    const = c * W_next[:, j].clone()
    label = f"antiparallel L{layer} ({i},{j})"
    W_next[:, i] -= W_next[:, j]          # neuron i keeps w_i; neuron j goes below, merged away
    if b_next is not None:
        b_next += const
    elif c != 0.0:
        others = [m for m in range(n) if m not in (i, j)]
        if others:
            resid = torch.stack([(const + c * W_next[:, m]).abs().max() for m in others])
            m = others[int(torch.argmin(resid))]
            if float(resid.min()) < float(const.abs().max()):
                Wk[m] = -Wk[m]
                if bk is not None:
                    bk[m] = -bk[m]
                W_next[:, m] = -W_next[:, m]
                label += f" flip {m}"
    keep = [p for p in range(n) if p != j]
    small_spec, start = surgery.expand(spec, th, layer, keep, [1.0] * len(keep))
    yield label, small_spec, start, dist, (i, j)


Minimiser = Callable[[Landscape, Tensor], "object"]   # returns an object with theta, loss, converged


def canonicalise(landscape: Landscape, theta: Tensor, loss: float, minimise: Minimiser) -> Canonical:
    """Reduce a critical point of `landscape` until nothing applies; see the module docstring.

    `minimise(smaller_landscape, start)` re-minimises a candidate (it must certify its own result). Under a
    weight decay (landscape.penalty) a candidate farther than PENALISED_NEAR_RTOL is not tried: the penalty
    lifts the continua along which the plain loss reduces a point at a distance (silent or antiparallel
    neurons, a pair apart on a plateau), so only an exact embedding (a coincident pair, a zero neuron) is
    reducible, and at a polished point (|grad| ~ 1e-16) its distance is round-off, far below that; the steps
    record every skipped candidate with its distance."""
    scale = zero_loss_scale(landscape)
    pen = landscape.penalty is not None
    spec, th, cur_loss, land = (landscape.spec, orient(landscape.spec, landscape.as_theta(theta), pen), float(loss),
                                landscape)
    reasons: list[str] = []
    steps: list[dict] = []
    undetermined: list[str] = []
    for _ in range(MAX_REDUCTIONS):
        reduced = False
        for layer in range(1, spec.depth):
            if spec.widths[layer] < 2:
                continue
            for label, small_spec, start, dist, mult in _candidates(spec, th, land, layer):
                if pen and dist > PENALISED_NEAR_RTOL:
                    steps.append({"candidate": label, "distance": dist, "skipped": "not near (weight decay)"})
                    continue
                small = land.smaller(small_spec, mult)
                res = minimise(small, start)
                ok = bool(res.converged) and same_loss(res.loss, cur_loss, scale)
                steps.append({"candidate": label, "distance": dist, "loss_before": cur_loss, "loss_after": res.loss,
                              "converged": bool(res.converged), "same_loss": ok})
                if not res.converged and (same_loss(res.loss, cur_loss, scale) or res.loss < cur_loss):
                    undetermined.append(f"{label} (widths {list(small_spec.hidden)}: not converged at loss "
                                        f"{res.loss:.6g} <= {cur_loss:.6g})")
                if ok:
                    reasons.append(label if label.split()[0] in ("coincident", "silent") else label + " same loss")
                    spec, th, cur_loss, land = small_spec, orient(small_spec, res.theta, pen), float(res.loss), small
                    reduced = True
                    break
            if reduced:
                break
        if not reduced:
            break
    return Canonical(reducible=bool(reasons), reduced_by=reasons, spec=spec, theta=th, loss=cur_loss, steps=steps,
                     undetermined_by=[] if reasons else undetermined)


def same_point(a: Canonical, b: Canonical, scale: float) -> bool:
    """Two canonical forms are one point: same widths, same loss, equal up to permutation of every layer."""
    if a.spec.widths != b.spec.widths or not same_loss(a.loss, b.loss, scale):
        return False
    tol = DEDUP_PARAM_RTOL * max(1.0, float(a.theta.abs().max()), float(b.theta.abs().max()))
    return surgery.distance_up_to_permutation(a.spec, a.theta, b.theta) <= tol
