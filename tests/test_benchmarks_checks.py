"""Correctness checks of the counting, minimisation, trial, sweep and memory benchmarks on their smallest cases.

No timing is asserted, ever; no Ray is started here (the sweep benchmark's Ray runs are left to the benchmark).
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is not an installed package

from benchmarks import MODULES  # noqa: E402
from benchmarks import batched, batched_chunk, counting, memory, minimise, sweep, trial, trial_width  # noqa: E402

OURS = ("counting", "minimise", "batched", "batched_chunk", "trial", "trial_width", "sweep", "memory")


def test_modules_registered_with_the_interface():
    for name in OURS:
        assert name in MODULES
        mod = sys.modules[f"benchmarks.{name}"]
        assert isinstance(mod.TITLE, str) and callable(mod.run) and callable(mod.targets)


def test_counting_by_slicing_and_by_eigenvalues_identical_and_as_designed():
    P = min(counting.sizes(quick=True))
    c = counting.check(P)
    assert c["slicing"] == c["eigenvalues"] == c["designed"]
    assert c["designed"] == (len(counting.N_NEG), counting.N_ZERO, P - len(counting.N_NEG) - counting.N_ZERO)
    H, lam = counting.hessian_like(50)
    assert counting.by_slicing_lapack(H, counting.tau_for(lam)) == counting.by_eigenvalues(H, counting.tau_for(lam))
    assert counting.agreement((1, 2, 3), (1, 2, 3)) == "identical"
    assert counting.agreement((1, 2, 3), (1, 3, 2)).startswith("DIFFER")


def test_minimiser_reaches_1e_10_on_toy_width_3():
    c = minimise.check(3)
    assert c["converged"] and c["grad_inf"] <= 1e-10, c


def test_minimise_baselines_run_and_report_honestly():
    L, theta0 = minimise.Case("toy 2-3-1", "toy", 3).landscape()
    warm = minimise.minimise(L, theta0, max_iter=0).theta
    sp = minimise.scipy_trust_exact_autodiff(L, warm, time_limit_s=60.0)
    assert sp["converged"] and sp["grad_inf"] <= 1e-10
    adam = minimise.adam_alone(L, theta0, budget_s=0.2)
    assert adam["steps"] >= 1 and math.isfinite(adam["best_grad_inf"])
    assert adam["t_hit"] is None or adam["best_grad_inf"] <= 1e-10


def test_trial_phase_rows_add_up_to_the_total():
    record = {"minimum": {"converged": True, "grad_inf": 1e-12, "n_params": 12},
              "counts": [{"n_found": 6, "n_critical": 6, "n_first_order": 3}],
              "timings": {"task": 0.1, "minimum": 1.0, "reduced": 2.0, "gamma_scan": 0.5, "points": 1.0,
                          "paths": 5.0, "total": 10.0}}
    rows = trial.rows_for(4, 12.0, record)
    phases = [r for r in rows if r["method"].startswith("phase")]
    assert math.isclose(sum(r["seconds"] for r in phases), 10.0)   # the phases plus `other` (0.4 s)
    assert math.isclose(sum(r["ratio"] for r in phases), 1.0)
    assert "converged" in next(r for r in rows if r["method"] == "run_trial total")["agreement"]
    assert trial.command(4)[-10:] == ["trial", "--task", "toy", "--widths", "4", "--activation", "sigmoid",
                                      "--seed", "0", "--json"]


def test_sweep_spec_plans_the_same_trials_and_agreement_flags_differences():
    full, quick = sweep.planned(False), sweep.planned(True)
    assert len(full) == 8 and len(quick) == 4
    assert {t.key for t in quick} <= {t.key for t in full}
    records = [{"trial_key": t.key, "minimum": {"loss": 0.5 + i}} for i, t in enumerate(quick)]
    good = {"planned": 4, "trials": [{"trial_key": t.key, "status": "finished", "min_loss": 0.5 + i}
                                     for i, t in enumerate(quick)]}
    assert sweep.trial_agreement(good, records) == "same minima as the loop"
    bad = {"planned": 4, "trials": good["trials"][:3]}
    assert sweep.trial_agreement(bad, records).startswith("DIFFER")


def test_memory_workload_reports_its_peak_on_the_smallest_case():
    rec = memory.measure(8)                                   # P = 97: the harness, not the figure
    assert rec["P"] == 97 and rec["counts_agree"]
    assert rec["peak"] >= rec["base"] > 0
    assert rec["ru_maxrss"] >= rec["base"] // 2


def test_trial_width_targets_read_the_rows_they_name():
    """The width benchmark's verdicts come from the rows of this code at the named widths, not the baseline's."""
    rows = [dict(method="permsym (this code)", depth=1, width=4, seconds=1.0, converged=True),
            dict(method="baseline a7b8af4", depth=1, width=4, seconds=13.0, converged=True),
            dict(method="permsym (this code)", depth=1, width=10, seconds=20.0, converged=True),
            dict(method="permsym (this code)", depth=3, width=5, seconds=70.0, converged=True)]
    lines = trial_width.targets(rows)
    assert lines[0] == ("cases run: one hidden layer, widths [4, 10]; two, widths none; "
                        "the three-hidden-layer teacher yes")
    assert "MET: toy width 4 <= 1.5 s: 1.0 s" in lines
    assert "NOT MET: toy width 10 <= 15 s: 20.0 s" in lines
    assert "not measured: width 6 <= 4 s" in lines
    assert "NOT MET: cost from width 4 to 10 grows at most 10x: 20.0x" in lines
    assert "NOT MET: three-hidden-layer teacher [5, 5, 5], every pair, <= 60 s: 70.0 s" in lines
    # a trial whose minimum is not certified builds no points: however fast, it meets no target
    fast_but_empty = [dict(method="permsym (this code)", depth=1, width=4, seconds=0.5, converged=False,
                           stop_reason="channel"),
                      dict(method="permsym (this code)", depth=3, width=5, seconds=16.9, converged=False,
                           stop_reason="max_iter")]
    lines = trial_width.targets(fast_but_empty)
    assert "NOT MET: toy width 4 <= 1.5 s: the minimum is not certified (channel)" in lines
    assert any(line.startswith("NOT MET: three-hidden-layer") and "not certified (max_iter)" in line for line in lines)
    assert not any(line.startswith("MET") for line in lines)
    # the deep case twice: the plain loss's uncertified row says why, the penalised certified row is the verdict
    both = [dict(method="permsym (this code)", depth=3, width=5, seconds=7.7, converged=False, stop_reason="max_iter",
                 weight_decay=0.0),
            dict(method="permsym (this code)", depth=3, width=5, seconds=31.0, converged=True, weight_decay=1e-5)]
    deep = [line for line in trial_width.targets(both) if "three-hidden-layer teacher [5" in line]
    assert deep == ["MET on the penalised loss only (weight decay 1e-05: a penalised trial has no gamma scan, "
                    "relaxed paths or valleys, and one point per merged network): three-hidden-layer teacher "
                    "[5, 5, 5], every pair, <= 60 s: 31.0 s; plain loss: the student's minimum is not certified "
                    "(max_iter), the 7.7 s it took built no points (issue 11)"]
    # both deep runs failed to produce a time: the line says so rather than vanishing
    errored = [dict(method="permsym (this code)", depth=3, width=5, seconds=None, note="timeout after 900 s",
                    weight_decay=w) for w in (0.0, 1e-5)]
    assert [line for line in trial_width.targets(errored) if "three-hidden-layer teacher [5" in line] == [
        "not measured: three-hidden-layer teacher [5, 5, 5], every pair, <= 60 s: plain loss: not measured "
        "(timeout after 900 s); weight decay 1e-05: not measured (timeout after 900 s)"]


def test_batched_targets_need_the_speed_and_every_member_agreeing():
    def row(threads, seconds, ratio, agree, method="reduced training, lock step (minimise_many)"):
        return dict(case="c", part="reduced", width=10, threads=threads, seconds=seconds, ratio=ratio,
                    all_agree=agree, method=method, baseline="loop")
    loops = [dict(case="c", method="loop", seconds=s) for s in (10.0, 30.0)]
    fast = batched.targets([row(1, 2.0, 5.0, True), row(2, 5.0, 6.0, True)] + loops)
    assert fast[0].startswith("MET: batched reduced training >= 5x") and "6.00x at 2 threads" in fast[0]
    assert "fastest against fastest (any thread count) 5.00x" in fast[0]
    assert fast[1].startswith("not measured: batched point analysis")
    wrong = batched.targets([row(2, 5.0, 6.0, False)] + loops)
    assert wrong[0].startswith("NOT MET") and "not every member agreed" in wrong[0]


def test_batched_chunk_images_lie_between_equal_loss_permutations_and_both_chunkings_agree(monkeypatch):
    """The case's images run from theta* to theta* with two neurons swapped (the same function, so the same
    loss: a theorem); the quick case is cut into more than one chunk by this code and into one by the baseline's
    size, and the two chunkings give the same gradients and Hessians."""
    from permsym_core import batched as kernels

    land, images = batched_chunk._images((3,))
    assert images.shape == (3 * 19, land.n_params)
    star = 2 * images[0] - images[1]                     # the line's t = 0 end, from its images at t = 1/20, 2/20
    assert float((star - (2 * images[19] - images[20])).abs().max()) <= 1e-10       # one start for all lines
    end = 2 * images[18] - images[17]                    # t = 1 (images at 19/20, 18/20): theta* swapped
    assert abs(land.loss(end) - land.loss(star)) <= 1e-12 * land.loss(star)
    assert float((end - star).abs().max()) > 1e-3        # a different point of parameter space
    land4, images4 = batched_chunk._images((4,))         # the quick run's case
    M = images4.shape[0]
    assert kernels._chunk(land4, M) < M
    monkeypatch.setattr(kernels, "chunk_elems", lambda _device: batched_chunk.BASELINE_ELEMS)
    assert kernels._chunk(land4, M) == M
    monkeypatch.undo()
    rows = batched_chunk.run(quick=True)
    assert {r["threads"] for r in rows} == {1, 2} and all(r["diff"] <= 1e-12 for r in rows if "ratio" in r)
