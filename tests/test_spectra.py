"""Eigenvalue and inertia counts on matrices with known spectra, the derived tau, the report, Lanczos fallback."""
import math

import numpy as np
import pytest
import torch

from permsym_core import spectra
from permsym_core.landscape import Landscape
from permsym_core.mlp import MLPSpec
from permsym_core.spectra import (analyse, analyse_landscape, count, counts_from_eigenvalues, derive_tau,
                                  eigenvalues, gap_ratio, inertia)

EPS = np.finfo(np.float64).eps


def known(lams, seed=0) -> np.ndarray:
    """Q diag(lams) Q^T with a random orthogonal Q, exactly symmetric."""
    lams = np.asarray(lams, dtype=np.float64)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((lams.size, lams.size)))
    H = (Q * lams) @ Q.T
    return (H + H.T) / 2


def truth(lams, tau):
    lams = np.asarray(lams)
    return int(np.sum(lams < -tau)), int(np.sum(np.abs(lams) <= tau)), int(np.sum(lams > tau))


SPECTRA = {
    "rank_deficient": (np.r_[-3.0, -0.5, np.zeros(6), 0.2, 1.0, 2.0, 5.0, 40.0], 1e-10),
    "tiny_negative": (np.r_[-1e-9, -2e-9, 0.0, 0.0, 1e-9, 3.0, 7.0, -4.0, 0.5, 1.5], 1e-11),
    "repeated": (np.r_[[-2.0] * 5, [0.0] * 3, [1.0] * 7, [3.0] * 4], 1e-10),
    "mixed_scales": (np.r_[-1e-3, -1e-6, 0.0, 1e-7, 1e-4, 1.0, 100.0, np.linspace(0.1, 10, 30)], 1e-12),
}


@pytest.mark.parametrize("backend", ["lapack", "torch"])
@pytest.mark.parametrize("name", list(SPECTRA))
def test_slicing_and_eigenvalues_agree_with_known_spectra(name, backend):
    lams, tau = SPECTRA[name]
    H = known(lams, seed=len(name))
    want = truth(lams, tau)
    assert counts_from_eigenvalues(eigenvalues(H), tau) == want
    assert count(H, tau, backend=backend) == want
    neg_shift = inertia(H, -tau, backend=backend)  # of H + tau I
    assert neg_shift[0] == want[0] and sum(neg_shift) == lams.size


@pytest.mark.parametrize("backend", ["lapack", "torch"])
def test_inertia_without_shift_when_no_eigenvalue_near_zero(backend):
    lams = np.r_[-5.0, -1.0, -1.0, 0.3, 2.0, 2.0, 9.0]
    assert inertia(known(lams), backend=backend) == (3, 0, 4)
    assert inertia(known(lams), shift=1.5, backend=backend) == (4, 0, 3)  # H - 1.5 I


def swap_blocks(n_blocks: int, diag: float = 0.0) -> np.ndarray:
    """Zero-diagonal [[0, b], [b, 0]] blocks force Bunch-Kaufman 2x2 pivots; eigenvalues are +-b."""
    H = np.zeros((2 * n_blocks, 2 * n_blocks))
    for i in range(n_blocks):
        H[2 * i, 2 * i + 1] = H[2 * i + 1, 2 * i] = 1.0 + i
    return H + diag * np.eye(2 * n_blocks)


@pytest.mark.parametrize("backend", ["lapack", "torch"])
def test_two_by_two_pivots(backend):
    H = swap_blocks(4)
    assert inertia(H, backend=backend) == (4, 0, 4)
    # the factorisation really used 2x2 pivots
    _, _, ipiv = spectra._ldl_lapack(np.asfortranarray(H.copy()))
    assert np.all(ipiv < 0)
    # 2x2 blocks with positive determinant: [[a, b], [b, c]], both signs equal
    assert inertia(swap_blocks(3), shift=-10.0, backend=backend) == (0, 0, 6)  # H + 10 I: all positive
    assert inertia(swap_blocks(3), shift=10.0, backend=backend) == (6, 0, 0)
    # a mix of 1x1 and 2x2 pivots inside a rotated matrix, and a permuted 2x2 block with a 1x1 pivot first
    A = np.array([[2.0, 1, 0], [1, 0, 3], [0, 3, 0]])
    assert inertia(A, backend=backend) == truth(np.linalg.eigvalsh(A), 0.0)
    M = np.zeros((7, 7))
    M[:6, :6] = swap_blocks(3)
    M[6, 6] = -2.0
    P = np.random.default_rng(3).permutation(7)
    assert inertia(M[np.ix_(P, P)], backend=backend) == (4, 0, 3)


