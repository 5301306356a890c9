"""The certified minimiser: reaches |grad|_inf <= 1e-10 and says so only when it measured it."""
import pytest
import torch

from permsym_core.landscape import Landscape
from permsym_core.minimize import minimise
from permsym_core.mlp import MLPSpec
from permsym_core.tasks import make_task

TOL = 1e-10


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return make_task("toy")


def _toy_land(toy, n, device="cpu"):
    spec = MLPSpec((2, n, 1), "sigmoid", False)
    return spec, Landscape(spec, toy.X, toy.Y, device=device)


def _measured(land, theta):
    loss, g = land.loss_grad(theta)
    return loss, float(g.abs().max())


@pytest.mark.parametrize("n", [3, 4, 5])
def test_toy_reaches_tolerance(toy, n):
    spec, land = _toy_land(toy, n)
    r = minimise(land, spec.init(0), time_limit_s=60)
    loss, ginf = _measured(land, r.theta)
    assert r.converged and r.stop_reason == "converged" and r.method == "trust-region"
    assert ginf <= TOL and r.grad_inf == ginf and r.loss == loss
    assert r.iterations["second_order"] >= 1 and r.wall_s > 0
    d = r.to_dict()
    assert len(d["theta"]) == spec.n_params and d["converged"] is True


def test_deterministic_for_a_seed(toy):
    spec, land = _toy_land(toy, 4)
    a = minimise(land, spec.init(0), seed=0)
    b = minimise(land, spec.init(0), seed=0)
    assert torch.equal(a.theta, b.theta) and a.iterations == b.iterations


def test_two_hidden_layer_teacher():
    task = make_task("teacher", seed=2, widths=[3, 3], teacher_activation="tanh", n_samples=200)
    spec = MLPSpec((2, 3, 3, 1), "tanh", True)
    land = Landscape(spec, task.X, task.Y, device="cpu")
    r = minimise(land, spec.init(2), time_limit_s=60)
    assert r.converged and _measured(land, r.theta)[1] <= TOL


def test_lbfgs_finish_is_honest(toy):
    spec, land = _toy_land(toy, 3)
    r = minimise(land, spec.init(0), method="lbfgs", max_iter=3000, time_limit_s=30)
    ginf = _measured(land, r.theta)[1]
    assert r.method == "lbfgs" and r.converged == (ginf <= TOL) and r.grad_inf == ginf


@pytest.mark.parametrize("kw", [{"lr": 1e6}, {"scale": 1e6}])
def test_divergence_is_a_stop_reason(toy, kw):
    spec, land = _toy_land(toy, 4)
    r = minimise(land, spec.init(0, kw.get("scale", 1.0)), lr=kw.get("lr", 0.05))
    assert r.stop_reason == "diverged" and not r.converged


def test_nan_start_diverges(toy):
    spec, land = _toy_land(toy, 4)
    theta = spec.init(0)
    theta[0] = float("nan")
    r = minimise(land, theta)
    assert r.stop_reason == "diverged" and not r.converged


def test_tiny_budgets_do_not_claim_success(toy):
    spec, land = _toy_land(toy, 4)
    r = minimise(land, spec.init(0), time_limit_s=1e-3)
    assert r.stop_reason == "time_limit" and not r.converged and r.grad_inf > TOL
    r = minimise(land, spec.init(0), adam_steps=5, max_iter=2)
    assert r.stop_reason == "max_iter" and not r.converged and r.iterations == {"adam": 5, "second_order": 2}
    assert r.grad_inf == _measured(land, r.theta)[1] > TOL


def test_critical_start_returns_at_once(toy):
    spec, land = _toy_land(toy, 3)
    r0 = minimise(land, spec.init(0))
    r = minimise(land, r0.theta)
    assert r.converged and r.iterations == {"adam": 0, "second_order": 0} and torch.equal(r.theta, r0.theta)


def test_polish_without_warmup_stays_near(toy):
    """warmup=False from a point near a minimum: no Adam, lands on the same minimum."""
    spec, land = _toy_land(toy, 4)
    r0 = minimise(land, spec.init(0))
    start = r0.theta + 1e-4 * torch.randn(spec.n_params, generator=torch.Generator().manual_seed(1),
                                         dtype=torch.float64)
    r = minimise(land, start, warmup=False)
    assert r.converged and r.iterations["adam"] == 0
    assert float((r.theta - r0.theta).abs().max()) <= 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda(toy):
    spec, land = _toy_land(toy, 4, device="cuda")
    r = minimise(land, spec.init(0).cuda())
    assert r.converged and r.theta.device.type == "cuda" and _measured(land, r.theta)[1] <= TOL


def test_softmax_with_exact_flat_directions():
    """10-way softmax on mnist (multinomial logistic regression: a finite minimum, n_0+1 exactly flat Hessian
    directions from shifting all logits): the trust region must not spend its radius on those."""
    task = make_task("mnist", seed=0, activation="tanh", pca=5, n_samples=300, target="class")
    spec = MLPSpec((task.n_in, task.n_out), "tanh", True, task.output)
    land = Landscape(spec, task.X, task.Y, device="cpu")
    r = minimise(land, spec.init(0), time_limit_s=30)
    assert r.converged and r.stop_reason == "converged" and _measured(land, r.theta)[1] <= TOL


