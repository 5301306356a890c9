"""Channels to infinity (permsym_core.channels): detected on a constructed case that runs along one, not at a
strict minimum."""
import math

import pytest
import torch

from permsym_core.channels import detect_channel
from permsym_core.landscape import Landscape
from permsym_core.minimize import minimise
from permsym_core.mlp import DTYPE, MLPSpec
from permsym_core.tasks import TOY_W1, TOY_W2, make_task

pytestmark = pytest.mark.usefixtures("one_thread")

W, C = 0.7, 1.5


def _derivative_task():
    """f(x) = C x tanh'(W x): what two tanh neurons at W +- eps with outgoing +-C/(2 eps) tend to as eps -> 0."""
    X = torch.linspace(-3, 3, 61, dtype=DTYPE)[:, None]
    Y = C * X * (1 - torch.tanh(W * X) ** 2)
    spec = MLPSpec((1, 2, 1), "tanh", (False, False), "regression")
    return spec, Landscape(spec, X, Y)


def _on_channel(spec, eps):
    return spec.flatten([([[W + eps], [W - eps]], None), ([[C / (2 * eps), -C / (2 * eps)]], None)])


def test_snapshots_along_the_derivative_channel_are_a_converging_pair():
    spec, land = _derivative_task()
    eps = [0.4, 0.2, 0.1, 0.05]
    hist = [(100 * i, land.loss(_on_channel(spec, e)), _on_channel(spec, e)) for i, e in enumerate(eps)]
    assert all(a[1] > b[1] for a, b in zip(hist, hist[1:]))        # the loss falls along the ray
    ch = detect_channel(land, hist)
    assert ch is not None and ch.kind == "converging" and ch.layer == 1 and ch.neurons == [0, 1]
    # |theta_D|: the two neurons' incoming and outgoing weights, by hand
    r = [math.sqrt((W + e) ** 2 + (W - e) ** 2 + 2 * (C / (2 * e)) ** 2) for e in (eps[0], eps[-1])]
    assert ch.growth_rate == pytest.approx(math.log(r[1] / r[0]) / 300, rel=1e-12)
    assert ch.detail["incoming_distance_start"] == pytest.approx(0.8) and ch.detail["incoming_distance_end"] == pytest.approx(0.1)
    assert ch.detail["outgoing_cancellation"] == pytest.approx(0.0, abs=1e-12)
    # the loss is O(eps^4) along it (the next Taylor term): its limit is 0, the fit sees it far below the last loss
    assert 0.0 <= ch.loss_limit_estimate < 0.1 * hist[-1][1]


def test_minimiser_started_on_the_channel_ends_as_channel():
    spec, land = _derivative_task()
    res = minimise(land, _on_channel(spec, 0.3), warmup=False, max_iter=2000)
    assert res.stop_reason == "channel" and not res.converged
    ch = res.info["channel"]
    assert ch["kind"] == "converging" and ch["layer"] == 1 and ch["neurons"] == [0, 1]
    (w1, w2), (a1, a2) = res.theta[:2].tolist(), res.theta[2:].tolist()
    assert a1 * a2 < 0 and abs(a1) > C / (2 * 0.3)                  # outgoing grew, with opposite signs
    assert abs(w1 - w2) < 0.6 and ch["growth_rate"] > 0              # incoming closer than at the start (0.6)
    assert ch["loss_limit_estimate"] <= res.loss < land.loss(_on_channel(spec, 0.3))


def test_no_channel_at_a_strict_minimum():
    """The toy student of the teacher's width, started near the teacher: a strict (zero-loss) minimum."""
    t = make_task("toy")
    spec = MLPSpec((2, 4, 1), "sigmoid", (False, False), "regression")
    land = Landscape(spec, t.X, t.Y)
    teacher = spec.flatten([(TOY_W1, None), (TOY_W2, None)])
    g = torch.Generator().manual_seed(0)
    start = teacher + 0.2 * torch.randn(teacher.shape, generator=g, dtype=DTYPE)
    res = minimise(land, start, warmup=False)
    assert res.converged and res.stop_reason == "converged" and "channel" not in res.info
    # snapshots converging onto the minimum are no channel either (nothing grows)
    hist = [(i, land.loss(teacher + s * (start - teacher)), teacher + s * (start - teacher))
            for i, s in enumerate([1.0, 0.5, 0.25, 0.125])]
    assert detect_channel(land, hist) is None


def test_toy_g_seed_1_trial_is_recorded_as_a_channel():
    """The toy sweep's g seed-1 student (width 4) runs along a converging pair: a recorded outcome with the
    neurons named, not a dropped trial."""
    from permsym_core.study import run_trial

    rec = run_trial({"task": "toy", "widths": [4], "activation": "g", "seed": 1})
    m = rec["minimum"]
    assert m["stop_reason"] == "channel" and not m["converged"] and rec["counts"] == []
    ch = m["channel"]
    assert ch["kind"] == "converging" and ch["layer"] == 1 and len(ch["neurons"]) >= 2
    assert f"neurons {ch['neurons']}" in rec["failure"]
    assert ch["growth_rate"] > 0 and 0 <= ch["loss_limit_estimate"] <= m["loss"]


def test_a_weight_decay_closes_the_channel():
    """The same start under a weight decay: F = L + lambda/2 |theta|^2 is coercive, so the run ends at a finite
    certified critical point, never as a channel, with |theta| bounded by 2 F(start) / lambda."""
    spec, plain = _derivative_task()
    lam = 1e-3
    land = Landscape(spec, plain.X, plain.Y, weight_decay=lam)
    start = _on_channel(spec, 0.3)
    res = minimise(land, start, warmup=False, max_iter=2000)
    assert res.stop_reason == "converged" and res.grad_inf <= 1e-10 and "channel" not in res.info
    assert float(res.theta @ res.theta) <= 2 * land.loss(start) / lam