def test_singular_two_by_two_block_inertia():
    # det = 0: one exact zero, the other eigenvalue is the trace
    assert spectra._inertia_of_d(np.array([1.0, 1.0]), np.array([1.0]), np.array([-2, -2])) == (0, 1, 1)
    assert spectra._inertia_of_d(np.array([-1.0, -4.0]), np.array([2.0]), np.array([-2, -2])) == (1, 1, 0)
    assert spectra._inertia_of_d(np.array([3.0, 0.0, -1.0]), np.array([0.0, 0.0]), np.array([1, 2, 3])) == (1, 1, 1)


def test_torch_and_lapack_pivots_identical_on_cpu():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((60, 60))
    A = A + A.T
    A[np.diag_indices(60)] = 0.0  # zero diagonal: many 2x2 pivots
    d1, s1, p1 = spectra._ldl_lapack(np.asfortranarray(A.copy()))
    d2, s2, p2 = spectra._ldl_torch(torch.from_numpy(A.copy()))
    assert np.array_equal(p1, p2) and np.sum(p1 < 0) > 0
    np.testing.assert_allclose(d1, d2, rtol=0, atol=1e-12)
    assert inertia(A, backend="torch") == inertia(A, backend="lapack") == truth(np.linalg.eigvalsh(A), 0.0)


def test_float32_refused():
    with pytest.raises(TypeError, match="float64"):
        eigenvalues(torch.eye(3, dtype=torch.float32))
    with pytest.raises(TypeError, match="float64"):
        inertia(np.eye(3, dtype=np.float32))


def test_derive_tau_on_known_spectrum():
    lams = np.r_[-1e-3, 0.0, 1e-20, 2e-6, 1e-2, 1.0, 50.0]
    P = lams.size
    # a clean point: the gradient term is below the round-off floor
    tau, c = derive_tau(lams, 1e-22, P)
    assert c["floor"] == pytest.approx(10 * P * EPS * 50.0, rel=1e-15) and tau == c["floor"]
    assert c["lambda_sep"] == 2e-6  # smallest |lambda| above floor with lambda^2 >= 10 * 50 * 1e-22
    assert c["grad_term"] == pytest.approx(50.0 * 1e-22 / 2e-6, rel=1e-12)
    # grad 1e-18: the gradient term dominates
    tau, c = derive_tau(lams, 1e-18, P)
    assert c["lambda_sep"] == 2e-6 and tau == c["grad_term"] == pytest.approx(2.5e-11, rel=1e-12)
    # grad 1e-12: 2e-6 is not clearly separated (4e-12 < 10 * 50 * 1e-12) -> next candidate 1e-3
    tau, c = derive_tau(lams, 1e-12, P)
    assert c["lambda_sep"] == 1e-3 and tau == pytest.approx(50.0 * 1e-12 / 1e-3, rel=1e-12)
    assert tau <= c["lambda_sep"] / spectra.SEPARATION
    # a tiny eigenvalue just above the floor never blows the gradient term up
    tiny = np.r_[lams, 5e-12]
    tau2, c2 = derive_tau(tiny, 1e-12, P + 1)
    assert c2["lambda_sep"] == 1e-3 and tau2 == pytest.approx(tau, rel=1e-12)
    # nothing clearly separated (grad huge): tau capped at max|lambda| / SEPARATION
    tau3, c3 = derive_tau(lams, 10.0, P)
    assert c3["lambda_sep"] == 50.0 and tau3 == pytest.approx(5.0)
    # zero matrix and zero gradient
    assert derive_tau(np.zeros(4), 0.0, 4)[0] == 0.0


def test_gap_ratio():
    lams = np.r_[-1.0, -1e-14, 3e-15, 0.0, 1e-6, 2.0]
    assert gap_ratio(lams, 1e-10) == pytest.approx(1e-6 / 1e-14)
    assert gap_ratio(np.r_[1.0, -2.0], 1e-10) == math.inf
    assert gap_ratio(np.r_[0.0, 0.0, 1.0], 1e-10) == math.inf  # only exact zeros
    assert math.isnan(gap_ratio(np.r_[1e-12, 0.0], 1e-10))


