"""The count summary of loaded trial runs and points: per group and per (layer, order), the multiplicity-scaled
empirical counts against the lower bound (SUMMARY_DOC says what every column means). Pure pandas: the
reading of the store is tracking.query's."""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import pandas as pd

from . import metrics as _metrics
from . import runs as _runs

_LK = re.compile(r"^L(\d+)_K(\d+)_(.+)$")


def _log10_mean(values: Iterable) -> float:
    """log10 of the mean of 10**v over runs; a missing value (None/NaN: a zero count) counts as 0."""
    vals = [v for v in values]
    if not vals:
        return float("nan")
    finite = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return float("nan")
    m = max(finite)
    return m + math.log10(sum(10 ** (v - m) for v in finite) / len(vals))


def _log10_sum(values: Iterable) -> float:
    finite = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return float("nan")
    m = max(finite)
    return m + math.log10(sum(10 ** (v - m) for v in finite))


def layer_orders(rdf: pd.DataFrame) -> list[tuple[int, int]]:
    out = set()
    for c in rdf.columns:
        m = _LK.match(str(c))
        if m and m.group(3) == "n_found":
            out.add((int(m.group(1)), int(m.group(2))))
    return sorted(out)


SUMMARY_DOC = """\
Columns of summary(): one row per group (the `by` columns) and hidden layer / order K.
What it measures: the bound stands for ONE irreducible reduced critical point per layer and order (its
C(n_k - K, K) permutation points, each of multiplicity n_k!/2^K prod_{l != k} n_l!). The counts say how many
distinct irreducible reduced points the trials found (n_reduced_irreducible, up to permutation) and what index
their permutation points have; reducible reduced points (on continua: coincident, antiparallel or silent
neurons, or a smaller network at the same loss) are counted apart (n_reducible) and never multiplied.
Saddles are certified: index >= 1 and the loss drops as 0.5 lambda eps^2 along every negative direction.
n_seeds: converged trials behind the row (seeds: which). log10_minima: log10 prod_k n_k! (equivalent minima).
log10_bound: log10 of the lower bound on K-th order permutation points of this layer.
log10_critical / log10_saddle / log10_first_order: log10 of the multiplicity-scaled empirical count,
averaged over seeds in linear space (log10 of the seed-mean of count x multiplicity; a seed that found none
contributes 0). log10_ratio_*: that minus log10_bound (0: meets the bound, > 0: exceeds, < 0: short).
n_found .. n_first_order: mean over seeds of the distinct points found per trial.
frac_first_order: first-order saddles / saddles, pooled over seeds (tracking.metrics.frac_first_order of the
summed counts; NaN without saddles).
frac_claim_zero: fraction of critical points with n_zero >= n_{k+1} (the abstract's claim);
frac_claim_guaranteed: with n_neg + n_zero >= n_{k+1}; fa_agreement: fraction of points with a
Fukumizu-Amari prediction where it equals the Hessian index (n_fa points had one); index_agreement: fraction
where the split-block prediction (every layer) equals the Hessian index; n_points: critical points of
irreducible reduced points behind these fractions; frac_ambiguous: zero/non-zero calls flagged ambiguous.
n_reduced_irreducible / n_reducible / n_undetermined (neither shown reducible nor irreducible: a smaller
network's re-minimisation ended unconverged at the same loss or lower; never multiplied) / n_uncertified:
mean per seed. point_index_dist: index -> number of
critical permutation points of irreducible reduced points, pooled over seeds; reduced_index_dist: the same for
the irreducible reduced points themselves. Records before schema 2 have these fields empty.
n_trials / frac_certified / frac_channel: over ALL the group's finished trials (converged or not), the number,
the fraction whose theta* is a certified minimum, and the fraction whose minimisation ended along a channel to
infinity (stop reason "channel"); a group with no converged trial still gets one row (layer empty, n_seeds 0)."""


def _dist(values) -> str:
    """'index:count, ...' of a column of integers (NA left out)."""
    v = pd.Series(values).dropna().astype(int)
    return ", ".join(f"{k}:{n}" for k, n in sorted(v.value_counts().items()))


def _outcomes(rdf: pd.DataFrame, by: list) -> dict[tuple, dict]:
    """Per group, over ALL its finished trials: n_trials, frac_certified (a certified minimum), frac_channel
    (the minimisation ran along a channel to infinity; permsym_core.channels)."""
    out = {}
    for key, g in rdf.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        cert = g["minimum_certified"] if "minimum_certified" in g else pd.Series(float("nan"), index=g.index)
        chan = g["minimum_channel"] if "minimum_channel" in g else pd.Series(float("nan"), index=g.index)
        out[key] = {"n_trials": int(len(g)),
                    "frac_certified": float(cert.fillna(0).mean()) if cert.notna().any() else float("nan"),
                    "frac_channel": float(chan.fillna(0).mean()) if chan.notna().any() else float("nan")}
    return out


