"""Channels to infinity, detected by measurement on a minimiser's trajectory (Martinelli, van Meegen, Simsek,
Gerstner, Brea 2025, "Flat channels to infinity in neural loss landscapes").

A minimisation whose loss keeps falling while some parameters grow has no finite minimum to find there. Given
snapshots (iteration, loss, theta) over a window, `detect_channel` measures the displacement d = theta_end -
theta_start and names what drives it:

- kind "converging": in one hidden layer, two (or more) neurons whose outgoing weights grow with opposite
  signs (their sum cancels) while their incoming vectors (weights and bias) move closer: the classic channel
  whose limit is a derivative of the activation, f = c sigma'(w x) from a = +-c / (2 eps) at w +- eps;
- kind "linear": neurons driven into their activation's linear regime (the measured nonlinearity
  1 - R^2(sigma(z), z) of their pre-activations over the data falls: shrinking incoming weights, or a bias
  that runs off where the activation is linear) while their parameters grow: a deeper network imitating a
  shallower one;
- kind "growth": the parameters grow while the loss falls, no pattern above; the neurons carrying most of
  the displacement are named.

The record (Channel.to_dict): kind, layer (1-based hidden layer), neurons, growth_rate (d log |theta_D| per
iteration, theta_D the driving neurons' parameters), loss_trend (sampled iteration, loss, |theta_D|),
loss_along (the loss at theta_end + s d, s = 0.5, 1: the loss further along the direction of growth),
loss_limit_estimate (least-squares fit of loss = L_inf + c |theta_D|^-p, p in {1, 2}, the better fit's L_inf,
clipped to [0, last loss]) and detail (the per-neuron measurements behind the call).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

MIN_GROWTH = 0.05          # a parameter group "grows" when its norm rises by at least this fraction
MIN_LOSS_DROP = 1e-9       # the loss must fall by at least this fraction of itself over the window
LINEAR_FALL = 0.8          # "linear": nonlinearity at the end <= this x at the start


@dataclass
class Channel:
    kind: str
    layer: int
    neurons: list
    growth_rate: float
    loss_trend: list
    loss_along: list
    loss_limit_estimate: float
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _neuron_groups(spec, theta: Tensor):
    """Per hidden layer k (1-based): incoming (n_k, n_{k-1} [+1 bias]) and outgoing (n_{k+1}, n_k) blocks."""
    views = spec.views(theta)
    out = {}
    for k in range(1, spec.depth):
        W, b = views[k - 1]
        u = torch.cat([W, b[:, None]], 1) if b is not None else W
        out[k] = (W, b, u, views[k][0])
    return out


def _preactivations(spec, theta: Tensor, X: Tensor, act) -> dict[int, Tensor]:
    h, z_of = X, {}
    for k, (W, b) in enumerate(spec.views(theta), start=1):
        if k == spec.depth:
            break
        z = h @ W.T + (b if b is not None else 0.0)
        z_of[k] = z
        h = act.f(z)
    return z_of


def _nonlinearity(act, z: Tensor) -> Tensor:
    """Per column: 1 - R^2 of the best affine fit of sigma(z) by z over the data (0: the unit is affine)."""
    s = act.f(z)
    zc, sc = z - z.mean(0), s - s.mean(0)
    vz, vs = (zc * zc).sum(0), (sc * sc).sum(0)
    r2 = (zc * sc).sum(0) ** 2 / (vz * vs).clamp_min(1e-300)
    return torch.where(vs <= 1e-300, torch.zeros_like(r2), 1.0 - r2).clamp_min(0.0)


def _limit_fit(norms: np.ndarray, losses: np.ndarray) -> float:
    best = (math.inf, float(losses[-1]))
    for p in (1.0, 2.0):
        A = np.stack([np.ones_like(norms), norms ** -p], 1)
        coef, *_ = np.linalg.lstsq(A, losses, rcond=None)
        res = float(((A @ coef - losses) ** 2).sum())
        if res < best[0]:
            best = (res, float(coef[0]))
    return float(min(max(best[1], 0.0), losses[-1]))


def _params_norm(groups, k, neurons) -> float:
    W, b, u, A = groups[k]
    return float(torch.cat([u[neurons].reshape(-1), A[:, neurons].reshape(-1)]).norm())


def detect_channel(landscape, history: list[tuple[int, float, Tensor]]) -> Channel | None:
    """The channel the snapshots `history` (iteration, loss, theta; oldest first) run along, or None."""
    if len(history) < 3:
        return None
    spec = landscape.spec
    (it0, L0, th0), (it1, L1, th1) = history[0], history[-1]
    if not (math.isfinite(L0) and math.isfinite(L1)) or L0 - L1 <= MIN_LOSS_DROP * abs(L0) or it1 <= it0:
        return None
    g0, g1 = _neuron_groups(spec, th0), _neuron_groups(spec, th1)
    act = landscape.act
    z0, z1 = _preactivations(spec, th0, landscape.X, act), _preactivations(spec, th1, landscape.X, act)
    d = th1 - th0
    dn2 = float((d * d).sum()) or 1e-300
    found = None
    per_layer = {}
    for k in range(1, spec.depth):
        W0, _, u0, A0 = g0[k]
        W1, _, u1, A1 = g1[k]
        a0, a1 = A0.norm(dim=0), A1.norm(dim=0)
        grow_out = (a1 >= (1 + MIN_GROWTH) * a0).tolist()
        share = (((u1 - u0) ** 2).sum(1) + ((A1 - A0) ** 2).sum(0)) / dn2
        nl0, nl1 = _nonlinearity(act, z0[k]), _nonlinearity(act, z1[k])
        n = u1.shape[0]
        per_layer[k] = {"out_norm_start": a0.tolist(), "out_norm_end": a1.tolist(), "share": share.tolist(),
                        "nonlinearity_start": nl0.tolist(), "nonlinearity_end": nl1.tolist()}
        # converging pair (cluster): outgoing growing with opposite signs, incoming vectors closing in
        best = None
        for i in range(n):
            for j in range(i + 1, n):
                if not (grow_out[i] and grow_out[j]) or float(A1[:, i] @ A1[:, j]) >= 0:
                    continue
                dist0, dist1 = float((u0[i] - u0[j]).norm()), float((u1[i] - u1[j]).norm())
                if dist1 >= dist0:
                    continue
                rel = dist1 / max(float(u1[i].norm() + u1[j].norm()), 1e-300)
                if best is None or rel < best[0]:
                    best = (rel, i, j, dist0, dist1)
        if best is not None and (found is None or found[0] != "converging"):
            _, i, j, dist0, dist1 = best
            centre1, centre0 = (u1[i] + u1[j]) / 2, (u0[i] + u0[j]) / 2
            cluster = [i, j] + [m for m in range(n) if m not in (i, j) and grow_out[m]
                                and float((u1[m] - centre1).norm()) < float((u0[m] - centre0).norm())
                                and float((u1[m] - centre1).norm()) <= 4 * dist1 + 1e-12]
            cluster.sort()
            s = A1[:, cluster].sum(1)
            cancel = float(s.norm()) / max(float(A1[:, cluster].norm(dim=0).sum()), 1e-300)
            if cancel < 0.5:
                found = ("converging", k, cluster, {"incoming_distance_start": dist0, "incoming_distance_end": dist1,
                                                   "outgoing_cancellation": cancel})
                continue
        if found is None:
            lin = [m for m in range(n) if float(nl1[m]) <= LINEAR_FALL * float(nl0[m]) and float(share[m]) >= 0.05]
            if lin:
                found = ("linear", k, lin, {"layer_linear": len(lin) == n})
    if found is None:
        if float(th1.norm()) < (1 + MIN_GROWTH) * float(th0.norm()):
            return None
        k, m = max(((k, m) for k in per_layer for m in range(len(per_layer[k]["share"]))),
                   key=lambda km: per_layer[km[0]]["share"][km[1]])
        found = ("growth", k, [m], {})
    kind, k, neurons, extra = found
    r = [_params_norm(_neuron_groups(spec, th), k, neurons) for _, _, th in history]
    if r[-1] < (1 + MIN_GROWTH) * r[0]:
        return None                     # the named neurons do not grow: no run-off along them
    its = np.array([h[0] for h in history], dtype=float)
    losses = np.array([h[1] for h in history], dtype=float)
    norms = np.maximum(np.array(r), 1e-300)
    with torch.no_grad():
        along = [float(landscape.loss(th1 + s * d)) for s in (0.5, 1.0)]
    extra.update(per_layer=per_layer)
    return Channel(kind=kind, layer=int(k), neurons=[int(m) for m in neurons],
                   growth_rate=float(math.log(norms[-1] / norms[0]) / (its[-1] - its[0])),
                   loss_trend=[[int(i), float(L), float(nr)] for i, L, nr in zip(its, losses, norms)],
                   loss_along=along, loss_limit_estimate=_limit_fit(norms, losses), detail=extra)
