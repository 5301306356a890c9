"""One trial end to end (issue 3): permutation points, plateaus, Fukumizu-Amari, gamma-line, paths, counts."""
import json
import math

import pytest
from click.testing import CliRunner

from permsym_core.config import TrialConfig
from permsym_core.study import run_trial
from sweeps.cli import main


@pytest.fixture(scope="module")
def toy4():
    return run_trial(TrialConfig(task="toy", widths=(4,), activation="sigmoid", seed=0))


@pytest.fixture(scope="module")
def teacher_deep():
    # the lab's activation g: reduced critical points of non-zero loss in both layers (tanh and softplus
    # students of this teacher mostly run into channels to infinity and never reach 1e-10)
    return run_trial(TrialConfig(task="teacher", widths=(3, 3), activation="g", seed=0,
                                 task_options={"widths": [3, 3], "n_samples": 200}, gamma_scan=False,
                                 path_relax=False))


def test_minimum_is_certified(toy4):
    m = toy4["minimum"]
    assert m["converged"] and m["grad_inf"] <= 1e-10
    assert m["index"] == 0 and m["is_minimum"]
    assert m["n_params"] == 12                     # 4 x 2 incoming + 4 outgoing, no biases
    assert m["polish"]["grad_inf_after"] <= m["polish"]["grad_inf_before"]


def test_every_reduced_point_yields_critical_permutation_points(toy4):
    reduced = toy4["reduced"]
    assert reduced and all(r["converged"] and r["grad_inf"] <= 1e-10 for r in reduced)
    for rid, r in enumerate(reduced):
        pts = [p for p in toy4["points"] if p["reduced_id"] == rid]
        assert len(pts) == 3                       # one per neuron of the 3-neuron reduced net
        for p in pts:
            # the duplicated point's gradient is the reduced one's (halved on w, copied on a)
            assert p["grad_inf"] <= r["grad_inf"] * (1 + 1e-6) + 1e-15
            assert p["critical"]
            assert abs(p["loss"] - r["loss"]) <= 1e-14 * abs(r["loss"])
            assert p["counts_agree"] is True
            assert p["n_zero"] >= 1                 # the gamma-line is flat
            assert p["plateau_dim"] == 1


def test_pairs_are_deduplicated_up_to_permutation(toy4):
    from_pairs = [tuple(fp[0]) for r in toy4["reduced"] for fp in r["from_pairs"]]
    assert sorted(from_pairs) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    losses = sorted(r["loss"] for r in toy4["reduced"])
    # distinct reduced critical points of this task differ in loss (the same loss would have been merged)
    assert all(b - a > 1e-9 * a for a, b in zip(losses, losses[1:]))
    for r in toy4["reduced"]:
        assert isinstance(r["reducible"], bool) and r["canonical_widths"] is not None
        assert r["reducible"] == bool(r["reduced_by"])
        assert r["canonical_widths"][0] <= 3 and (r["canonical_widths"] == [3]) == (not r["reducible"])


def test_plateau_check(toy4):
    for p in toy4["points"]:
        assert p["plateau"]["max_rel_dloss"] <= 1e-12
        assert p["plateau"]["line_grad_inf"] <= 1e-10


def test_fukumizu_amari_prediction_equals_hessian_index(toy4):
    for p in toy4["points"]:
        assert p["fa_index"] == p["index"] == p["index_predicted"]
        assert p["claim_guaranteed_holds"] is True                 # a theorem: index + n_zero >= n_(k+1)


def test_gamma_scan_follows_the_split_block(toy4):
    scans = toy4["gamma_scan"]
    irreducible = {r["id"] for r in toy4["reduced"] if not r["reducible"]}
    assert len(scans) == sum(1 for p in toy4["points"] if p["reduced_id"] in irreducible) > 0
    for s in scans:
        assert min(s["gammas"]) < 0 and max(s["gammas"]) > 1
        assert s["index"] == s["index_predicted"]


def test_path_is_symmetric_with_equal_ends(toy4):
    paths = toy4["paths"]
    assert len(paths) == 6
    for p in paths:
        losses = p["losses"]
        assert len(losses) >= 41
        # relative 1e-12, plus the round-off of a near-zero loss: permuting the units moves each output by
        # ~eps, hence the loss by ~2 sqrt(L) eps (at L = 7e-11: ~4e-21; seen 1.2e-22)
        tol = 1e-12 * abs(losses[0]) + 8 * 2.2e-16 * math.sqrt(abs(losses[0])) + 1e-24
        assert abs(losses[0] - losses[-1]) <= tol
        for a, b in zip(losses, reversed(losses)):
            assert abs(a - b) <= max(tol, 1e-12 * abs(a))
        assert p["barrier"] == pytest.approx(max(losses) - losses[0], rel=0, abs=1e-15)
        assert p["barrier"] >= p["point_loss"] - losses[0] - 1e-15


