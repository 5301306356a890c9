"""Equal-loss valleys at a permutation point: segments of exactly constant loss that realise transpositions
of a hidden layer's neurons, the permutation group they generate, and walks to any permuted point.

A permutation point of layer k holds a duplicated pair (i, j): w_i = w_j, a_i = a_j = a/2 (docs/valleys.md
derives why each move below keeps the loss constant). Two moves, each a straight segment in weight space:
- slide(s, d): outgoing weight moves from neuron s to neuron d along a_s(t) + a_d(t) = const. The loss is
  constant when w_s = w_d: layer k+1 sees only a_s sigma(w_s.x) + a_d sigma(w_d.x) = (a_s + a_d) sigma(w.x).
- move(s, to): the incoming vector (and bias) of a silent neuron s (a_s = 0) goes straight onto neuron
  `to`'s. The loss is constant because s contributes a_s sigma(w_s.x) = 0 to layer k+1 whatever w_s is.
With the pair as a free slot (slide one copy silent), a transposition (p, q) of two other neurons is nine
segments (park p's neuron in the free slot, move q's into p, move the parked one into q, re-split the pair);
a transposition of one copy i with q is five. Each ends exactly at surgery.swap(theta, p, q). The
transposition of the pair itself fixes the point (P_ij theta = theta) and is used only when nothing else
connects the layer (n_k = 2). Transpositions generate the group prod over the connected components C of
their graph of S_|C|, so `group_order` is that product (checked against a brute-force closure in the tests).

Flatness is measured, never assumed: each segment is sampled at >= MIN_SAMPLES points and its largest
|L(t) - L_ref| / max(|L_ref|, floor) recorded, floor = ZERO_LOSS_RTOL x the zero network's loss (the loss's
resolution, as in permsym_core.canonical). A move of a neuron that is not silent fails this check.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from . import surgery
from .canonical import ZERO_LOSS_RTOL, zero_loss_scale
from .landscape import Landscape
from .mlp import MLPSpec

VALLEY_RTOL = 1e-12        # a segment is flat when its relative loss deviation is at most this
MIN_SAMPLES = 21           # samples per segment, both ends included


@dataclass
class Segment:
    """One straight segment start -> end: kind 'slide' (outgoing weight neurons[0] -> neurons[1]) or 'move'
    (the incoming vector of neurons[0] onto that of neurons[1])."""

    kind: str
    neurons: tuple[int, int]
    start: Tensor
    end: Tensor


@dataclass
class _Walk:
    """The current point of a valley walk and the segments that led to it."""

    spec: MLPSpec
    theta: Tensor
    layer: int
    segments: list[Segment] = field(default_factory=list)

    def _push(self, kind: str, a: int, b: int, nxt: Tensor) -> None:
        self.segments.append(Segment(kind, (a, b), self.theta, nxt))
        self.theta = nxt

    def slide(self, src: int, dst: int, new_src: Tensor | None = None, new_dst: Tensor | None = None) -> None:
        """Outgoing weight from src to dst, their sum fixed; by default all of it (src ends silent)."""
        nxt = self.theta.clone()
        A = self.spec.views(nxt)[self.layer][0]
        a_s, a_d = A[:, src].clone(), A[:, dst].clone()
        A[:, src] = 0.0 if new_src is None else new_src
        A[:, dst] = a_s + a_d if new_dst is None else new_dst
        self._push("slide", src, dst, nxt)

    def move(self, silent: int, to: int) -> None:
        """The incoming vector (and bias) of `silent` onto neuron `to`'s."""
        nxt = self.theta.clone()
        W, b = self.spec.views(nxt)[self.layer - 1]
        W[silent] = W[to]
        if b is not None:
            b[silent] = b[to]
        self._push("move", silent, to, nxt)


def transposition_segments(spec: MLPSpec, theta: Tensor, layer: int, free: tuple[int, int], p: int, q: int
                           ) -> list[Segment]:
    """Equal-loss segments from theta (a point whose neurons `free` = (i, j) are a duplicated pair) to
    surgery.swap(theta, p, q); [] when {p, q} is the pair itself (the swap fixes theta)."""
    i, j = free
    if p == q or {p, q} == {i, j}:
        return []
    A0 = spec.views(theta)[layer][0]
    walk = _Walk(spec, theta, layer)
    if p in free or q in free:
        s, o = (p, q) if p in free else (q, p)           # s: the pair's copy that is swapped, o: the other neuron
        f = j if s == i else i                           # the copy that stays
        a_s0, a_f0 = A0[:, s].clone(), A0[:, f].clone()
        walk.slide(s, f)                                 # s silent, f carries the pair's whole outgoing weight
        walk.move(s, o)                                  # s onto o's incoming vector
        walk.slide(o, s)                                 # o silent, s now holds o's neuron
        walk.move(o, f)                                  # o onto the pair's incoming vector
        walk.slide(f, o, a_f0, a_s0)                     # re-split: o is the pair's copy now
        return walk.segments
    a_i0, a_j0 = A0[:, i].clone(), A0[:, j].clone()
    walk.slide(j, i)                                     # j silent: the free slot
    walk.move(j, p)
    walk.slide(p, j)                                     # j holds p's neuron, p silent
    walk.move(p, q)
    walk.slide(q, p)                                     # p holds q's neuron, q silent
    walk.move(q, j)
    walk.slide(j, q)                                     # q holds p's neuron, j silent
    walk.move(j, i)
    walk.slide(i, j, a_i0, a_j0)                         # the pair re-split as it was
    return walk.segments


