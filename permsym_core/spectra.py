"""Hessian spectra at a critical point: eigenvalues, Sylvester inertia, a derived zero tolerance tau, and a
report of the saddle index and flat directions that says how safe every zero/non-zero call is.

- `eigenvalues(H)`: all eigenvalues, ascending, float64 (torch.linalg.eigvalsh on H's device).
- `inertia(H, shift)`: (n_neg, n_zero, n_pos) of H - shift*I from a Bunch-Kaufman LDL^T (Sylvester's law):
  torch.linalg.ldl_factor_ex on every device by default (LAPACK dsytrf with a queried workspace is kept as
  backend="lapack": as fast on a quiet 2-core box, P = 2,000-8,000, but its OpenBLAS threads slowed 5-8x
  whenever the cores were shared, 3.3 s -> 27 s at P = 8,000, where torch stayed within 2x). Zero pivots are
  only exact zeros of D: never count zeros this way.
- `count(H, tau)`: index = #{lambda < -tau}, n_zero = #{|lambda| <= tau}, n_pos, by spectrum slicing
  (inertia of H + tau I and H - tau I).
- `derive_tau(eigs, grad_inf, P)`: tau = max(round-off floor, gradient term); see its docstring.
- `analyse(H, grad_inf)`: dense SpectrumReport, counts by eigenvalues and by inertia, cross-checked.
- `analyse_landscape(landscape, theta, grad_inf)`: dense when the Hessian fits in memory, else Lanczos on
  Hessian-vector products (counts then are estimates: exact False).
Everything is float64; float32 input is refused (at a duplication point it gives the zero mode a random sign).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.linalg import lapack

EPS = float(np.finfo(np.float64).eps)
ROUNDOFF_C = 10.0  # round-off floor: ROUNDOFF_C * P * eps * max|lambda|
SEPARATION = 10.0  # an eigenvalue is "clearly separated" when it is >= SEPARATION times the blur it implies


def _as_float64_tensor(H) -> torch.Tensor:
    """H as a square float64 torch tensor (numpy arrays are wrapped, tensors stay on their device)."""
    Ht = H if isinstance(H, torch.Tensor) else torch.as_tensor(np.asarray(H))
    if Ht.dtype != torch.float64:
        raise TypeError(f"H: expected float64, got {Ht.dtype}; float32 cannot resolve the zero modes of a "
                        "permutation point (convert the Hessian to float64 before the spectrum)")
    if Ht.ndim != 2 or Ht.shape[0] != Ht.shape[1]:
        raise ValueError(f"H: expected a square matrix, got shape {tuple(Ht.shape)}")
    return Ht


def eigenvalues(H) -> np.ndarray:
    """All eigenvalues of the symmetric matrix H, ascending, float64 (computed on H's device)."""
    Ht = _as_float64_tensor(H)
    return torch.linalg.eigvalsh(Ht).cpu().numpy()


def _inertia_of_d(diag: np.ndarray, sub: np.ndarray, ipiv: np.ndarray) -> tuple[int, int, int]:
    """Inertia of the block-diagonal D of a lower Bunch-Kaufman factorisation (LAPACK ?sytrf convention,
    shared by torch.linalg.ldl_factor): ipiv is 1-based; ipiv[k] > 0 marks a 1x1 block d = diag[k];
    ipiv[k] = ipiv[k+1] < 0 marks a 2x2 block [[diag[k], sub[k]], [sub[k], diag[k+1]]] whose inertia follows
    from its determinant (negative: one of each sign) and trace."""
    P = diag.shape[0]
    one = np.ones(P, dtype=bool)
    neg = pos = zero = 0
    k = 0
    for j in np.flatnonzero(ipiv < 0):  # scan only the 2x2 blocks; everything else is a 1x1 pivot
        if j < k:
            continue  # second row of a 2x2 block already taken
        if j + 1 >= P:
            raise ValueError("ipiv: a 2x2 pivot starts at the last row (not a lower ?sytrf factorisation)")
        one[j] = one[j + 1] = False
        a, b, c = diag[j], sub[j], diag[j + 1]
        det, tr = a * c - b * b, a + c
        if det < 0:
            neg, pos = neg + 1, pos + 1
        elif det > 0:
            if tr > 0:
                pos += 2
            else:
                neg += 2
        else:  # singular block: one zero, the other eigenvalue is the trace
            zero += 1 + (tr == 0)
            neg += tr < 0
            pos += tr > 0
        k = j + 2
    d1 = diag[one]
    return int(neg + np.sum(d1 < 0)), int(zero + np.sum(d1 == 0)), int(pos + np.sum(d1 > 0))


def _ldl_lapack(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dsytrf (lower) with the blocked workspace queried first (the default lwork is ~15x slower)."""
    n = A.shape[0]
    lwork = max(int(lapack.dsytrf_lwork(n, lower=1)[0]), n, 1)
    ldu, ipiv, info = lapack.dsytrf(A, lower=1, lwork=lwork, overwrite_a=1)
    if info < 0:
        raise RuntimeError(f"dsytrf: illegal argument {-info}")
    return np.diag(ldu).copy(), np.diag(ldu, -1).copy(), ipiv


def _ldl_torch(A: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch.linalg.ldl_factor_ex (CPU or CUDA); same lower storage and 1-based pivots as dsytrf."""
    LD, piv, info = torch.linalg.ldl_factor_ex(A)
    if int(info) < 0:
        raise RuntimeError(f"ldl_factor: illegal argument {-int(info)}")
    return (torch.diagonal(LD).cpu().numpy(), torch.diagonal(LD, -1).cpu().numpy(), piv.cpu().numpy())


def inertia(H, shift: float = 0.0, backend: str = "auto") -> tuple[int, int, int]:
    """(n_neg, n_zero, n_pos) of H - shift*I by Sylvester's law on a Bunch-Kaufman LDL^T.

    backend: "auto" (torch), "lapack" (scipy dsytrf) or "torch". n_zero counts exact zero
    pivots only; a singular H gives pivots ~eps*|H| of either sign, so use `count` to count zeros."""
    Ht = _as_float64_tensor(H)
    if backend == "auto":
        backend = "torch"
    if backend not in ("lapack", "torch"):
        raise ValueError(f"backend: expected auto, lapack or torch, got {backend!r}")
    n = Ht.shape[0]
    if n == 0:
        return 0, 0, 0
    if backend == "lapack":
        A = Ht.detach().cpu().numpy().astype(np.float64, order="F", copy=True)
        A[np.diag_indices(n)] -= shift
        return _inertia_of_d(*_ldl_lapack(A))
    A = Ht.detach().clone()
    A.diagonal().sub_(shift)
    return _inertia_of_d(*_ldl_torch(A))


def count(H, tau: float, backend: str = "auto") -> tuple[int, int, int]:
    """(index, n_zero, n_pos) with index = #{lambda < -tau}, n_zero = #{|lambda| <= tau}, by spectrum slicing:
    #{lambda < -tau} = neg(H + tau I) and #{lambda <= tau} = neg(H - tau I) + zero(H - tau I)."""
    if not tau >= 0:
        raise ValueError(f"tau: expected >= 0, got {tau}")
    n = _as_float64_tensor(H).shape[0]
    below = inertia(H, -tau, backend)[0]
    neg_hi, zero_hi, _ = inertia(H, tau, backend)
    at_or_below = neg_hi + zero_hi
    return below, at_or_below - below, n - at_or_below


def counts_from_eigenvalues(eigs, tau: float) -> tuple[int, int, int]:
    """(index, n_zero, n_pos) from eigenvalues, with the same closed zero interval [-tau, tau] as `count`."""
    e = np.asarray(eigs, dtype=np.float64)
    index = int(np.sum(e < -tau))
    n_zero = int(np.sum(np.abs(e) <= tau))
    return index, n_zero, int(e.size - index - n_zero)


def derive_tau(eigs, grad_inf: float, P: int, abs_max: float | None = None,
               hessian_shift: float | None = None) -> tuple[float, dict]:
    """The zero tolerance tau = max(floor, grad_term) and its components.

    hessian_shift, when given, is the measured gradient part: ||H(theta + delta) - H(theta)||_2 with delta
    the Newton correction to the exact critical point (permsym_core.certify.newton_shift). By Weyl's
    inequality no eigenvalue moves further than that on the way to the critical point, so it replaces the
    estimate below (and is not capped: an eigenvalue it swallows is genuinely unresolved).

    floor = ROUNDOFF_C * P * eps * max|lambda|: backward error of the eigensolver / LDL^T (Weyl).
    grad_term: the evaluated point lies about delta = grad_inf / lambda_sep from the true critical point
    (Newton step), and moves the eigenvalues by about curvature_scale * delta. curvature_scale stands for
    the third-derivative norm |D^3 L|, which we do not compute; we take max|lambda| (right for a well-scaled
    net, where curvature changes by O(lambda_max) per unit parameter norm). Limits: it is an order-of-
    magnitude estimate, pessimistic along flat symmetry orbits (moving along them does not lift exact
    zeros), optimistic for saturated units with large weights; grad_inf stands for |g|_2 (<= sqrt(P) times it).
    lambda_sep (the smallest non-zero |lambda|) is chosen robustly: "non-zero" first means above the
    floor; then only a clearly separated |lambda| qualifies, i.e. one at least SEPARATION times the blur it
    would imply, |lambda| >= SEPARATION * max|lambda| * grad_inf / |lambda|. Tiny eigenvalues just above the
    floor therefore cannot blow the gradient term up, and grad_term <= lambda_sep / SEPARATION: tau never
    swallows the smallest clearly separated eigenvalue. Eigenvalues between tau and lambda_sep are counted
    non-zero but are not clearly resolved; the ambiguity flag of `analyse` reports them.
    `abs_max` overrides max|lambda| when eigs is only part of the spectrum (Lanczos).
    """
    e = np.abs(np.asarray(eigs, dtype=np.float64))
    scale = float(abs_max) if abs_max is not None else (float(e.max()) if e.size else 0.0)
    g = float(grad_inf) if grad_inf is not None else 0.0
    if not (math.isfinite(scale) and math.isfinite(g) and g >= 0):
        raise ValueError(f"derive_tau: expected finite max|lambda| and grad_inf >= 0, got {scale}, {g}")
    floor = ROUNDOFF_C * P * EPS * scale
    above = np.sort(e[e > floor])
    separated = above[above * above >= SEPARATION * scale * g]
    lam_sep = float(separated[0]) if separated.size else (float(above[-1]) if above.size else 0.0)
    if hessian_shift is not None and math.isfinite(hessian_shift):
        grad_term, method = float(hessian_shift), "measured"
    else:
        grad_term = min(scale * g / lam_sep, lam_sep / SEPARATION) if lam_sep > 0 else 0.0
        method = "estimated"
    tau = max(floor, grad_term)
    return tau, {"floor": floor, "grad_term": grad_term, "grad_term_method": method, "lambda_sep": lam_sep,
                 "curvature_scale": scale, "grad_inf": g, "P": int(P), "roundoff_c": ROUNDOFF_C,
                 "separation": SEPARATION}


def gap_ratio(eigs, tau: float) -> float:
    """Smallest |lambda| counted non-zero over the largest |lambda| counted zero: inf when nothing (or only
    exact zeros) is counted zero, nan when nothing is counted non-zero. log10 of it = decades of margin."""
    a = np.abs(np.asarray(eigs, dtype=np.float64))
    zeros, nonzeros = a[a <= tau], a[a > tau]
    if nonzeros.size == 0:
        return float("nan")
    if zeros.size == 0 or zeros.max() == 0:
        return float("inf")
    return float(nonzeros.min() / zeros.max())


@dataclass
class SpectrumReport:
    """Saddle index and flat directions at one point. gap_ratio: see `gap_ratio` (inf and nan stay floats
    in to_dict; json writes them as Infinity/NaN). For method "lanczos" (exact False) index/n_zero/n_pos
    are estimates from the `n_eigs` lowest eigenvalues only, counts_inertia/counts_agree are None."""

    index: int
    n_zero: int
    n_pos: int
    tau: float
    tau_components: dict
    gap_ratio: float
    ambiguous: bool
    counts_at_tau_over_100: tuple
    counts_at_100_tau: tuple
    lowest_eigenvalues: list
    lambda_max: float
    counts_eigenvalues: tuple
    counts_inertia: tuple | None
    counts_agree: bool | None
    method: str = "dense"
    exact: bool = True
    index_is_lower_bound: bool = False   # Lanczos: every eigenvalue found lies below tau (index >= the count,
    #                                      n_pos <= P - index - n_zero)
    P: int = 0
    n_eigs: int = 0
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("counts_at_tau_over_100", "counts_at_100_tau", "counts_eigenvalues", "counts_inertia"):
            d[key] = list(d[key]) if d[key] is not None else None
        return d


def _report(eigs: np.ndarray, P: int, grad_inf: float, tau: float | None, abs_max: float | None,
            lambda_max: float, hessian_shift: float | None = None) -> SpectrumReport:
    """Everything that follows from (part of) the spectrum; counts_inertia filled in by the caller."""
    tau_auto, comps = derive_tau(eigs, grad_inf, P, abs_max, hessian_shift)
    if tau is not None:
        comps = {**comps, "given": float(tau), "derived": tau_auto}
    tau = float(tau) if tau is not None else tau_auto
    c = counts_from_eigenvalues(eigs, tau)
    lo, hi = counts_from_eigenvalues(eigs, tau / 100), counts_from_eigenvalues(eigs, tau * 100)
    return SpectrumReport(index=c[0], n_zero=c[1], n_pos=c[2], tau=tau, tau_components=comps,
                          gap_ratio=gap_ratio(eigs, tau), ambiguous=lo[:2] != hi[:2],
                          counts_at_tau_over_100=lo, counts_at_100_tau=hi,
                          lowest_eigenvalues=[float(x) for x in np.sort(eigs)[:10]], lambda_max=lambda_max,
                          counts_eigenvalues=c, counts_inertia=None, counts_agree=None, P=int(P),
                          n_eigs=int(len(eigs)))


def analyse(H, grad_inf: float, tau: float | None = None, hessian_shift: float | None = None,
            eigs: np.ndarray | None = None) -> SpectrumReport:
    """Dense analysis: all eigenvalues, tau (derived unless given), counts by eigenvalues and by spectrum
    slicing (the reported counts are the inertia ones, which are exact for H + E, |E| ~ floor). `eigs`, when
    given, are H's eigenvalues (ascending) already computed, e.g. by one batched eigvalsh over many points."""
    Ht = _as_float64_tensor(H)
    eigs = eigenvalues(Ht) if eigs is None else np.asarray(eigs, dtype=np.float64)
    P = eigs.size
    rep = _report(eigs, P, grad_inf, tau, None, float(eigs[-1]) if P else 0.0, hessian_shift)
    ci = count(Ht, rep.tau)
    rep.counts_inertia, rep.counts_agree = ci, ci == rep.counts_eigenvalues
    rep.index, rep.n_zero, rep.n_pos = ci
    if not rep.counts_agree:
        rep.notes.append("inertia and eigenvalue counts differ: an eigenvalue lies within round-off of +-tau")
    return rep


def _dense_fits(P: int, device, max_dense_P: int | None) -> bool:
    """The single place that decides dense vs Lanczos: the memory estimate of permsym_core.hessian.dense_fits on
    the landscape's device, lowered to max_dense_P when given (a larger max_dense_P never forces an OOM)."""
    from .hessian import dense_fits

    return (max_dense_P is None or P <= max_dense_P) and bool(dense_fits(P, device))


def lanczos_lowest(landscape, theta, k: int, which: str = "SA", tol: float = 0.0, maxiter: int | None = None
                   ) -> tuple[np.ndarray, bool]:
    """The k extreme eigenvalues of the Hessian (eigsh on HVPs), ascending, and whether ARPACK converged
    (on non-convergence the converged ones are returned)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    P = landscape.n_params
    th = landscape.as_theta(theta)

    def matvec(v):
        v = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1)).to(th.device)
        return landscape.hvp(th, v).detach().cpu().numpy()

    op = LinearOperator((P, P), matvec=matvec, dtype=np.float64)
    v0 = np.ones(P) / math.sqrt(P)  # deterministic start
    try:
        vals = eigsh(op, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0, return_eigenvectors=False)
        return np.sort(vals), True
    except ArpackNoConvergence as err:
        return np.sort(np.asarray(err.eigenvalues, dtype=np.float64)), False


def analyse_landscape(landscape, theta, grad_inf: float, tau: float | None = None,
                      max_dense_P: int | None = None) -> SpectrumReport:
    """`analyse` of the dense Hessian when it fits, else Lanczos (which='SA', k = min(20, P - 2)) on HVPs:
    method "lanczos", exact False, counts estimated from the k eigenvalues found. An index >= k found that
    way is only a lower bound (noted)."""
    P = landscape.n_params
    if _dense_fits(P, landscape.device, max_dense_P):
        return analyse(landscape.hessian(theta), grad_inf, tau)
    k = min(20, P - 2)
    if k < 1:
        raise ValueError(f"Lanczos needs P >= 3 parameters, got {P}")
    eigs, ok = lanczos_lowest(landscape, theta, k)
    top, ok_top = lanczos_lowest(landscape, theta, 1, which="LM")
    abs_max = float(np.max(np.abs(np.concatenate([top, eigs])))) if (top.size or eigs.size) else 0.0
    rep = _report(eigs, P, grad_inf, tau, abs_max, abs_max if top.size and top[-1] > 0 else float("nan"))
    rep.method, rep.exact = "lanczos", False
    rep.n_pos = P - rep.index - rep.n_zero
    rep.notes.append(f"counts are estimates from the {eigs.size} lowest eigenvalues (Lanczos on HVPs)")
    if not (ok and ok_top):
        rep.notes.append("ARPACK did not converge for all requested eigenvalues")
    if eigs.size and np.all(eigs <= rep.tau):
        rep.index_is_lower_bound = True
        rep.notes.append("every eigenvalue found is <= tau: index and n_zero are lower bounds, n_pos an upper bound")
    return rep
