"""Network surgery on one hidden layer: neuron vectors, merging pairs, expanding (duplicating) neurons,
permuting them, and deciding whether two networks are the same up to a permutation of hidden neurons.

Neuron i of hidden layer k (1-based) has incoming vector w_i = (W_k[i, :], b_k[i]) and outgoing vector
a_i = W_{k+1}[:, i].
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .mlp import DTYPE, MLPSpec

RANDOM_ENUMERATE_MAX = 100_000   # random_disjoint_pair_sets lists every candidate up to this many combinations
RANDOM_MAX_DRAWS = 50            # ... else at most this many draws per set wanted


def _check_layer(spec: MLPSpec, layer: int) -> None:
    if not 1 <= layer <= spec.depth - 1:
        raise ValueError(f"layer: expected a hidden layer in 1..{spec.depth - 1}, got {layer}")


def incoming(spec: MLPSpec, theta: Tensor, layer: int) -> Tensor:
    """(n_k, n_{k-1} [+1]) matrix of incoming vectors of layer k (bias as the last column)."""
    W, b = spec.views(theta)[layer - 1]
    return torch.cat([W, b[:, None]], dim=1) if b is not None else W


def outgoing(spec: MLPSpec, theta: Tensor, layer: int) -> Tensor:
    """(n_{k+1}, n_k) matrix whose column i is the outgoing vector of neuron i of layer k."""
    return spec.views(theta)[layer][0]


def with_width(spec: MLPSpec, layer: int, width: int) -> MLPSpec:
    widths = list(spec.widths)
    widths[layer] = width
    return replace(spec, widths=tuple(widths))


def expand(spec: MLPSpec, theta: Tensor, layer: int, sources: Sequence[int], factors: Sequence[float]
           ) -> tuple[MLPSpec, Tensor]:
    """A network whose neuron p of layer k copies the incoming vector of neuron sources[p] of (spec, theta)
    and its outgoing vector times factors[p]. Duplication, permutation and removal are all special cases."""
    _check_layer(spec, layer)
    new_spec = with_width(spec, layer, len(sources))
    new = torch.zeros(new_spec.n_params, dtype=theta.dtype, device=theta.device)
    src = torch.as_tensor(list(sources), dtype=torch.long, device=theta.device)
    fac = torch.as_tensor(list(factors), dtype=theta.dtype, device=theta.device)
    old_layers, new_layers = spec.views(theta), new_spec.views(new)
    for k, ((W, b), (Wn, bn)) in enumerate(zip(old_layers, new_layers), start=1):
        if k == layer:
            Wn.copy_(W[src])
            if b is not None:
                bn.copy_(b[src])
        elif k == layer + 1:
            Wn.copy_(W[:, src] * fac)
            if b is not None:
                bn.copy_(b)
        else:
            Wn.copy_(W)
            if b is not None:
                bn.copy_(b)
    return new_spec, new


def permute(spec: MLPSpec, theta: Tensor, layer: int, perm: Sequence[int]) -> Tensor:
    """theta with the neurons of layer k reordered: new neuron p is old neuron perm[p]."""
    return expand(spec, theta, layer, perm, [1.0] * len(perm))[1]


def swap(spec: MLPSpec, theta: Tensor, layer: int, i: int, j: int) -> Tensor:
    """P_ij theta: neurons i and j of layer k exchanged."""
    perm = list(range(spec.widths[layer]))
    perm[i], perm[j] = j, i
    return permute(spec, theta, layer, perm)


def merge(spec: MLPSpec, theta: Tensor, layer: int, pairs: Sequence[tuple[int, int]]
          ) -> tuple[MLPSpec, Tensor, list[int]]:
    """Merge each pair (i, j) of layer k into one neuron with incoming (w_i + w_j)/2 and outgoing a_i + a_j,
    placed at min(i, j); the pairs must be disjoint. Returns the reduced net and, for each merged pair, the
    reduced index of its merged neuron."""
    _check_layer(spec, layer)
    n = spec.widths[layer]
    flat = [x for p in pairs for x in p]
    if len(set(flat)) != len(flat) or any(not 0 <= x < n for x in flat) or any(i == j for i, j in pairs):
        raise ValueError(f"pairs: expected disjoint pairs of distinct neurons in 0..{n - 1}, got {list(pairs)}")
    partner = {}
    for i, j in pairs:
        lo, hi = min(i, j), max(i, j)
        partner[lo] = hi
    dropped = {max(i, j) for i, j in pairs}
    keep = [p for p in range(n) if p not in dropped]
    red_spec, red = expand(spec, theta, layer, keep, [1.0] * len(keep))
    W_in, b_in = red_spec.views(red)[layer - 1]
    W_out = red_spec.views(red)[layer][0]
    Wk, bk = spec.views(theta)[layer - 1]
    Wo = spec.views(theta)[layer][0]
    merged_at = []
    for r, p in enumerate(keep):
        if p in partner:
            q = partner[p]
            W_in[r] = 0.5 * (Wk[p] + Wk[q])
            if b_in is not None:
                b_in[r] = 0.5 * (bk[p] + bk[q])
            W_out[:, r] = Wo[:, p] + Wo[:, q]
    for i, j in pairs:
        merged_at.append(keep.index(min(i, j)))
    return red_spec, red, merged_at


def duplicate(spec: MLPSpec, theta: Tensor, layer: int, neurons: Sequence[int],
              gamma: float | Sequence[float] = 0.5) -> tuple[MLPSpec, Tensor]:
    """Duplicate each listed neuron of layer k: the copy goes right after it, both share the incoming vector,
    the outgoing vector is split gamma : (1 - gamma) (one gamma for all, or one per listed neuron).
    gamma = 1/2 gives a permutation point."""
    gammas = [float(gamma)] * len(neurons) if isinstance(gamma, (int, float)) else [float(g) for g in gamma]
    split = dict(zip(neurons, gammas))
    sources, factors = [], []
    for m in range(spec.widths[layer]):
        if m in split:
            sources += [m, m]
            factors += [split[m], 1.0 - split[m]]
        else:
            sources.append(m)
            factors.append(1.0)
    return expand(spec, theta, layer, sources, factors)


def unmerge(red_spec: MLPSpec, red: Tensor, layer: int, pair: tuple[int, int], gamma: float = 0.5
            ) -> tuple[MLPSpec, Tensor]:
    """Inverse alignment of `merge` for one pair (i, j): the merged neuron duplicated back into slots i and j
    (outgoing split gamma : 1 - gamma), every other neuron back in its original slot."""
    i, j = sorted(pair)
    n = red_spec.widths[layer] + 1
    sources, factors = [], []
    for p in range(n):
        if p == i:
            sources.append(i), factors.append(gamma)
        elif p == j:
            sources.append(i), factors.append(1.0 - gamma)
        else:
            sources.append(p if p < j else p - 1), factors.append(1.0)
    return expand(red_spec, red, layer, sources, factors)


def _match(cost: np.ndarray) -> list[int]:
    _, cols = linear_sum_assignment(cost)
    return [int(c) for c in cols]


def align(spec: MLPSpec, theta_a: Tensor, theta_b: Tensor, max_passes: int = 6) -> Tensor:
    """theta_b with the neurons of every hidden layer permuted to best match theta_a.

    Layer k is matched (Hungarian) on its incoming vectors, whose columns refer to layer k-1, aligned just
    before it; its outgoing vectors refer to layer k+1, which is not aligned yet on the first pass, so they
    enter the cost only through a permutation-invariant summary (their sorted entries) on that pass, and as
    they are on later passes. Passes repeat until no layer changes. An exact permutation of every hidden
    layer of theta_a is undone exactly whenever neurons are distinguishable by their weights."""
    b = theta_b.clone()
    last = spec.depth - 1
    for pass_no in range(max_passes):
        changed = False
        for k in range(1, spec.depth):
            ia, ib = incoming(spec, theta_a, k).cpu().numpy(), incoming(spec, b, k).cpu().numpy()
            oa, ob = outgoing(spec, theta_a, k).T.cpu().numpy(), outgoing(spec, b, k).T.cpu().numpy()
            if k < last and pass_no == 0:
                oa, ob = np.sort(oa, axis=1), np.sort(ob, axis=1)
            va, vb = np.concatenate([ia, oa], axis=1), np.concatenate([ib, ob], axis=1)
            perm = _match(((va[:, None, :] - vb[None, :, :]) ** 2).sum(-1))
            if perm != list(range(len(perm))):
                b = permute(spec, b, k, perm)
                changed = True
        if not changed and pass_no > 0:
            break
    return b


def distance_up_to_permutation(spec: MLPSpec, theta_a: Tensor, theta_b: Tensor) -> float:
    """max |theta_a - P theta_b| over the best neuron permutation P found by `align`."""
    return float((theta_a - align(spec, theta_a, theta_b)).abs().max())


def neuron_pairs(spec: MLPSpec, theta: Tensor, layer: int, selection: str, seed: int = 0
                 ) -> list[tuple[int, int]]:
    """Pairs of layer k to merge: 'all', 'nearest' (each neuron with its nearest partner by incoming vector),
    or 'random:N' (N distinct pairs drawn with `seed`)."""
    n = spec.widths[layer]
    all_pairs = list(itertools.combinations(range(n), 2))
    if selection == "all":
        return all_pairs
    if selection == "nearest":
        v = incoming(spec, theta, layer).cpu().numpy()
        d = ((v[:, None] - v[None]) ** 2).sum(-1) + np.diag(np.full(n, np.inf))
        return sorted({tuple(sorted((i, int(d[i].argmin())))) for i in range(n)})
    if selection.startswith("random:"):
        count = min(int(selection.split(":", 1)[1]), len(all_pairs))
        rng = np.random.default_rng(seed)
        idx = sorted(rng.choice(len(all_pairs), size=count, replace=False))
        return [all_pairs[i] for i in idx]
    raise ValueError(f"pairs: expected 'all', 'nearest' or 'random:N', got {selection!r}")


def iter_disjoint_pair_sets(pairs: Sequence[tuple[int, int]], order: int) -> Iterator[tuple[tuple[int, int], ...]]:
    """Every set of `order` mutually disjoint pairs from `pairs`, lazily, in the lexicographic order of
    itertools.combinations(pairs, order) (the combinations whose pairs overlap skipped). Built directly by a
    depth-first search that only ever extends a set by a pair disjoint from it, so the k-th set costs
    O(k + len(pairs) * order) work, never the C(len(pairs), order) combinations."""
    pairs = [tuple(p) for p in pairs]
    if order < 1:
        raise ValueError(f"order: expected an integer >= 1, got {order}")
    n_pairs = len(pairs)
    chosen: list[int] = []
    used: set[int] = set()

    def extend(first: int):
        if len(chosen) == order:
            yield tuple(pairs[c] for c in chosen)
            return
        for c in range(first, n_pairs - (order - len(chosen) - 1)):
            i, j = pairs[c]
            if i in used or j in used or i == j:
                continue
            chosen.append(c)
            used.update((i, j))
            yield from extend(c + 1)
            chosen.pop()
            used.difference_update((i, j))

    yield from extend(0)


def disjoint_pair_sets(pairs: Sequence[tuple[int, int]], order: int, limit: int | None = None
                       ) -> list[tuple[tuple[int, int], ...]]:
    """All sets of `order` mutually disjoint pairs from `pairs` (in lexicographic order, at most `limit`)."""
    return list(itertools.islice(iter_disjoint_pair_sets(pairs, order), limit))


def random_disjoint_pair_sets(pairs: Sequence[tuple[int, int]], order: int, count: int, seed: int = 0
                              ) -> list[tuple[tuple[int, int], ...]]:
    """`count` distinct sets of `order` disjoint pairs from `pairs` drawn at random with `seed` (every one
    when there are at most `count`), in lexicographic order. Sets are drawn directly (order pair indices,
    kept when disjoint and new), never enumerated, unless C(len(pairs), order) is small enough (at most
    RANDOM_ENUMERATE_MAX) to list and choose from."""
    pairs = [tuple(p) for p in pairs]
    n_pairs = len(pairs)
    if count < 1 or order < 1 or n_pairs < order:
        return []
    rng = np.random.default_rng(seed)
    if math.comb(n_pairs, order) <= max(RANDOM_ENUMERATE_MAX, 4 * count):
        every = disjoint_pair_sets(pairs, order)
        if len(every) <= count:
            return every
        return [every[i] for i in sorted(rng.choice(len(every), size=count, replace=False))]
    found: set[tuple[int, ...]] = set()
    for _ in range(RANDOM_MAX_DRAWS * count):
        idx = tuple(sorted(int(c) for c in rng.choice(n_pairs, size=order, replace=False)))
        flat = [x for c in idx for x in pairs[c]]
        if len(set(flat)) == len(flat):
            found.add(idx)
            if len(found) >= count:
                break
    return [tuple(pairs[c] for c in idx) for idx in sorted(found)]


def pair_sets(spec: MLPSpec, theta: Tensor, layer: int, selection: str, order: int, limit: int | None = None,
              seed: int = 0) -> list[tuple[tuple[int, int], ...]]:
    """The sets of `order` disjoint pairs of layer k that a trial merges: from neuron_pairs(selection), every
    one in lexicographic order, at most `limit` (the trial's max_pair_sets): the first `limit` of them for
    'all' and 'nearest', `limit` drawn at random with `seed` for 'random:N'."""
    pairs = neuron_pairs(spec, theta, layer, selection, seed=seed)
    if limit is not None and selection.startswith("random:"):
        return random_disjoint_pair_sets(pairs, order, limit, seed=seed)
    return disjoint_pair_sets(pairs, order, limit)


def as_theta(x, device=None) -> Tensor:
    return torch.as_tensor(x, dtype=DTYPE, device=device)
