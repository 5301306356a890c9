"""The counting bound against brute-force enumeration of distinct arrangements, exact vs log space."""
import itertools
import math

import pytest

from permsym_core import theory


def arrangements(n: int, K: int) -> set[tuple[int, ...]]:
    """Distinct length-n sequences of a reduced set of n - K neurons, K of which are duplicated."""
    out = set()
    for dup in itertools.combinations(range(n - K), K):
        multiset = list(range(n - K)) + list(dup)
        out.update(itertools.permutations(multiset))
    return out


@pytest.mark.parametrize("n", range(1, 8))
def test_single_layer_matches_enumeration(n):
    for K in range(1, n // 2 + 1):
        count = len(arrangements(n, K))
        assert count == math.factorial(n) * math.comb(n - K, K) // 2 ** K
        assert theory.n_permutation_points([n], K) == count
        assert theory.n_permutation_points_layer([n], 1, K) == count
    assert theory.n_minima([n]) == len(set(itertools.permutations(range(n))))


def test_paper_examples():
    assert theory.n_permutation_points([6], 2) == 1080
    assert theory.n_permutation_points([7], 3) == 2520


@pytest.mark.parametrize("widths,K", [((4, 3), 1), ((5, 4), 2), ((3, 5), 2)])
def test_two_layers_match_enumeration(widths, K):
    n1, n2 = widths
    points = set()
    for s1 in arrangements(n1, K) if 2 * K <= n1 else ():
        for s2 in itertools.permutations(range(n2)):
            points.add((s1, s2))
    for s2 in arrangements(n2, K) if 2 * K <= n2 else ():
        for s1 in itertools.permutations(range(n1)):
            points.add((s1, s2))
    assert theory.n_permutation_points(widths, K) == len(points)
    per_layer = [theory.n_permutation_points_layer(widths, k, K) for k in (1, 2)]
    assert sum(per_layer) == len(points)
    if 2 * K > n1:
        assert per_layer[0] == 0 and theory.log10_permutation_points_layer(widths, 1, K) == -math.inf


@pytest.mark.parametrize("widths", [(6, 4), (10, 7, 5), (20,), (12, 12)])
def test_log_space_agrees_with_exact(widths):
    assert theory.log10_minima(widths) == pytest.approx(math.log10(theory.n_minima(widths)), rel=1e-12)
    for K in (1, 2, 3):
        exact = theory.n_permutation_points(widths, K)
        assert theory.log10_permutation_points(widths, K) == pytest.approx(math.log10(exact), rel=1e-12)
        for k in range(1, len(widths) + 1):
            e = theory.n_permutation_points_layer(widths, k, K)
            lg = theory.log10_permutation_points_layer(widths, k, K)
            assert (lg == -math.inf) if e == 0 else lg == pytest.approx(math.log10(e), rel=1e-12)
            mult = math.factorial(widths[k - 1]) // 2 ** K * math.prod(
                math.factorial(n) for i, n in enumerate(widths) if i != k - 1)
            assert theory.log10_point_multiplicity(widths, k, K) == pytest.approx(math.log10(mult), rel=1e-12)


def test_huge_widths_do_not_overflow():
    widths = (3000, 2000)
    b = theory.bound(widths, 3)
    assert b["exact"] is False and b["bound"] is None and b["minima"] is None
    assert math.isfinite(b["log10_bound"]) and math.isfinite(b["log10_minima"])
    assert b["log10_minima"] == pytest.approx((math.lgamma(3001) + math.lgamma(2001)) / math.log(10), rel=1e-14)
    # ratio to the minima: sum_k C(n_k - 3, 3) / 8
    ratio = (math.comb(2997, 3) + math.comb(1997, 3)) / 8
    assert b["log10_bound_over_minima"] == pytest.approx(math.log10(ratio), rel=1e-12)


def test_bound_dict_and_too_narrow_layer():
    b = theory.bound((6, 3), 2)
    assert b["minima"] == 720 * 6 and b["bound"] == 720 * 6 * 6 // 4
    assert b["layers"][1]["log10_bound"] is None and b["layers"][1]["bound"] == 0
    assert b["log10_bound"] == pytest.approx(math.log10(720 * 6 * 6 // 4), rel=1e-12)
    assert theory.bound((3,), 2)["log10_bound"] is None


@pytest.mark.parametrize("widths,K", [((0, 3), 1), ((3,), 0), ((), 1), ((2.5,), 1)])
def test_bad_input(widths, K):
    with pytest.raises(ValueError):
        theory.bound(widths, K)