def loss_floor(landscape: Landscape) -> float:
    """The loss's resolution: ZERO_LOSS_RTOL x the loss of the zero network."""
    return ZERO_LOSS_RTOL * zero_loss_scale(landscape)


def sample_segment(landscape: Landscape, seg: Segment, n_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Losses at n_samples equally spaced points of the segment (coordinates that do not change stay exact;
    the last sample is seg.end itself)."""
    d = seg.end - seg.start
    ts = np.linspace(0.0, 1.0, max(int(n_samples), 2))
    out = [landscape.loss(seg.start + float(t) * d) for t in ts[:-1]]
    return np.asarray(out + [landscape.loss(seg.end)])


def segments_losses(landscape: Landscape, segments: Sequence[Segment], n_samples: int = MIN_SAMPLES
                    ) -> list[np.ndarray]:
    return [sample_segment(landscape, s, n_samples) for s in segments]


def rel_deviation(losses: np.ndarray | Sequence[float], loss_ref: float, floor: float) -> float:
    """max |L - L_ref| / max(|L_ref|, floor) (0 for no losses)."""
    losses = np.asarray(losses, dtype=float)
    if losses.size == 0:
        return 0.0
    return float(np.max(np.abs(losses - loss_ref)) / max(abs(loss_ref), floor))


# -- the group the transpositions generate ----------------------------------------------------------------
def _components(n: int, transpositions: Sequence[tuple[int, int]]) -> list[int]:
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in transpositions:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
    sizes: dict[int, int] = {}
    for x in range(n):
        sizes[root(x)] = sizes.get(root(x), 0) + 1
    return sorted(sizes.values())


def group_order(n: int, transpositions: Sequence[tuple[int, int]]) -> int:
    """Order of the subgroup of S_n generated by the transpositions: the product of |C|! over the connected
    components C of the graph whose edges they are (the transpositions of a connected set generate its
    symmetric group)."""
    return math.prod(math.factorial(s) for s in _components(n, transpositions))


def closure_order(n: int, generators: Sequence[Sequence[int]]) -> int:
    """Order of the group generated by permutations of range(n) (as image tuples), by brute-force closure;
    for small n only (the tests' oracle for group_order)."""
    identity = tuple(range(n))
    gens = [tuple(g) for g in generators]
    seen, frontier = {identity}, [identity]
    while frontier:
        nxt = []
        for x in frontier:
            for g in gens:
                y = tuple(x[g[k]] for k in range(n))
                if y not in seen:
                    seen.add(y)
                    nxt.append(y)
        frontier = nxt
    return len(seen)


def transposition_as_permutation(n: int, p: int, q: int) -> tuple[int, ...]:
    perm = list(range(n))
    perm[p], perm[q] = q, p
    return tuple(perm)


def generating_transpositions(n: int, pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """A spanning tree of transpositions of range(n) that avoids the duplicated pairs (whose swaps fix the
    point): adjacent ones first, then (s, s+2), then any; a pair is used only when nothing else connects."""
    pair_set = {tuple(sorted(p)) for p in pairs}
    candidates = [(s, s + 1) for s in range(n - 1)] + [(s, s + 2) for s in range(n - 2)]
    candidates += [(a, b) for a in range(n) for b in range(a + 3, n)]
    candidates = [c for c in candidates if c not in pair_set] + sorted(pair_set)
    chosen: list[tuple[int, int]] = []
    for c in candidates:
        if len(_components(n, chosen + [c])) < len(_components(n, chosen)):
            chosen.append(c)
    return chosen


# -- the valley of one permutation point -----------------------------------------------------------------
def build_valley(landscape: Landscape, theta: Tensor, layer: int, pairs: Sequence[tuple[int, int]],
                 n_samples: int = MIN_SAMPLES, keep_losses: bool = True) -> tuple[list[dict], dict]:
    """Segments realising generating transpositions of layer k at the permutation point theta (its duplicated
    pairs `pairs`, the first one the free slot). Returns (one item per transposition, the group summary).
    A transposition counts as realised when all its segments are flat to VALLEY_RTOL and its walk ends at
    surgery.swap(theta, p, q) exactly; group_order is computed from the realised ones."""
    spec = landscape.spec
    n = spec.widths[layer]
    loss_ref = landscape.loss(theta)
    floor = loss_floor(landscape)
    items, realised = [], []
    for p, q in generating_transpositions(n, pairs):
        segs = transposition_segments(spec, theta, layer, tuple(pairs[0]), p, q)
        losses = segments_losses(landscape, segs, n_samples)
        end = segs[-1].end if segs else theta
        target = surgery.swap(spec, theta, layer, p, q)
        end_error = float((end - target).abs().max())
        dev = max((rel_deviation(ls, loss_ref, floor) for ls in losses), default=0.0)
        flat = dev <= VALLEY_RTOL
        if flat and end_error == 0.0:
            realised.append((p, q))
        item = {"layer": layer, "transposition": [p, q], "trivial": not segs, "n_segments": len(segs),
                "segment_kinds": [s.kind for s in segs], "n_samples": n_samples, "max_rel_dev": dev,
                "flat": flat, "end_error": end_error}
        if keep_losses:
            item["losses"] = [float(v) for ls in losses for v in ls]
        items.append(item)
    order = group_order(n, realised)
    group = {"layer": layer, "n_k": n, "pairs": [list(p) for p in pairs], "loss": loss_ref, "loss_floor": floor,
             "transpositions": [list(t) for t in realised], "n_realised": len(realised),
             "n_attempted": len(items), "group_order": order,
             "log10_group_order": float(np.log10(float(order))) if order < 10 ** 300 else None,
             "n_factorial": math.factorial(n), "generates_all": order == math.factorial(n),
             "max_rel_dev": max((it["max_rel_dev"] for it in items), default=0.0), "rtol": VALLEY_RTOL}
    return items, group


def permutation_walk(spec: MLPSpec, theta: Tensor, layer: int, free: tuple[int, int], sigma: Sequence[int]
                     ) -> tuple[list[Segment], int]:
    """Equal-loss segments from theta (duplicated pair `free`) to surgery.permute(theta, sigma): a selection
    sort by transpositions, each realised by transposition_segments at the walk's current point (whose free
    pair moves with it). Returns (segments, number of transpositions)."""
    n = spec.widths[layer]
    sigma = [int(s) for s in sigma]
    if sorted(sigma) != list(range(n)):
        raise ValueError(f"sigma: expected a permutation of 0..{n - 1}, got {sigma}")
    free_labels = set(free)
    labels = list(range(n))              # the walk's point is surgery.permute(theta, labels)
    current, segments, n_swaps = theta, [], 0
    for pos in range(n):
        want = sigma[pos]
        if labels[pos] == want or (want in free_labels and labels[pos] in free_labels):
            continue
        if want in free_labels:
            q = next(r for r in range(pos + 1, n) if labels[r] in free_labels)
        else:
            q = labels.index(want)
        pair_now = tuple(r for r in range(n) if labels[r] in free_labels)
        segs = transposition_segments(spec, current, layer, pair_now, pos, q)
        segments += segs
        current = segs[-1].end
        labels[pos], labels[q] = labels[q], labels[pos]
        n_swaps += 1
    return segments, n_swaps


def permuted_minimum_path(landscape: Landscape, half_images: Tensor, half_losses: Sequence[float], layer: int,
                          pair: tuple[int, int], sigma: Sequence[int], n_samples: int = MIN_SAMPLES) -> dict:
    """minimum -> permutation point -> valley -> sigma(permutation point) -> sigma minimum: the first leg is a
    traced half path or a saddle's descent leg (half_images[0] = the start minimum, theta* for a traced half;
    half_images[-1] = the point, whose merged pair is `pair`), the valley the permutation walk, the last leg
    the first one reversed and permuted by sigma."""
    spec = landscape.spec
    theta_p = half_images[-1]
    segs, n_swaps = permutation_walk(spec, theta_p, layer, tuple(pair), sigma)
    valley = [float(v) for ls in segments_losses(landscape, segs, n_samples) for v in ls]
    end = segs[-1].end if segs else theta_p
    end_error = float((end - surgery.permute(spec, theta_p, layer, sigma)).abs().max())
    back = [landscape.loss(surgery.permute(spec, x, layer, sigma)) for x in half_images.flip(0)]
    first = [float(v) for v in half_losses]
    losses = first + valley + back
    loss_p = landscape.loss(theta_p)
    floor = loss_floor(landscape)
    excess = (max(losses) - loss_p) / max(abs(loss_p), floor)
    return {"layer": layer, "pair": [int(pair[0]), int(pair[1])], "sigma": [int(s) for s in sigma],
            "n_transpositions": n_swaps, "n_segments": len(segs), "n_samples": n_samples,
            "legs": [len(first), len(valley), len(back)], "losses": losses, "point_loss": loss_p,
            "start_loss": first[0], "end_loss": back[-1], "max_loss": max(losses),
            "max_rel_excess": float(excess), "within_tol": bool(excess <= VALLEY_RTOL), "rtol": VALLEY_RTOL,
            "valley_max_rel_dev": rel_deviation(valley, loss_p, floor), "valley_end_error": end_error}
