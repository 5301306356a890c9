"""Lock-step batched minimisation (permsym_core.minimise_batched) against the sequential minimiser, its oracle:
whole trial records, batched and not, on the toy task (widths 4 and 6) and a two-hidden-layer teacher, and
member by member the minimisations of their merged networks (same stop reason, same iteration counts, the same
certified point); members that stop at once, diverge or run to their budget in one batch."""
from __future__ import annotations

import math

import pytest
import torch

from permsym_core import study
from permsym_core.canonical import zero_loss_scale
from permsym_core.config import ConfigError, TrialConfig
from permsym_core.landscape import Landscape
from permsym_core.minimize import minimise
from permsym_core.minimise_batched import minimise_many
from permsym_core.study import _Trial, run_trial

TOL = 1e-10


def _merged(cfg: TrialConfig, layer: int = 1, order: int = 1):
    """The trial's certified minimum, merged along every pair set of (layer, order): one landscape, the starts."""
    t = _Trial(cfg)
    assert t.train_minimum()["converged"]
    _spec, land, starts = t.merged(layer, t.pair_sets(layer, order))
    return land, starts


def _same_result(a, b, scale: float) -> None:
    assert a.stop_reason == b.stop_reason and a.converged == b.converged
    if max(a.loss, b.loss) <= 1e-12 * scale:             # zero loss: a manifold of minima, where the point
        return                                           # reached and the steps to it are round-off's choice
    assert a.iterations == b.iterations                  # the same algorithm, step for step
    assert abs(a.loss - b.loss) <= 1e-12 * abs(a.loss), (a.loss, b.loss)
    if a.converged:                                      # (theta itself may sit anywhere on a line of minima
        assert a.grad_inf <= TOL and b.grad_inf <= TOL   # when two merged neurons coincide: not compared)


def test_members_that_stop_at_once_diverge_or_run_out_do_so_in_the_batch():
    land, starts = _merged(TrialConfig(task="toy", widths=(4,), seed=0))
    done = minimise(land, starts[0], grad_tol=TOL)
    assert done.converged
    nan_start = starts[1].clone()
    nan_start[0] = math.nan
    mixed = [done.theta, starts[1], nan_start, starts[2]]
    for opts in (dict(grad_tol=TOL), dict(grad_tol=TOL, adam_steps=40, max_iter=2)):
        seq = [minimise(land, s, **opts) for s in mixed]
        bat = minimise_many(land, mixed, **opts)
        for a, b in zip(seq, bat):
            if a.stop_reason == "diverged":
                assert b.stop_reason == "diverged" and not b.converged
                continue
            _same_result(a, b, zero_loss_scale(land))
        assert seq[0].stop_reason == "converged" and seq[0].iterations == {"adam": 0, "second_order": 0}
        assert seq[2].stop_reason == "diverged"
    assert [r.stop_reason for r in bat] == ["converged", "max_iter", "diverged", "max_iter"]


def _same_record(a: dict, b: dict) -> None:
    assert a["trial_key"] == b["trial_key"]
    assert a["counts"] == b["counts"]
    close = lambda x, y: abs(x - y) <= 1e-12 * abs(x) + 1e-20          # noqa: E731  (zero-loss minima: ~1e-17)
    assert len(a["reduced"]) == len(b["reduced"])
    for x, y in zip(a["reduced"], b["reduced"]):
        assert (x["stop_reason"], x["index"], x["n_zero"], x["from_pairs"]) == \
               (y["stop_reason"], y["index"], y["n_zero"], y["from_pairs"])
        if x["stop_reason"] == "converged":
            assert close(x["loss"], y["loss"]), (x["loss"], y["loss"])
    fields = ("layer", "order", "neurons", "index", "n_zero", "critical", "saddle", "reducible")
    assert [tuple(p[f] for f in fields) for p in a["points"]] == [tuple(p[f] for f in fields) for p in b["points"]]
    assert all(close(p["loss"], q["loss"]) for p, q in zip(a["points"], b["points"]))


def _trial_and_its_reduced_minimisations(monkeypatch, cfg: dict, batch: str):
    """run_trial with batch_reduced = batch, and the MinimiseResult of every merged network it minimised."""
    seen: list = []
    one, many = study._minimise, study.minimise_many

    def one_spy(*a, **k):
        seen.append(one(*a, **k))
        return seen[-1]

    def many_spy(*a, **k):
        seen.extend(many(*a, **k))
        return seen[-len(a[1]):]

    monkeypatch.setattr(study, "_minimise", one_spy)
    monkeypatch.setattr(study, "minimise_many", many_spy)
    rec = run_trial(TrialConfig(**cfg, batch_reduced=batch))
    monkeypatch.undo()
    return rec, seen[1:]                                  # [0] is the trial's minimum, one by one either way


