"""The counting bound of Brea, Simsek, Illing and Gerstner (2019) for hidden widths n_1..n_{d-1}.

- Equivalent minima: prod_l n_l! (the permutations of each hidden layer).
- K-th order permutation points of layer k: prod_l n_l! * C(n_k - K, K) / 2^K. A reduced critical point with
  n_k - K neurons in layer k, K of them duplicated (split 1/2 : 1/2): choose the K to duplicate, C(n_k - K, K)
  ways, and arrange the multiset in n_k slots, n_k!/2^K ways. Summed over layers: the paper's lower bound
  prod_l n_l! * sum_k C(n_k - K, K) / 2^K. A layer with 2K > n_k contributes nothing (log10 = -inf, None in
  JSON).
- Each such point stands for n_k!/2^K * prod_{l != k} n_l! points of weight space (its multiplicity).
Exact Python integers for small nets, log10 via math.lgamma for any width (thousands do not overflow).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

LOG10_E = 1.0 / math.log(10.0)
LOG10_2 = math.log10(2.0)
EXACT_MAX_LOG10 = 100.0  # the dict for the CLI carries exact integers up to this many digits


def _check(widths: Sequence[int], K: int | None = None) -> tuple[int, ...]:
    w = tuple(int(n) for n in widths)
    if not w or any(n < 1 for n in w) or any(int(n) != n for n in widths):
        raise ValueError(f"widths: expected hidden widths, integers >= 1, got {list(widths)}")
    if K is not None and (int(K) != K or K < 1):
        raise ValueError(f"order: expected an integer K >= 1, got {K}")
    return w


def log10_factorial(n: int) -> float:
    return math.lgamma(n + 1) * LOG10_E


def log10_comb(n: int, k: int) -> float:
    """log10 C(n, k); -inf when C(n, k) = 0 (k < 0 or k > n)."""
    if k < 0 or k > n or n < 0:
        return -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) * LOG10_E


def _log10_sum(logs: Sequence[float]) -> float:
    """log10 of sum 10^x, stable; -inf for an empty or all -inf input."""
    finite = [x for x in logs if x != -math.inf]
    if not finite:
        return -math.inf
    m = max(finite)
    return m + math.log10(sum(10.0 ** (x - m) for x in finite))


# --- exact counts (Python integers) ---

def n_minima(widths: Sequence[int]) -> int:
    """prod_l n_l!: the equivalent copies of every minimum."""
    return math.prod(math.factorial(n) for n in _check(widths))


def n_permutation_points_layer(widths: Sequence[int], k: int, K: int) -> int:
    """prod_l n_l! * C(n_k - K, K) / 2^K for hidden layer k (1-based): exact integer (0 when 2K > n_k)."""
    w = _check(widths, K)
    n = w[k - 1]
    c = math.comb(n - K, K) if n >= K else 0
    value = Fraction(n_minima(w) * c, 2 ** K)
    assert value.denominator == 1  # n!/2^K is an integer when 2K <= n
    return int(value)


def n_permutation_points(widths: Sequence[int], K: int) -> int:
    """The lower bound prod_l n_l! * sum_k C(n_k - K, K) / 2^K, exact."""
    w = _check(widths, K)
    return sum(n_permutation_points_layer(w, k, K) for k in range(1, len(w) + 1))


# --- log10 (any width) ---

def log10_minima(widths: Sequence[int]) -> float:
    return sum(log10_factorial(n) for n in _check(widths))


def log10_permutation_points_layer(widths: Sequence[int], k: int, K: int) -> float:
    """log10 of layer k's term; -inf when C(n_k - K, K) = 0."""
    w = _check(widths, K)
    lc = log10_comb(w[k - 1] - K, K)
    return -math.inf if lc == -math.inf else log10_minima(w) + lc - K * LOG10_2


def log10_permutation_points(widths: Sequence[int], K: int) -> float:
    """log10 of the lower bound; -inf when every layer is too narrow for order K."""
    w = _check(widths, K)
    return _log10_sum([log10_permutation_points_layer(w, k, K) for k in range(1, len(w) + 1)])


def log10_point_multiplicity(widths: Sequence[int], k: int, K: int) -> float:
    """log10(n_k!/2^K * prod_{l != k} n_l!): the weight-space points one K-th order permutation point of
    layer k stands for (K = 1: n_k!/2 * prod_{l != k} n_l!)."""
    w = _check(widths, K)
    return log10_minima(w) - K * LOG10_2


def _json_log(x: float) -> float | None:
    return None if x == -math.inf else x


def bound(widths: Sequence[int], order: int) -> dict:
    """Everything `permsym bound` prints: per layer and total log10 bound, exact counts when small (at most
    EXACT_MAX_LOG10 digits, else None), log10 of the minima. -inf logs are None (JSON-safe)."""
    w = _check(widths, order)
    K = int(order)
    lm = log10_minima(w)
    exact = lm <= EXACT_MAX_LOG10
    layers = []
    for k, n in enumerate(w, start=1):
        lb = log10_permutation_points_layer(w, k, K)
        layers.append({
            "layer": k, "width": n,
            "reduced_choices": (math.comb(n - K, K) if n >= K else 0) if exact else None,
            "reduced_choices_log10": _json_log(log10_comb(n - K, K)),
            "log10_bound": _json_log(lb),
            "bound": n_permutation_points_layer(w, k, K) if exact else None,
            "log10_point_multiplicity": log10_point_multiplicity(w, k, K),
        })
    total = log10_permutation_points(w, K)
    return {
        "widths": list(w), "order": K,
        "log10_minima": lm, "minima": n_minima(w) if exact else None,
        "log10_bound": _json_log(total), "bound": n_permutation_points(w, K) if exact else None,
        "log10_bound_over_minima": _json_log(total - lm) if total != -math.inf else None,
        "exact": exact, "layers": layers,
    }
