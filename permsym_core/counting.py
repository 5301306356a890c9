"""The empirical counts of one trial against the lower bound, per (hidden layer, order K).

What the comparison measures: the bound prod_l n_l! * C(n_k - K, K) / 2^K stands for ONE irreducible
reduced critical point per layer and order (n_k - K neurons in layer k), whose C(n_k - K, K) choices of K
neurons to duplicate each stand for n_k!/2^K * prod_{l != k} n_l! points of weight space. The count says how
many distinct irreducible reduced critical points the trial found (`n_reduced_irreducible`, up to permutation
of every hidden layer) and what index their permutation points have. Only irreducible reduced points are
multiplied by the multiplicity (log10_*); reducible ones lie on continua and are counted on their own
(`n_reducible`, `n_points_reducible`). A point counts as a saddle only when its index is >= 1 AND its escape
test passed (the loss drops as 0.5 lambda eps^2 along every checked negative direction).

Fields per row: layer, order, log10_bound, n_pair_sets (merged networks trained), n_not_converged (of them,
n_channel: ended along a channel to infinity, permsym_core.channels),
n_reduced (distinct converged reduced points, reducible or not), n_reduced_irreducible, n_reducible,
n_undetermined (neither shown: a smaller network's re-minimisation ended unconverged at the same loss or lower;
never multiplied, its points counted in n_points_reducible),
reduced_index_hist (index -> count, irreducible reduced points), n_found (permutation points of irreducible
reduced points), n_critical (of those, |grad|_inf <= grad_tol measured at the point), n_saddle (certified
saddles), n_first_order (certified, index 1), n_uncertified (index >= 1 whose escape failed), point_index_hist,
n_ambiguous, n_points_reducible, log10_critical / log10_saddle / log10_first_order (count x multiplicity,
irreducible only; None when the count is 0).
"""
from __future__ import annotations

import math
from collections import Counter

from . import theory


def _log10_times(count: int, log10_mult: float) -> float | None:
    return math.log10(count) + log10_mult if count > 0 else None


def _hist(values) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(int(x) for x in values if x is not None).items())}


def count_rows(hidden: tuple[int, ...], orders, reduced: list[dict], points: list[dict],
               n_pair_sets: dict[tuple[int, int], int]) -> list[dict]:
    """One row per (layer, order) with at least one pair set tried; see the module docstring."""
    rows = []
    for layer in range(1, len(hidden) + 1):
        for order in orders:
            key = (layer, order)
            if key not in n_pair_sets:
                continue
            red = [r for r in reduced if r["layer"] == layer and r["order"] == order]
            conv = [r for r in red if r["converged"]]
            undet = [r for r in conv if not r.get("reducible") and r.get("reducibility_undetermined")]
            irr_ids = {r["id"] for r in conv if not r.get("reducible") and not r.get("reducibility_undetermined")}
            irr = [r for r in conv if r["id"] in irr_ids]
            pts = [p for p in points if p["layer"] == layer and p["order"] == order]
            pts_irr = [p for p in pts if p["reduced_id"] in irr_ids]
            mult = theory.log10_point_multiplicity(hidden, layer, order)
            n_crit = sum(bool(p["critical"]) for p in pts_irr)
            n_sad = sum(bool(p["critical"] and p["saddle"]) for p in pts_irr)
            n_first = sum(bool(p["critical"] and p["saddle"] and p["index"] == 1) for p in pts_irr)
            rows.append({
                "layer": layer, "order": order,
                "log10_bound": theory.log10_permutation_points_layer(hidden, layer, order),
                "n_pair_sets": n_pair_sets[key],
                "n_not_converged": len(red) - len(conv),
                "n_channel": sum(r.get("stop_reason") == "channel" for r in red),
                "n_reduced": len(conv), "n_reduced_irreducible": len(irr), "n_reducible": len(conv) - len(irr) - len(undet),
                "n_undetermined": len(undet),
                "reduced_index_hist": _hist(r["index"] for r in irr),
                "n_found": len(pts_irr), "n_critical": n_crit, "n_saddle": n_sad, "n_first_order": n_first,
                "n_uncertified": sum(bool(p["critical"] and p["index"] >= 1 and not p["saddle"]) for p in pts_irr),
                "point_index_hist": _hist(p["index"] for p in pts_irr if p["critical"]),
                "n_ambiguous": sum(bool(p.get("ambiguous")) for p in pts_irr),
                "n_points_reducible": len(pts) - len(pts_irr),
                "log10_critical": _log10_times(n_crit, mult), "log10_saddle": _log10_times(n_sad, mult),
                "log10_first_order": _log10_times(n_first, mult),
            })
    return rows
