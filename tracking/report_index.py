"""The index of the permutation points per hidden layer against n_{k+1}, the number of units the layer feeds.

On the plain loss the split block of a permutation point is S = [[B/2, C], [C^T, 0]], C the layer's
back-propagated error block (fan-in x n_{k+1}); S has at least rank(C) negative eigenvalues, and at a critical
point C a = 0 (a the neuron's outgoing vector), so rank(C) is generically n_{k+1} - 1 (less where the fan-in is
smaller) and first-order saddles can occur only in layers feeding one or two units (Brea et al. 2019; README
"Why the index prediction is exact"). Under a weight decay the block is S + lambda I: eigenvalues of S in
(-lambda, 0) are lifted, and the statement does not apply (first_order_possible is left empty there). This
module draws the index histogram of the critical irreducible points of each hidden layer with n_{k+1} marked
(index_hist.png) and tabulates, per layer, the index distribution and whether first-order saddles exist.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .figures import new_figure

INDEX_PARAGRAPH = (
    "Per hidden layer: the layer feeds n_(k+1) units. On the plain loss the split block of a permutation point "
    "has at least rank(C) negative eigenvalues, C the layer's back-propagated error block, whose rank at a "
    "critical point is generically n_(k+1) - 1 (C a = 0), so first-order saddles are possible only where "
    "n_(k+1) <= 2 (first_order_possible). Under a weight decay the block gains lambda I and the statement does "
    "not apply (first_order_possible empty). Critical points of irreducible reduced points only.")


def _counted(pts: pd.DataFrame) -> pd.DataFrame:
    """The critical permutation points of irreducible (not reducible, not undetermined) reduced points."""
    if pts.empty or "critical" not in pts:
        return pts.iloc[0:0]
    crit = pts[pts["critical"].fillna(False).astype(bool)]
    for col in ("reducible", "reducibility_undetermined"):
        if col in crit:
            crit = crit[~crit[col].fillna(False).astype(bool)]
    return crit


def _n_next(crit: pd.DataFrame) -> pd.Series:
    """n_{k+1} of each point: its record's n_next, else (older records) its plateau dimension / K."""
    old = (pd.to_numeric(crit["plateau_dim"]) // pd.to_numeric(crit["order"])).astype("Int64")
    if "n_next" not in crit:
        return old
    return pd.to_numeric(crit["n_next"]).astype("Int64").fillna(old)


def weight_decay_of(df: pd.DataFrame) -> pd.Series:
    """Each row's weight decay (0: the plain loss; records without the column are plain)."""
    if "weight_decay" not in df:
        return pd.Series(0.0, index=df.index)
    return df["weight_decay"].fillna(0).astype(float)


def _n_first_order(g: pd.DataFrame) -> int:
    """Certified first-order saddles: index 1 and the escape certified (records without `saddle`: index 1)."""
    certified = g["saddle"].fillna(False).astype(bool) if "saddle" in g else True
    return int(((g["index"].astype(int) == 1) & certified).sum())


def index_by_layer(pts: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, activation, widths, weight_decay, layer, n_next): n_points, index_min, index_max,
    index_dist ("index:count, ..."), n_first_order (certified first-order saddles) and first_order_possible
    (n_next <= 2 on the plain loss; None under a weight decay). Different weight decays are never pooled."""
    cols = ["task", "activation", "widths", "weight_decay", "layer", "n_next", "n_points", "index_min",
            "index_max", "index_dist", "n_first_order", "first_order_possible"]
    crit = _counted(pts)
    if crit.empty:
        return pd.DataFrame(columns=cols)
    crit = crit.assign(n_next=_n_next(crit), weight_decay=weight_decay_of(crit))
    rows = []
    for key, g in crit.groupby(["task", "activation", "widths", "weight_decay", "layer", "n_next"], sort=True):
        idx = g["index"].astype(int)
        rows.append(dict(zip(cols[:6], key), n_points=len(g), index_min=int(idx.min()), index_max=int(idx.max()),
                         index_dist=", ".join(f"{k}:{n}" for k, n in sorted(idx.value_counts().items())),
                         n_first_order=_n_first_order(g),
                         first_order_possible=None if key[3] > 0 else bool(key[5] <= 2)))
    return pd.DataFrame(rows, columns=cols)


def index_hist_figure(pts: pd.DataFrame):
    """One panel per hidden layer: the index histogram (bars per order K and weight decay: penalised and plain
    landscapes are never pooled into one bar), n_{k+1} marked by a dashed line (one per distinct value among the
    layer's points) and the number of certified first-order saddles in the title."""
    crit = _counted(pts)
    if crit.empty:
        return None
    crit = crit.assign(n_next=_n_next(crit), wd=weight_decay_of(crit))
    layers = sorted(int(x) for x in crit["layer"].unique())
    series = sorted({(int(K), float(w)) for K, w in zip(crit["order"], crit["wd"])})
    fig = new_figure(4.2 * len(layers) + 0.5, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(layers), squeeze=False)).ravel()
    from matplotlib import colormaps
    cols = [colormaps["viridis"](x) for x in np.linspace(0.1, 0.85, max(len(series), 1))]
    for ax, layer in zip(axes, layers):
        sub = crit[crit["layer"] == layer]
        n_next = sorted(int(v) for v in sub["n_next"].dropna().unique())
        vmax = max([int(sub["index"].max())] + n_next)
        bins = np.arange(0, vmax + 1)
        width = 0.8 / len(series)
        for k, (K, w) in enumerate(series):
            idx = sub[(sub["order"] == K) & (sub["wd"] == w)]["index"].astype(int)
            counts = np.array([(idx == b).sum() for b in bins])
            ax.bar(bins + (k - (len(series) - 1) / 2) * width, counts, width=width, color=cols[k],
                   label=f"K={K}{f', weight decay {w:g}' if w > 0 else ''} (n={len(idx)})")
        for i, n in enumerate(n_next):
            ax.axvline(n, color="tab:red", ls="--", lw=1, label="n_{k+1}" if i == 0 else None)
        ax.set_xticks(bins)
        ax.set_xlabel("Hessian index (# eigenvalues < -tau)")
        ax.set_ylabel("critical permutation points")
        ax.yaxis.get_major_locator().set_params(integer=True)
        n_fo = _n_first_order(sub)
        ax.set_title(f"hidden layer {layer}: feeds n_(k+1) = {', '.join(map(str, n_next))}\n"
                     f"first-order saddles: {n_fo} of {len(sub)}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle("Index of the permutation points of irreducible reduced points, all trials", fontsize=11)
    return fig