def summarise(rdf: pd.DataFrame, pdf: pd.DataFrame, by: Sequence[str] = ("task", "activation", "widths")
              ) -> pd.DataFrame:
    """The summary of already-loaded runs (converged rows are used) and points; see SUMMARY_DOC. Trials with
    different weight decays are different landscapes: where any trial has one, weight_decay joins `by`."""
    by = list(by)
    if "weight_decay" in rdf.columns and "weight_decay" not in by and (rdf["weight_decay"].fillna(0) > 0).any():
        by.append("weight_decay")
    cols = by + ["layer", "order", "n_seeds", "seeds", "log10_minima", "log10_bound", "log10_critical",
                 "log10_saddle", "log10_first_order", "log10_ratio_critical", "log10_ratio_saddle",
                 "log10_ratio_first_order", "n_found", "n_critical", "n_saddle", "n_first_order",
                 "frac_first_order", "frac_claim_zero", "frac_claim_guaranteed", "fa_agreement", "n_fa",
                 "n_points", "frac_ambiguous", "n_reduced_irreducible", "n_reducible", "n_undetermined",
                 "n_uncertified", "index_agreement", "point_index_dist", "reduced_index_dist", "n_trials", "frac_certified",
                 "frac_channel"]
    if rdf.empty or "converged" not in rdf.columns:
        return pd.DataFrame(columns=cols)
    missing = [b for b in by if b not in rdf.columns]
    if missing:
        raise ValueError(f"by: unknown column {missing[0]!r}; expected run columns such as task, activation, "
                         f"widths, depth, seed, orders")
    outcomes = _outcomes(rdf, by)
    rdf = rdf[rdf["converged"]]
    rows = []
    for key, g in rdf.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        gp = pdf[pdf["run_id"].isin(g["run_id"])] if not pdf.empty else pdf
        for layer, order in layer_orders(g):
            pre = _runs.count_prefix(layer, order)
            sub = g[g[pre + "n_found"].notna()]
            if sub.empty:
                continue
            row = dict(zip(by, key))
            row.update(layer=layer, order=order, n_seeds=len(sub),
                       seeds=tuple(sorted(int(s) for s in sub["seed"])) if "seed" in sub else ())
            row["log10_minima"] = float(sub["log10_minima"].mean()) if "log10_minima" in sub else float("nan")
            row["log10_bound"] = float(sub[pre + "log10_bound"].mean()) if pre + "log10_bound" in sub else float("nan")
            for kind in ("critical", "saddle", "first_order"):
                col = pre + "log10_" + kind
                v = _log10_mean(sub[col]) if col in sub else float("nan")
                row["log10_" + kind] = v
                ratio = v - row["log10_bound"]
                row["log10_ratio_" + kind] = 0.0 if abs(ratio) < 1e-9 else ratio     # rounding noise of log10
            for kind in ("found", "critical", "saddle", "first_order"):
                col = pre + "n_" + kind
                row["n_" + kind] = float(sub[col].fillna(0).mean()) if col in sub else float("nan")
            for kind in ("reduced_irreducible", "reducible", "undetermined", "uncertified"):
                col = pre + "n_" + kind
                row["n_" + kind] = float(sub[col].mean()) if col in sub and sub[col].notna().any() else float("nan")
            n_sad = sub[pre + "n_saddle"].fillna(0).sum() if pre + "n_saddle" in sub else 0
            n_fo = sub[pre + "n_first_order"].fillna(0).sum() if pre + "n_first_order" in sub else 0
            row["frac_first_order"] = _metrics.frac_first_order(n_fo, n_sad)      # the one definition
            lp = gp[(gp["layer"] == layer) & (gp["order"] == order) & (gp["critical"].fillna(False))] \
                if not gp.empty else gp
            if len(lp) and "reducible" in lp:
                lp = lp[~lp["reducible"].fillna(False).astype(bool)]      # irreducible only (schema >= 2)
            if len(lp) and "reducibility_undetermined" in lp:
                lp = lp[~lp["reducibility_undetermined"].fillna(False).astype(bool)]
            row["n_points"] = int(len(lp))
            row["point_index_dist"] = _dist(lp["index"]) if len(lp) else ""
            red = lp.drop_duplicates(subset=["run_id", "reduced_id"]) if len(lp) and "reduced_index" in lp else lp.iloc[0:0]
            row["reduced_index_dist"] = _dist(red["reduced_index"]) if len(red) else ""
            pred = lp[lp["index_predicted"].notna()] if len(lp) else lp
            row["index_agreement"] = float((pred["index_predicted"] == pred["index"]).astype(float).mean()) \
                if len(pred) else float("nan")
            if len(lp):
                row["frac_claim_zero"] = float(lp["claim_zero_holds"].astype(float).mean())
                row["frac_claim_guaranteed"] = float(lp["claim_guaranteed_holds"].astype(float).mean()) \
                    if "claim_guaranteed_holds" in lp else float("nan")
                fa = lp[lp["fa_index"].notna()] if "fa_index" in lp else lp.iloc[0:0]
                row["n_fa"] = int(len(fa))
                row["fa_agreement"] = float((fa["fa_index"] == fa["index"]).astype(float).mean()) if len(fa) \
                    else float("nan")
                row["frac_ambiguous"] = float(lp["ambiguous"].astype(float).mean()) if "ambiguous" in lp \
                    else float("nan")
            else:
                row.update(frac_claim_zero=float("nan"), frac_claim_guaranteed=float("nan"), n_fa=0,
                           fa_agreement=float("nan"), frac_ambiguous=float("nan"))
            row.update(outcomes[key])
            rows.append(row)
    have = {tuple(r[b] for b in by) for r in rows}
    for key, frac in outcomes.items():      # a group without a converged trial still shows its outcomes
        if key not in have:
            rows.append({**dict(zip(by, key)), "n_seeds": 0, **frac})
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(by + ["layer", "order"], kind="stable").reset_index(drop=True)
