"""One definition of every scalar permsym derives from a trial record.

Two views of the same record, built from the same helpers so that a name means the same everywhere:
- `record_metrics`: the MLflow metrics of a trial run (per layer and order, `L<k>_K<K>_...`);
- `trial_metrics`: the sweep-level scalars a trial reports to Ray Tune (and that an Optuna search may
  optimise), summed over layers and orders.
The ratios are defined once here (`frac_first_order`, `frac_saddle`); `tracking.query.summary` pools the
same ratios over seeds.
"""
from __future__ import annotations

import math

COUNT_FIELDS = ("log10_bound", "n_found", "n_critical", "n_saddle", "n_first_order", "log10_critical",
                "log10_saddle", "log10_first_order", "n_pair_sets", "n_not_converged", "n_channel", "n_reduced",
                "n_reduced_irreducible", "n_reducible", "n_undetermined", "n_uncertified", "n_ambiguous",
                "n_points_reducible")

#: The scalars of `trial_metrics` (what a sweep's `search.metric` may name).
TRIAL_METRICS = ("converged", "min_loss", "min_grad_inf", "n_points", "n_critical", "n_saddle", "n_first_order",
                 "frac_first_order", "frac_saddle", "log10_critical", "log10_first_order", "trial_time_s")


def frac_first_order(n_first_order: float, n_saddle: float) -> float:
    """First-order saddles among the saddles (NaN without saddles): the one definition of the ratio."""
    return float(n_first_order) / float(n_saddle) if n_saddle else math.nan


def frac_saddle(n_saddle: float, n_found: float) -> float:
    """Saddles among the distinct permutation points found (NaN when none was found)."""
    return float(n_saddle) / float(n_found) if n_found else math.nan


def record_converged(record: dict) -> bool:
    return bool((record.get("minimum") or {}).get("converged")) and not record.get("failure")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def count_prefix(layer, order) -> str:
    return f"L{int(layer)}_K{int(order)}_"


def record_metrics(record: dict) -> dict[str, float]:
    """The trial's scalars as MLflow metrics (non-finite and missing values are left out).

    minimum_{loss,grad_inf,index,n_zero}, minimum_channel (1/0: the minimisation ended along a channel to
    infinity), minimum_certified (1/0: a converged trial whose theta* is a certified minimum), n_params,
    log10_minima, n_points, n_reduced, converged (1/0), arch_depth (number of hidden layers),
    arch_width_{min,max,sum}, time_<phase>, L<k>_barrier (highest path barrier of layer k) and, for converged
    trials only, the counts per layer and order L<k>_K<K>_{log10_bound, n_found, n_critical, n_saddle,
    n_first_order, log10_critical, log10_saddle, log10_first_order, frac_first_order, n_pair_sets,
    n_not_converged, n_reduced, n_reduced_irreducible, n_reducible, n_undetermined, n_uncertified, n_ambiguous,
    n_points_reducible} (permsym_core.counting: counts of irreducible points only; saddles certified by
    escape). Unconverged trials log no counts: they count nowhere.
    """
    m: dict[str, float] = {}
    mini = record.get("minimum") or {}
    for k in ("loss", "grad_inf", "index", "n_zero"):
        m[f"minimum_{k}"] = mini.get(k)
    m["n_params"] = mini.get("n_params")
    m["log10_minima"] = record.get("log10_minima")
    m["n_points"] = len(record.get("points") or [])
    m["n_reduced"] = len(record.get("reduced") or [])
    conv = record_converged(record)
    m["converged"] = 1.0 if conv else 0.0
    m["minimum_channel"] = 1.0 if mini.get("stop_reason") == "channel" else 0.0
    m["minimum_certified"] = 1.0 if (conv and mini.get("is_minimum")) else 0.0
    widths = [int(w) for w in (record.get("config") or {}).get("widths") or []]
    if widths:
        m["arch_depth"] = len(widths)
        m["arch_width_min"] = min(widths)
        m["arch_width_max"] = max(widths)
        m["arch_width_sum"] = sum(widths)
    for phase, t in (record.get("timings") or {}).items():
        m[f"time_{phase}"] = t
    for p in record.get("paths") or []:
        key = f"L{int(p.get('layer', 0))}_barrier"
        b = p.get("barrier")
        if _finite(b):
            m[key] = max(b, m.get(key, -math.inf))
    if conv:
        for c in record.get("counts") or []:
            pre = count_prefix(c["layer"], c["order"])
            for f in COUNT_FIELDS:
                m[pre + f] = c.get(f)
            m[pre + "frac_first_order"] = frac_first_order(c.get("n_first_order") or 0, c.get("n_saddle") or 0)
    return {k: float(v) for k, v in m.items() if _finite(v)}


def _log10_sum(values: list[float]) -> float:
    if not values:
        return math.nan
    top = max(values)
    return top + math.log10(sum(10 ** (v - top) for v in values))


def trial_metrics(record: dict) -> dict[str, float]:
    """The scalars a trial reports to Tune (and that an Optuna search may optimise), summed over layers and
    orders. Non-converged trials count nothing (counts 0, fractions NaN)."""
    mini = record.get("minimum") or {}
    conv = record_converged(record)
    rows = (record.get("counts") or []) if conv else []
    tot = {f: sum(int(r.get(f) or 0) for r in rows) for f in ("n_found", "n_critical", "n_saddle", "n_first_order")}
    return {
        "converged": 1.0 if conv else 0.0,
        "min_loss": _num(mini.get("loss")),
        "min_grad_inf": _num(mini.get("grad_inf")),
        "n_points": float(tot["n_found"]),
        "n_critical": float(tot["n_critical"]),
        "n_saddle": float(tot["n_saddle"]),
        "n_first_order": float(tot["n_first_order"]),
        "frac_first_order": frac_first_order(tot["n_first_order"], tot["n_saddle"]),
        "frac_saddle": frac_saddle(tot["n_saddle"], tot["n_found"]),
        "log10_critical": _log10_sum([r["log10_critical"] for r in rows if r.get("log10_critical") is not None]),
        "log10_first_order": _log10_sum([r["log10_first_order"] for r in rows
                                         if r.get("log10_first_order") is not None]),
        "trial_time_s": _num((record.get("timings") or {}).get("total")),
    }


def nan_metrics() -> dict[str, float]:
    """trial_metrics of a trial that produced no record (failed, timed out)."""
    return {k: math.nan for k in TRIAL_METRICS}