def test_analyse_clean_duplication_like_spectrum():
    # a permutation point: index 2, one exact flat direction, 8 decades of margin
    lams = np.r_[-3.4e-2, -5.6e-4, 0.0, 1.5e-3, 2e-2, 0.3, 1.0, 7.4, np.linspace(0.5, 5, 8)]
    rep = analyse(torch.from_numpy(known(lams, 7)), grad_inf=1e-15)
    assert (rep.index, rep.n_zero, rep.n_pos) == (2, 1, lams.size - 3)
    assert rep.counts_agree and rep.exact and rep.method == "dense" and not rep.ambiguous
    assert rep.counts_inertia == rep.counts_eigenvalues == (2, 1, lams.size - 3)
    assert rep.gap_ratio > 1e8
    assert rep.lambda_max == pytest.approx(7.4, rel=1e-12)
    np.testing.assert_allclose(rep.lowest_eigenvalues, np.sort(lams)[:10], rtol=0, atol=1e-14)
    d = rep.to_dict()
    assert d["index"] == 2 and d["counts_inertia"] == [2, 1, lams.size - 3] and d["tau"] == rep.tau
    assert set(d["tau_components"]) >= {"floor", "grad_term", "lambda_sep", "curvature_scale"}


def test_analyse_flags_eigenvalue_at_tau_as_ambiguous():
    lams = np.r_[-1.0, 0.0, 3e-10, 1.0, 2.0]
    rep = analyse(known(lams, 2), grad_inf=0.0, tau=1e-9)
    assert rep.tau == 1e-9 and rep.tau_components["given"] == 1e-9
    assert (rep.index, rep.n_zero) == (1, 2)
    assert rep.counts_at_tau_over_100[:2] == (1, 1) and rep.counts_at_100_tau[:2] == (1, 2)
    assert rep.ambiguous
    assert rep.gap_ratio == pytest.approx(1.0 / 3e-10, rel=1e-4)
    # an eigenvalue far from tau: not ambiguous
    assert not analyse(known(np.r_[-1.0, 0.0, 1.0, 2.0], 2), grad_inf=0.0, tau=1e-9).ambiguous


def _small_landscape(seed=0):
    spec = MLPSpec((2, 4, 1), activation="tanh")
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    Y = torch.sin(X[:, :1]) + X[:, 1:] ** 2
    return Landscape(spec, X, Y, device="cpu"), spec.init(seed, scale=1.5)


def test_lanczos_fallback_matches_dense():
    land, theta = _small_landscape()
    P = land.n_params
    dense = analyse_landscape(land, theta, grad_inf=0.0, max_dense_P=P)
    lanc = analyse_landscape(land, theta, grad_inf=0.0, max_dense_P=P - 1)
    assert dense.method == "dense" and dense.exact
    assert analyse_landscape(land, theta, grad_inf=0.0).method == "dense"  # hessian.dense_fits decides
    assert lanc.method == "lanczos" and not lanc.exact and lanc.counts_inertia is None
    assert lanc.n_eigs == min(20, P - 2)
    np.testing.assert_allclose(lanc.lowest_eigenvalues, dense.lowest_eigenvalues, rtol=0, atol=1e-8)
    assert lanc.lambda_max == pytest.approx(dense.lambda_max, rel=1e-8)
    assert (lanc.index, lanc.n_zero, lanc.n_pos) == (dense.index, dense.n_zero, dense.n_pos)
    assert any("estimate" in note for note in lanc.notes)


def test_lanczos_truncation_is_reported_as_a_bound():
    """P = 200 at a non-critical point with 99 negative eigenvalues, 20 requested: the Lanczos estimates are
    the 20 lowest eigenvalues of the dense spectrum, and the counts are flagged as bounds, never as exact."""
    spec = MLPSpec((3, 12, 10, 2), "tanh", True)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    land, theta = Landscape(spec, X, Y, device="cpu"), spec.init(0, scale=3.0)
    P = land.n_params
    assert P == 200
    eigs = np.linalg.eigvalsh(land.hessian(theta).numpy())
    true_index = int(np.sum(eigs < 0))
    lanc = analyse_landscape(land, theta, grad_inf=0.0, max_dense_P=P - 1)
    assert true_index > lanc.n_eigs == 20
    np.testing.assert_allclose(lanc.lowest_eigenvalues, eigs[:10], rtol=0, atol=1e-8 * abs(eigs).max())
    assert lanc.index == 20 and lanc.index_is_lower_bound and not lanc.exact
    assert lanc.index <= true_index and lanc.n_pos >= P - true_index
    dense = analyse_landscape(land, theta, grad_inf=0.0, max_dense_P=P)
    assert dense.index == true_index and not dense.index_is_lower_bound
