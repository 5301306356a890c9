"""Wide layers: disjoint pair sets generated lazily (never the C(#pairs, K) combinations), the random lazy
variant, the per-trial budget max_pair_sets, and third-order (K = 3) permutation points of a width-7 layer."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from permsym_core import surgery
from permsym_core.config import ConfigError, TrialConfig


def _brute(pairs, order):
    return [c for c in itertools.combinations(pairs, order) if len({x for p in c for x in p}) == 2 * order]


@pytest.mark.parametrize("n,order", [(4, 2), (5, 2), (6, 3), (7, 3), (8, 4), (7, 1)])
def test_lazy_pair_sets_are_the_filtered_combinations(n, order):
    pairs = list(itertools.combinations(range(n), 2))
    want = _brute(pairs, order)
    assert surgery.disjoint_pair_sets(pairs, order) == want
    # the number of sets of K disjoint pairs among n neurons: n! / (2^K K! (n - 2K)!)
    assert len(want) == math.factorial(n) // (2 ** order * math.factorial(order) * math.factorial(n - 2 * order))
    assert surgery.disjoint_pair_sets(pairs, order, limit=3) == want[:3]
    nearest_like = [(0, 1), (1, 2), (3, 4), (2, 5)][: n - 1]
    assert surgery.disjoint_pair_sets(nearest_like, order) == _brute(nearest_like, order)


def test_pair_sets_of_a_wide_layer_come_lazily():
    """Width 100, K = 2 and 3: about 1.2e7 and 3.9e11 sets exist; the first ones come without listing them
    (a filtered enumeration would not return here), and the random variant draws distinct disjoint sets."""
    pairs = list(itertools.combinations(range(100), 2))
    first = surgery.disjoint_pair_sets(pairs, 3, limit=5)
    assert first == [((0, 1), (2, 3), (4, 5)), ((0, 1), (2, 3), (4, 6)), ((0, 1), (2, 3), (4, 7)),
                     ((0, 1), (2, 3), (4, 8)), ((0, 1), (2, 3), (4, 9))]
    gen = surgery.iter_disjoint_pair_sets(pairs, 2)
    assert next(gen) == ((0, 1), (2, 3))
    for order in (2, 3):
        drawn = surgery.random_disjoint_pair_sets(pairs, order, 64, seed=3)
        assert len(drawn) == 64 == len(set(drawn)) and drawn == sorted(drawn)
        assert all(len({x for p in s for x in p}) == 2 * order for s in drawn)
        assert drawn == surgery.random_disjoint_pair_sets(pairs, order, 64, seed=3)
        assert drawn != surgery.random_disjoint_pair_sets(pairs, order, 64, seed=4)


def test_random_pair_sets_of_a_small_layer_are_a_subset_or_all():
    pairs = list(itertools.combinations(range(6), 2))
    every = surgery.disjoint_pair_sets(pairs, 2)                       # 45 sets
    some = surgery.random_disjoint_pair_sets(pairs, 2, 10, seed=1)
    assert len(some) == 10 and set(some) <= set(every) and some == sorted(some)
    assert surgery.random_disjoint_pair_sets(pairs, 2, 100, seed=1) == every


def test_trial_pair_sets_honour_the_budget():
    spec, theta = _net(9)
    every = surgery.pair_sets(spec, theta, 1, "all", 2)
    assert len(every) == 378                                           # 9! / (2^2 2! 5!)
    assert surgery.pair_sets(spec, theta, 1, "all", 2, limit=7) == every[:7]
    rnd = surgery.pair_sets(spec, theta, 1, "random:20", 2, limit=7, seed=2)
    pool = surgery.neuron_pairs(spec, theta, 1, "random:20", seed=2)
    assert len(rnd) == 7 and all(set(s) <= set(pool) for s in rnd)


@pytest.mark.parametrize("bad", [0, -3, 1.5, "10", True])
def test_max_pair_sets_is_validated(bad):
    with pytest.raises(ConfigError, match=r"^max_pair_sets: expected an integer >= 1 or null"):
        TrialConfig(max_pair_sets=bad)


def test_max_pair_sets_keeps_old_trial_keys():
    """Unset, the budget is left out of to_dict, so a config's trial key is the one it had before the field
    existed (pinned: the key computed by the code of a7b8af4); set, it is part of the key."""
    cfg = TrialConfig(widths=(5,), seed=3)
    assert "max_pair_sets" not in cfg.to_dict()
    assert cfg.trial_key() == "ccc5b83e9ce0208d"        # its key at a7b8af4, before the field existed
    budget = TrialConfig(widths=(5,), seed=3, max_pair_sets=4)
    assert budget.to_dict()["max_pair_sets"] == 4 and budget.trial_key() != cfg.trial_key()
    assert TrialConfig.from_dict(budget.to_dict()) == budget


def _net(width):
    from permsym_core.mlp import MLPSpec

    spec = MLPSpec((2, width, 1), "tanh", True)
    return spec, spec.init(0)


def test_third_order_points_of_a_width_7_layer_are_critical():
    """K = 3 in a layer of width 7: 105 pair sets exist; for two of them (the budget) the merged network is
    minimised and polished, and its three merged neurons duplicated back give a width-7 point at the
    reduced loss whose gradient is at the tolerance (Fukumizu-Amari embedding, three pairs at once)."""
    from permsym_core.certify import polish
    from permsym_core.landscape import Landscape
    from permsym_core.study import _Trial, _minimise

    cfg = TrialConfig(task="teacher", widths=(7,), activation="tanh", seed=0, orders=(3,), max_pair_sets=2,
                      task_options={"n_samples": 40}, adam_steps=1000)
    trial = _Trial(cfg)
    assert trial.train_minimum()["converged"]
    sets = trial.pair_sets(1, 3)
    assert len(sets) == 2 and len(surgery.pair_sets(trial.spec, trial.theta_star, 1, "all", 3)) == 105
    for pair_set in sets:
        red_spec, red0, merged_at = surgery.merge(trial.spec, trial.theta_star, 1, pair_set)
        assert red_spec.widths[1] == 4
        red_land = Landscape(red_spec, trial.task.X, trial.task.Y, device=trial.landscape.device)
        res = _minimise(red_land, red0, cfg)
        assert res.converged
        pol = polish(red_land, res.theta)
        spec7, theta_p = surgery.duplicate(red_spec, pol.theta, 1, sorted(merged_at), 0.5)
        assert spec7 == trial.spec
        loss_p, grad_p = trial.landscape.loss_grad(theta_p)
        assert float(grad_p.abs().max()) <= cfg.grad_tol
        assert loss_p == pytest.approx(pol.loss, rel=1e-12, abs=1e-300)
        # three duplicated pairs: each exchange of a pair's copies fixes the point
        for i, j in [(m + k, m + k + 1) for k, m in enumerate(sorted(merged_at))]:
            assert torch.equal(surgery.swap(spec7, theta_p, 1, i, j), theta_p)
