"""The index of the permutation points per hidden layer against n_{k+1}, the number of units the layer feeds.

In a layer feeding n_{k+1} units the split block of a permutation point is S = [[B/2, C], [C^T, 0]] with C the
layer's back-propagated error block (fan-in x n_{k+1}): S has at least rank(C) negative eigenvalues, and C has
generic rank min(fan-in, n_{k+1}), so first-order saddles can occur only in layers feeding one or two units
(Brea et al. 2019; README "Why the index prediction is exact"). This module draws the index histogram of the
critical irreducible points of each hidden layer with n_{k+1} marked (index_hist.png) and tabulates, per
layer, the index distribution and whether first-order saddles exist.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .figures import new_figure

INDEX_PARAGRAPH = (
    "Per hidden layer: the layer feeds n_(k+1) units; the split block of a permutation point there has at "
    "least rank(C) negative eigenvalues, C the layer's back-propagated error block (generic rank "
    "min(fan-in, n_(k+1))), so first-order saddles are possible only where n_(k+1) <= 2. Critical points of "
    "irreducible reduced points only.")


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
    if "n_next" in crit:
        n = pd.to_numeric(crit["n_next"]).astype("Int64")
        if n.notna().all():
            return n
    return (pd.to_numeric(crit["plateau_dim"]) // pd.to_numeric(crit["order"])).astype("Int64")


def index_by_layer(pts: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, activation, widths, layer, n_next): n_points, index_min, index_max, index_dist
    ("index:count, ..."), n_first_order and first_order_possible (n_next <= 2)."""
    cols = ["task", "activation", "widths", "layer", "n_next", "n_points", "index_min", "index_max",
            "index_dist", "n_first_order", "first_order_possible"]
    crit = _counted(pts)
    if crit.empty:
        return pd.DataFrame(columns=cols)
    crit = crit.assign(n_next=_n_next(crit))
    rows = []
    for key, g in crit.groupby(["task", "activation", "widths", "layer", "n_next"], sort=True):
        idx = g["index"].astype(int)
        rows.append(dict(zip(cols[:5], key), n_points=len(g), index_min=int(idx.min()), index_max=int(idx.max()),
                         index_dist=", ".join(f"{k}:{n}" for k, n in sorted(idx.value_counts().items())),
                         n_first_order=int((idx == 1).sum()), first_order_possible=bool(key[4] <= 2)))
    return pd.DataFrame(rows, columns=cols)


def index_hist_figure(pts: pd.DataFrame):
    """One panel per hidden layer: the index histogram (bars per order K), n_{k+1} marked by a dashed line
    (one per distinct value among the layer's points) and the number of first-order saddles in the title."""
    crit = _counted(pts)
    if crit.empty:
        return None
    crit = crit.assign(n_next=_n_next(crit))
    layers = sorted(int(x) for x in crit["layer"].unique())
    orders = sorted(int(x) for x in crit["order"].unique())
    fig = new_figure(4.2 * len(layers) + 0.5, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(layers), squeeze=False)).ravel()
    from matplotlib import colormaps
    cols = [colormaps["viridis"](x) for x in np.linspace(0.1, 0.85, max(len(orders), 1))]
    for ax, layer in zip(axes, layers):
        sub = crit[crit["layer"] == layer]
        n_next = sorted(int(v) for v in sub["n_next"].dropna().unique())
        vmax = max([int(sub["index"].max())] + n_next)
        bins = np.arange(0, vmax + 1)
        width = 0.8 / len(orders)
        for k, K in enumerate(orders):
            idx = sub[sub["order"] == K]["index"].astype(int)
            counts = np.array([(idx == b).sum() for b in bins])
            ax.bar(bins + (k - (len(orders) - 1) / 2) * width, counts, width=width, color=cols[k],
                   label=f"K={K} (n={len(idx)})")
        for i, n in enumerate(n_next):
            ax.axvline(n, color="tab:red", ls="--", lw=1, label="n_{k+1}" if i == 0 else None)
        ax.set_xticks(bins)
        ax.set_xlabel("Hessian index (# eigenvalues < -tau)")
        ax.set_ylabel("critical permutation points")
        ax.yaxis.get_major_locator().set_params(integer=True)
        n_fo = int((sub["index"].astype(int) == 1).sum())
        ax.set_title(f"hidden layer {layer}: feeds n_(k+1) = {', '.join(map(str, n_next))}\n"
                     f"first-order saddles: {n_fo} of {len(sub)}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle("Index of the permutation points of irreducible reduced points, all trials", fontsize=11)
    return fig
