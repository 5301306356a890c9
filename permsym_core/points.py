"""The measurement at one critical point: Hessian spectrum and counts (with tau and its parts), and, where
the index is >= 1, the escape test that certifies the saddle. Used for the minimum, the reduced points and
the permutation points alike, so every record carries the same fields.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .certify import Escape, escape, hessian_shift
from .spectra import SpectrumReport, _dense_fits, analyse, analyse_landscape


@dataclass
class PointAnalysis:
    report: SpectrumReport
    escape: Escape | None

    @property
    def saddle(self) -> bool:
        """index >= 1 and the loss drops as predicted along every checked negative direction."""
        return self.report.index >= 1 and self.escape is not None and self.escape.certified

    def fields(self) -> dict:
        """The record fields of this measurement (spectrum, tau and its parts, escape)."""
        r = self.report
        comps = r.tau_components or {}
        out = {"index": r.index, "n_zero": r.n_zero, "n_pos": r.n_pos, "tau": r.tau,
               "tau_roundoff": comps.get("floor"), "tau_gradient": comps.get("grad_term"),
               "tau_gradient_method": comps.get("grad_term_method"),
               "gap": r.gap_ratio, "ambiguous": r.ambiguous, "lowest_eigenvalues": r.lowest_eigenvalues,
               "counts_agree": r.counts_agree, "spectrum_method": r.method, "exact": r.exact,
               "index_is_lower_bound": r.index_is_lower_bound,
               "saddle": self.saddle, "escape": None}
        if self.escape is not None:
            e = self.escape
            worst = max((max(d["rel_err"], d["rel_err_half"]) for d in e.directions), default=None)
            out["escape"] = {"certified": e.certified, "n_negative": e.n_negative, "n_checked": e.n_checked,
                             "worst_rel_err": worst, "rtol": e.rtol, "directions": e.directions}
        return out


def analyse_point(landscape, theta, grad_inf: float, H: torch.Tensor | None = None,
                  max_dense_P: int | None = None, check_escape: bool = True,
                  theta_next: torch.Tensor | None = None) -> PointAnalysis:
    """Spectrum of the Hessian at theta (dense when H is given or fits, else Lanczos estimates) and, for
    index >= 1 with a dense Hessian, the escape test along its negative eigenvectors. theta_next, the
    Newton-corrected point, gives tau its measured gradient part (certify.hessian_shift)."""
    if H is None:
        if not _dense_fits(landscape.n_params, landscape.device, max_dense_P):
            return PointAnalysis(analyse_landscape(landscape, theta, grad_inf, max_dense_P=max_dense_P), None)
        H = landscape.hessian(theta)
    shift = hessian_shift(landscape, theta, theta_next, H) if theta_next is not None else None
    rep = analyse(H, grad_inf, hessian_shift=shift)
    esc = None
    if check_escape and rep.index >= 1:
        lam, V = torch.linalg.eigh(H)
        esc = escape(landscape, theta, lam, V, rep.tau)
    return PointAnalysis(rep, esc)