def test_minimum_at_infinity_ends_as_unbounded():
    """tanh [4] on 300 mnist digits: the loss keeps falling as weights run away; end quickly, honestly."""
    task = make_task("mnist", seed=0, activation="tanh", pca=10, n_samples=300, target="class")
    spec = MLPSpec((task.n_in, 4, task.n_out), "tanh", True, task.output)
    land = Landscape(spec, task.X, task.Y, device="cpu")
    r = minimise(land, spec.init(0), time_limit_s=30)
    assert r.stop_reason == "unbounded" and not r.converged and r.info["unbounded"]["theta_norm"] > 100


def test_trust_region_subproblem_is_the_global_minimiser():
    """The eigenbasis subproblem against a brute force: no feasible point (random, on the sphere and inside)
    has a lower model value, and the More-Sorensen conditions hold: (lam + mu) c = -g with lam + mu >= 0 and
    mu (delta - |c|) = 0, for positive definite, indefinite and hard-case (g orthogonal to the lowest
    eigenvector) problems over six decades of curvature."""
    import numpy as np

    from permsym_core.trust_region import subproblem as _tr_subproblem

    rng = np.random.default_rng(0)
    for trial in range(600):
        P = int(rng.integers(2, 25))
        lam = np.sort(rng.normal(size=P) * 10.0 ** rng.uniform(-3, 3, size=P))
        if trial % 3 == 0:
            lam = np.sort(np.abs(lam))
        g = rng.normal(size=P) * 10.0 ** rng.uniform(-6, 1)
        if trial % 4 == 0:
            g[0] = 0.0
        delta = 10.0 ** rng.uniform(-3, 1)
        c, m = _tr_subproblem(lam, g, delta)
        n = np.linalg.norm(c)
        assert n <= delta * (1 + 1e-12)
        assert m == pytest.approx(g @ c + 0.5 * (lam * c * c).sum(), rel=1e-12, abs=1e-300)
        D = rng.normal(size=(400, P))
        D *= (delta * rng.uniform(0, 1, size=(400, 1)) ** (1 / P)) / np.linalg.norm(D, axis=1, keepdims=True)
        D[:200] *= delta / np.linalg.norm(D[:200], axis=1, keepdims=True)
        vals = D @ g + 0.5 * (D * D) @ lam
        assert vals.min() >= m - 1e-10 * max(1.0, abs(m)), trial
        inner = n < delta * (1 - 1e-9)
        if inner:       # interior solution: mu = 0, H positive semi-definite, Newton step
            assert lam[0] >= -1e-12 * np.abs(lam).max()
            np.testing.assert_allclose(lam * c, -g, rtol=1e-8, atol=1e-10 * np.abs(g).max())
        else:           # on the sphere: some mu >= max(0, -lam_0) with (lam + mu) c = -g on g's support
            nz = np.abs(c) > 1e-9 * n
            mus = -g[nz] / c[nz] - lam[nz]
            mu = np.median(mus)
            assert mu >= -lam[0] - 1e-8 * max(1.0, np.abs(lam).max()) and mu >= -1e-10
            on = np.abs(g) > 1e-6 * np.abs(g).max()     # the hard case leaves c free where g is zero
            np.testing.assert_allclose(((lam + mu) * c)[on], -g[on], rtol=1e-4)


def test_matrix_free_finish_certifies_where_lbfgs_does_not():
    """Above the dense threshold (forced here with dense_max_params) "auto" runs L-BFGS and, when that does
    not certify, the Steihaug-CG trust region on Hessian-vector products: on the toy 2-6-1 sigmoid student
    L-BFGS alone ends at |grad|_inf ~1e-5 after 400 iterations; the chain reaches 1e-10 at the minimum the
    dense trust region finds (same loss to 1e-9)."""
    from permsym_core.landscape import Landscape
    from permsym_core.mlp import MLPSpec
    from permsym_core.tasks import make_task

    task = make_task("toy", seed=0, activation="sigmoid", student_widths=(6,))
    spec = MLPSpec((2, 6, 1), "sigmoid", task.default_bias, task.output)
    L = Landscape(spec, task.X, task.Y)
    th0 = spec.init(0)
    lbfgs = minimise(L, th0, method="lbfgs", max_iter=400)
    assert not lbfgs.converged and lbfgs.grad_inf > 1e-8
    chain = minimise(L, th0, max_iter=400, dense_max_params=10)
    assert chain.method == "lbfgs+krylov" and chain.converged and chain.grad_inf <= 1e-10
    assert chain.info["hvps"] > 0
    dense = minimise(L, th0, max_iter=400)
    assert dense.method == "trust-region" and dense.converged
    assert chain.loss == pytest.approx(dense.loss, rel=1e-9)


def test_subproblem_treats_curvature_below_tau_as_flat():
    """With tau, an eigenvalue of size below it counts as exactly zero: a tiny negative one (eigh's round-off on
    an exact symmetry) is never followed to the boundary, while one above tau is."""
    import numpy as np

    from permsym_core.trust_region import subproblem

    lam = np.array([-1e-14, 1.0, 2.0])
    g = np.array([0.0, 1.0, -2.0])
    c, _ = subproblem(lam, g, delta=10.0, tau=1e-12)
    np.testing.assert_allclose(c, [0.0, -1.0, 1.0], atol=1e-15)      # the Newton step on the rest, c_0 = 0
    c, _ = subproblem(np.array([-1e-3, 1.0, 2.0]), g, delta=10.0, tau=1e-12)
    assert abs(np.linalg.norm(c) - 10.0) < 1e-9 and abs(c[0]) > 9.0   # a real negative curvature: the boundary