@pytest.mark.parametrize("cfg", [
    dict(task="toy", widths=(4,), seed=0),
    dict(task="toy", widths=(6,), seed=1, gamma_scan=False, path_relax=False, path_points=5),
    dict(task="teacher", widths=(3, 3), activation="tanh", seed=0,
         task_options={"widths": [3, 3], "n_samples": 100}, gamma_scan=False, path_relax=False, path_points=5),
], ids=["toy4", "toy6", "teacher3x3"])
def test_trial_record_is_the_same_batched_or_one_by_one(monkeypatch, cfg):
    one, seq = _trial_and_its_reduced_minimisations(monkeypatch, cfg, "off")
    many, bat = _trial_and_its_reduced_minimisations(monkeypatch, cfg, "on")
    assert one["points"], "a case without points compares nothing"
    assert all(r.info["batched"]["members"] > 1 for r in bat) and not any("batched" in r.info for r in seq)
    # member by member: the same algorithm, step for step, to the same certified point
    assert len(seq) == len(bat) >= 6
    scale = _Trial(TrialConfig(**cfg)).loss_scale                          # the zero-output loss
    for a, b in zip(seq, bat):
        _same_result(a, b, scale)
    # members stop each on its own certificate: a layer's batch ran as many rounds as its longest member asked for
    first = [r for r in bat if r.info["batched"]["members"] == bat[0].info["batched"]["members"]]
    lengths = [r.iterations["adam"] + r.iterations["second_order"] for r in first]
    assert len(set(lengths)) > 1 and max(lengths) < first[0].info["batched"]["rounds"] < sum(lengths)
    _same_record(one, many)
    if cfg["task"] == "teacher":
        assert {p["layer"] for p in one["points"]} == {1, 2}


def test_batch_reduced_option_is_checked_and_not_part_of_the_key():
    base = TrialConfig(task="toy", widths=(3,))
    assert TrialConfig(task="toy", widths=(3,), batch_reduced="on").trial_key() == base.trial_key()
    assert not base.batches_reduced() or torch.cuda.is_available()        # auto: CUDA only
    assert TrialConfig(task="toy", widths=(3,), batch_reduced="on").batches_reduced()
    assert not TrialConfig(task="toy", widths=(3,), time_limit_s=5).batches_reduced()
    assert "batch_reduced" not in base.to_dict()                            # the default: records as before
    with pytest.raises(ConfigError, match=r"^batch_reduced: expected one of auto, on, off, got 'yes'$"):
        TrialConfig(task="toy", widths=(3,), batch_reduced="yes")
    with pytest.raises(ConfigError, match=r"^batch_reduced: expected 'auto' or 'off' with a time_limit_s"):
        TrialConfig(task="toy", widths=(3,), batch_reduced="on", time_limit_s=5)


class _FailingHessian(Landscape):
    """A two-hidden-layer landscape whose Hessian fails wherever |theta|_inf > 20 (a bad member)."""

    def hessian(self, theta):
        if float(theta.abs().max()) > 20:
            raise RuntimeError("no Hessian here")
        return super().hessian(theta)


def test_a_failing_member_fails_alone_as_it_does_one_by_one():
    from permsym_core.mlp import MLPSpec
    from permsym_core.tasks import make_task

    task = make_task("toy", seed=0)
    spec = MLPSpec((task.n_in, 3, 2, task.n_out), "sigmoid", False, task.output)
    land = _FailingHessian(spec, task.X, task.Y, device="cpu")
    starts = [spec.init(s) for s in range(3)] + [30.0 * spec.init(3)]
    opts = dict(grad_tol=TOL, adam_steps=30, max_iter=8)
    seq = [minimise(land, s, **opts) for s in starts]
    bat = minimise_many(land, starts, **opts)
    assert seq[3].info["error"] == "RuntimeError: no Hessian here" and "error" not in seq[0].info
    for a, b in zip(seq, bat):
        assert (a.stop_reason, a.iterations, a.info.get("error")) == (b.stop_reason, b.iterations, b.info.get("error"))
        assert abs(a.loss - b.loss) <= 1e-12 * abs(a.loss)
    assert minimise_many(land, iter(starts[:2]), **opts)[1].iterations == seq[1].iterations   # any iterable
    assert minimise_many(land, [], **opts) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lock_step_on_cuda_certifies_what_the_cpu_loop_certifies():
    land, starts = _merged(TrialConfig(task="toy", widths=(4,), seed=0, device="cpu"))
    gpu = Landscape(land.spec, land.X, land.Y, device="cuda")
    seq = [minimise(land, s, grad_tol=TOL) for s in starts]
    bat = minimise_many(gpu, [s.cuda() for s in starts], grad_tol=TOL)
    for a, b in zip(seq, bat):
        assert b.theta.device.type == "cuda" and b.converged and b.grad_inf <= TOL
        assert abs(a.loss - b.loss) <= 1e-12 * abs(a.loss) + 1e-20