def test_counts_against_bound(toy4):
    (row,) = toy4["counts"]
    assert row["layer"] == 1 and row["order"] == 1
    assert row["log10_bound"] == pytest.approx(math.log10(math.factorial(4) * 3 / 2))
    irr = {r["id"] for r in toy4["reduced"] if r["converged"] and not r["reducible"]}
    pts = [p for p in toy4["points"] if p["reduced_id"] in irr]
    assert row["n_pair_sets"] == 6 and row["n_reduced_irreducible"] == len(irr)
    assert row["n_found"] == len(pts) == 3 * row["n_reduced_irreducible"]
    assert row["n_points_reducible"] == len(toy4["points"]) - len(pts)
    assert row["n_critical"] == sum(p["critical"] for p in pts)
    assert row["n_saddle"] == sum(p["critical"] and p["index"] >= 1 and p["escape"]["certified"] for p in pts)
    assert row["n_first_order"] == sum(p["critical"] and p["index"] == 1 and p["saddle"] for p in pts)
    assert sum(row["point_index_hist"].values()) == row["n_critical"]
    if row["n_critical"]:
        assert row["log10_critical"] == pytest.approx(math.log10(row["n_critical"]) + math.log10(math.factorial(4) / 2))


def test_two_hidden_layers_give_points_in_both(teacher_deep):
    assert teacher_deep["minimum"]["converged"]
    layers = {p["layer"] for p in teacher_deep["points"]}
    assert layers == {1, 2}
    for p in teacher_deep["points"]:
        assert p["plateau_dim"] == (3 if p["layer"] == 1 else 1)
        assert p["claim_guaranteed_holds"] is True
        assert p["index"] == p["index_predicted"]                  # the split block, in every layer
        assert p["index"] >= p["index_lower_bound"]
        if p["layer"] == 1:
            assert p["fa_index"] is None           # the FA rule is for a neuron feeding one unit
            if p["critical"]:
                # off the common-ratio line the plateau is not critical
                assert p["plateau"]["off_line_grad_inf"] > 1e3 * p["plateau"]["line_grad_inf"]
        elif p["critical"]:
            assert p["fa_index"] == p["index"]


def test_order_two_points_for_width_five():
    rec = run_trial(TrialConfig(task="toy", widths=(5,), orders=(2,), seed=0, gamma_scan=False, path_relax=False))
    pts = [p for p in rec["points"] if p["order"] == 2]
    assert pts and all(len(p["neurons"]) == 2 for p in pts)
    assert all(p["plateau_dim"] == 2 for p in pts)
    for p in pts:
        red = rec["reduced"][p["reduced_id"]]
        assert abs(p["loss"] - red["loss"]) <= 1e-14 * abs(red["loss"])
        if p["critical"]:
            assert p["fa_index"] == p["index"] == p["index_predicted"]
    (row,) = rec["counts"]
    assert row["log10_bound"] == pytest.approx(math.log10(math.factorial(5) * math.comb(3, 2) / 4))


def test_cli_trial_json_and_bad_options():
    runner = CliRunner()
    res = runner.invoke(main, ["trial", "--task", "toy", "--widths", "3", "--seed", "0", "--json",
                               "--no-gamma-scan", "--no-path-relax"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    for key in ("schema_version", "config", "timings", "minimum", "reduced", "points", "paths", "counts",
                "log10_minima"):
        assert key in rec
    for bad, field in ((["--widths", "0"], "--widths"), (["--activation", "relu"], "activation"),
                       (["--pairs", "closest"], "pairs"), (["--task", "cifar"], "task")):
        res = runner.invoke(main, ["trial", *bad])
        assert res.exit_code == 2
        assert field in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_device_and_dense_threshold_options():
    """`device` is validated and left out of the trial key; `dense_max_params` enters the key only when set
    (the keys of existing stores stay valid); a CUDA request without CUDA fails in one line."""
    import torch

    from permsym_core.config import ConfigError, TrialConfig

    base = TrialConfig(task="toy", widths=(3,))
    assert TrialConfig(task="toy", widths=(3,), device="cpu").trial_key() == base.trial_key()
    assert TrialConfig().trial_key() == "a59941fe58346366"      # the key before the two fields existed
    assert TrialConfig(task="toy", widths=(3,), dense_max_params=5).trial_key() != base.trial_key()
    for bad, field in [({"device": "tpu"}, "device"), ({"dense_max_params": 0}, "dense_max_params"),
                       ({"dense_max_params": True}, "dense_max_params")]:
        with pytest.raises(ConfigError, match=f"^{field}: expected"):
            TrialConfig(task="toy", widths=(3,), **bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^device: expected 'auto' or 'cpu'"):
            TrialConfig(device="cuda").torch_device()
