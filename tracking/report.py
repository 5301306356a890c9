"""The Markdown report of a sweep: the summary table and PNG figures, also logged to the sweep's parent run,
with the same report as one self-contained HTML page (tracking.report_html).

Figures (in the report folder):
- counts_vs_width.png: empirical counts (all saddles, first-order saddles) and the lower bound against
  width, log scale, one panel per depth (rows: orders K), summed over the hidden layers;
- index_hist.png: the Hessian index of the critical permutation points, one panel per hidden layer, n_{k+1}
  marked (tracking.report_index, which also writes the per-layer index table);
- nzero_vs_plateau.png: n_zero against n_{k+1} (the abstract's claim holds on or above the diagonal);
- barrier_vs_width.png: the path barriers against width;
- gamma_line_<i>.png: the gamma-line of a few trials (when recorded);
- valley_<i>.png, permuted_path_<i>.png: the valley segments and the minimum-to-permuted-minimum path of one
  trial per architecture (when recorded).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import query as _query
from . import runs as _runs
from .figures import gamma_line_figure, new_figure, save_png
from .report_index import INDEX_PARAGRAPH, index_by_layer, index_hist_figure, weight_decay_of
from .report_valleys import VALLEY_PARAGRAPH, valley_figures

MARKERS = "osD^v<>ph*"


def _width_x(widths) -> int:
    return max(widths) if widths else 0


def _group_label(task, activation) -> str:
    return f"{task}/{activation}"


def _label_weight_decay(df: pd.DataFrame) -> pd.DataFrame:
    """For the figures that group by activation: a penalised trial's activation label carries its weight decay,
    so that they keep different landscapes apart (the summary and the index table group by weight_decay)."""
    wd = weight_decay_of(df)
    if df.empty or not (wd > 0).any():
        return df
    return df.assign(activation=[a if w == 0 else f"{a}, weight decay {w:g}" for a, w in zip(df["activation"], wd)])


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(max(n, 1))]


def counts_vs_width_figure(summ: pd.DataFrame):
    """Per depth (columns) and order (rows): log10 counts summed over layers against the max hidden width."""
    if summ.empty:
        return None
    s = summ.copy()
    s["depth"] = s["widths"].map(len)
    agg_rows = []
    for (task, act, widths, order), g in s.groupby(["task", "activation", "widths", "order"], sort=True):
        agg_rows.append({"task": task, "activation": act, "widths": widths, "order": order,
                         "depth": len(widths), "x": _width_x(widths),
                         "bound": _query._log10_sum(g["log10_bound"]),
                         "saddle": _query._log10_sum(g["log10_saddle"]),
                         "first_order": _query._log10_sum(g["log10_first_order"]),
                         "minima": float(g["log10_minima"].iloc[0]),
                         "n_seeds": int(g["n_seeds"].min())})
    a = pd.DataFrame(agg_rows)
    depths = sorted(a["depth"].unique())
    orders = sorted(a["order"].unique())
    groups = sorted({(t, ac) for t, ac in zip(a["task"], a["activation"])})
    colors = dict(zip(groups, _colors(len(groups))))
    fig = new_figure(4.6 * len(depths) + 0.5, 3.8 * len(orders) + 0.6)
    axes = fig.subplots(len(orders), len(depths), squeeze=False)
    for i, K in enumerate(orders):
        for j, d in enumerate(depths):
            ax = axes[i][j]
            sub = a[(a["order"] == K) & (a["depth"] == d)]
            for grp in groups:
                gg = sub[(sub["task"] == grp[0]) & (sub["activation"] == grp[1])].sort_values(["x", "widths"])
                if gg.empty:
                    continue
                c = colors[grp]
                lab = _group_label(*grp)
                ax.plot(gg["x"], gg["bound"], ls="--", marker="_", ms=14, color=c, lw=1.4, label=f"{lab}: lower bound")
                ax.plot(gg["x"], gg["saddle"], ls="-", marker="o", color=c, label=f"{lab}: all saddles")
                ax.plot(gg["x"], gg["first_order"], ls=":", marker="s", mfc="none", color=c,
                        label=f"{lab}: first-order saddles")
            ax.set_title(f"depth {d} ({d} hidden layer{'s' if d > 1 else ''}), order K={K}", fontsize=10)
            ax.set_xlabel("hidden width (max over layers)")
            ax.set_ylabel("log10 count (x multiplicity, seed mean)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if not sub.empty:
                ax.set_xlim(sub["x"].min() - 0.5, sub["x"].max() + 0.5)
                ys = sub[["bound", "saddle", "first_order"]].to_numpy(dtype=float)
                ys = ys[np.isfinite(ys)]
                if ys.size:
                    pad = max(0.25, 0.1 * (ys.max() - ys.min()))
                    ax.set_ylim(ys.min() - pad, ys.max() + 2.5 * pad)      # room for the legend
            ax.grid(alpha=0.3)
            if not sub.empty:
                ax.legend(fontsize=7, loc="upper left", ncol=2 if len(groups) > 2 else 1)
    # one line per ~55 characters per panel column, so the title never runs off a single-panel figure
    title = ("Permutation saddles found vs the lower bound\n(log10, summed over hidden layers)" if len(depths) < 2
             else "Permutation saddles found vs the lower bound (log10, summed over hidden layers)")
    fig.suptitle(title, fontsize=11)
    return fig


def nzero_figure(pts: pd.DataFrame):
    if pts.empty:
        return None
    crit = pts[pts["critical"].fillna(False)]
    crit = crit[crit["plateau_dim"].notna()]        # no plateau under a weight decay (permsym_core.penalty)
    if crit.empty:
        return None
    fig = new_figure(5.4, 4.6)
    ax = fig.subplots()
    g = crit.groupby(["plateau_dim", "n_zero"]).size().reset_index(name="n")
    holds = g["n_zero"] >= g["plateau_dim"]
    size = 30 + 270 * np.sqrt(g["n"] / g["n"].max())
    ax.scatter(g["plateau_dim"][holds], g["n_zero"][holds], s=size[holds], color="tab:green", alpha=0.6,
               label="n_zero >= n_{k+1} (claim holds)")
    ax.scatter(g["plateau_dim"][~holds], g["n_zero"][~holds], s=size[~holds], color="tab:red", alpha=0.6,
               label="n_zero < n_{k+1}")
    for _, r in g.iterrows():
        ax.annotate(str(int(r["n"])), (r["plateau_dim"], r["n_zero"]), ha="center", va="center", fontsize=8)
    hi = max(int(g["plateau_dim"].max()), int(g["n_zero"].max())) + 1
    ax.plot([0, hi], [0, hi], color="k", lw=0.8, ls="--")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("n_{k+1} (plateau dimension)")
    ax.set_ylabel("n_zero (# |eigenvalue| <= tau)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Zero eigenvalues vs plateau dimension\n(numbers: how many critical points)", fontsize=10)
    return fig


def barrier_figure(rdf: pd.DataFrame):
    cols = sorted([c for c in rdf.columns if str(c).startswith("L") and str(c).endswith("_barrier")])
    if rdf.empty or not cols:
        return None
    fig = new_figure(6.4, 4.4)
    ax = fig.subplots()
    groups = sorted({(t, a) for t, a in zip(rdf["task"], rdf["activation"])})
    colors = dict(zip(groups, _colors(len(groups))))
    positive = True
    for li, col in enumerate(cols):
        for grp in groups:
            sub = rdf[(rdf["task"] == grp[0]) & (rdf["activation"] == grp[1]) & rdf[col].notna()]
            if sub.empty:
                continue
            x = sub["widths"].map(_width_x).astype(float)
            jitter = (li - (len(cols) - 1) / 2) * 0.08
            positive &= bool((sub[col] > 0).all())
            ax.scatter(x + jitter, sub[col], marker=MARKERS[li % len(MARKERS)], color=colors[grp], alpha=0.75,
                       label=f"{_group_label(*grp)}, layer {col[1:].split('_')[0]}")
            med = sub.assign(x=x).groupby("x")[col].median()
            ax.plot(med.index + jitter, med.values, color=colors[grp], lw=0.8, alpha=0.6)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("hidden width (max over layers)")
    ax.set_ylabel("barrier L(permutation point) - L(theta*)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Barrier of the equal-loss valley paths (highest per trial and layer; line: median)",
                 fontsize=10)
    return fig


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, tuple):
        return "(" + ",".join(str(x) for x in v) + ")"
    if isinstance(v, float):
        return "0" if abs(v) < 1e-9 else f"{v:.3g}"
    return str(v)


def markdown_table(df: pd.DataFrame, columns: Sequence[str]) -> str:
    columns = [c for c in columns if c in df.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in columns) + " |")
    return "\n".join(lines)


COMPARISON_PARAGRAPH = (
    "What the comparison measures: the lower bound stands for one irreducible reduced critical point per "
    "layer and order (a network with n_k - K neurons in layer k whose C(n_k - K, K) permutation points each "
    "stand for n_k!/2^K prod_(l != k) n_l! points of weight space). The empirical count says how many distinct "
    "irreducible reduced critical points the sweep found (up to permutation of every hidden layer) and what "
    "index their permutation points have. A reduced point that is a critical point of a smaller network "
    "embedded (coincident, antiparallel or silent neurons, or a smaller network reaching the same loss) lies "
    "on a continuum: it is counted apart (n_reducible) and never multiplied. A saddle counts only when its "
    "index is >= 1 and the loss drops as 0.5 lambda eps^2 along every negative eigenvector (escape). "
    "log10 counts are count x multiplicity, averaged over seeds in linear space; ratio = log10(count) - "
    "log10(bound): 0 means exactly one irreducible reduced point per layer and order, > 0 several.")


def _percent(x) -> str:
    return f"{100 * x:.0f} %" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def _verdict(row) -> str:
    r = row["log10_ratio_critical"]
    if r is None or not math.isfinite(r):
        return "no irreducible critical points found"
    if abs(r) < 0.005:
        return "meets the bound"
    return f"{'exceeds' if r > 0 else 'falls short of'} the bound by a factor {10 ** abs(r):.3g}"


def _redact(uri: str) -> str:
    from .store import redact_uri

    return redact_uri(uri)


def write_report(out_dir, sweep: str | None = None, tracking_uri: str | None = None, results_dir=None,
                 experiment: str | None = None, log_to_parent: bool = True, max_gamma: int = 3,
                 max_valley: int = 6) -> Path:
    """Write `<out_dir>/report.md`, its figures and `report.html` (one self-contained page, figures embedded);
    log them to the sweep's parent run (under `report/`). Returns the .md path."""
    uri = _query.resolve_tracking_uri(tracking_uri, results_dir)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    all_runs = _query.runs(sweep, experiment, uri)
    rdf = all_runs[all_runs["converged"]] if not all_runs.empty else all_runs
    pts = _query._points_for(uri, rdf) if not rdf.empty else pd.DataFrame()
    summ = _query.summarise(rdf, pts)
    summ_l, rdf_l = _label_weight_decay(summ), _label_weight_decay(rdf)

    figures = {}
    for name, fig in (("counts_vs_width.png", counts_vs_width_figure(summ_l)),
                      ("index_hist.png", index_hist_figure(pts)),
                      ("nzero_vs_plateau.png", nzero_figure(pts)),
                      ("barrier_vs_width.png", barrier_figure(rdf_l))):
        if fig is not None:
            save_png(fig, out / name)
            figures[name] = fig
    gamma_files = []
    if not rdf.empty:
        cand = rdf if "gamma_scan" not in rdf.columns else rdf[rdf["gamma_scan"].fillna(True).astype(bool)]
        cand = cand[weight_decay_of(cand) == 0]     # no gamma-line under a weight decay (permsym_core.penalty)
        cand = cand.drop_duplicates(subset=["task", "activation", "widths"]).head(max_gamma)
        recs = _query.records(list(cand["run_id"]), uri)
        for i, (rid, rec) in enumerate(recs.items()):
            fig = gamma_line_figure(rec)
            if fig is None:
                continue
            c = rec.get("config") or {}
            fig.suptitle(f"gamma-line, {c.get('task')} {c.get('activation')} widths {tuple(c.get('widths') or ())} "
                         f"seed {c.get('seed')} (shaded 0<gamma<1; dotted gamma=1/2)", fontsize=9)
            name = f"gamma_line_{i + 1}.png"
            save_png(fig, out / name)
            gamma_files.append((name, rid, c))

    valley_files = valley_figures(rdf, uri, out, max_valley)

    n_all, n_conv = len(all_runs), len(rdf)
    lines = [f"# permsym report{': sweep ' + sweep if sweep else ''}", "",
             f"Store: `{_redact(uri)}`. Trials: {n_all} finished, {n_conv} converged"
             f"{f', {n_all - n_conv} not converged (excluded from every count)' if n_all > n_conv else ''}.",
             ""]
    if not all_runs.empty and n_all > n_conv:
        bad = all_runs[~all_runs["converged"]]
        lines += ["Not converged:", ""] + [f"- `{r.trial_key}` {r.task} {r.activation} widths {_fmt(r.widths)} "
                                          f"seed {r.seed}: {r.failure_reason}" for r in bad.itertuples()] + [""]
    lines += ["## Empirical counts against the lower bound", "", COMPARISON_PARAGRAPH, ""]
    if summ.empty:
        lines += ["No converged trials with permutation points.", ""]
    else:
        by_cols = ["task", "activation", "widths"] + (["weight_decay"] if "weight_decay" in summ else [])
        lines.append(markdown_table(summ, [*by_cols, "layer", "order", "n_seeds",
                                           "n_reduced_irreducible", "n_reducible", "log10_bound", "log10_critical",
                                           "log10_saddle", "log10_first_order", "log10_ratio_critical",
                                           "log10_ratio_saddle", "reduced_index_dist", "point_index_dist",
                                           "frac_first_order", "frac_claim_zero", "frac_claim_guaranteed",
                                           "index_agreement", "frac_ambiguous"]))
        lines += ["", "Where the counts stand (permutation points of irreducible reduced points vs the bound):", ""]
        for _, r in summ.iterrows():
            why = ""
            n_irr, n_red = r.get("n_reduced_irreducible"), r.get("n_reducible")
            if isinstance(n_irr, float) and math.isfinite(n_irr):
                why = (f" ({n_irr:.3g} distinct irreducible reduced point(s) per seed"
                       + (f", {n_red:.3g} reducible ones counted apart" if isinstance(n_red, float)
                          and math.isfinite(n_red) and n_red > 0 else "") + ")")
            wd = f" weight_decay {r['weight_decay']:g}" if "weight_decay" in summ and r["weight_decay"] > 0 else ""
            lines.append(f"- {r['task']}/{r['activation']} widths {_fmt(r['widths'])}{wd}, layer {r['layer']}, "
                         f"K={r['order']}: {_verdict(r)}{' (the plain loss bound, for reference)' if wd else ''}{why}; "
                         f"n_zero >= n_(k+1) at "
                         f"{_percent(r['frac_claim_zero'])} of points; {r['n_seeds']} seed(s).")
        lines.append("")
        lines += ["<details><summary>Column definitions</summary>", "", "```", _query.SUMMARY_DOC, "```",
                  "", "</details>", ""]
    by_layer = index_by_layer(pts)
    if not by_layer.empty:
        lines += ["## Index per hidden layer against n_(k+1)", "", INDEX_PARAGRAPH, "",
                  markdown_table(by_layer, list(by_layer.columns)), ""]
    captions = {"counts_vs_width.png": "Counts and the bound against width (one panel per depth).",
                "index_hist.png": "Index histogram per hidden layer (dashed: n_(k+1)).",
                "nzero_vs_plateau.png": "n_zero against n_{k+1}.",
                "barrier_vs_width.png": "Path barriers against width."}
    lines += ["## Figures", ""]
    for name in figures:
        lines += [f"### {captions[name]}", "", f"![{name}]({name})", ""]
    for name, rid, c in gamma_files:
        lines += [f"### gamma-line of run `{rid}`", "", f"![{name}]({name})", ""]
    if valley_files:
        lines += ["## Valleys and the minimum-to-permuted-minimum path", "", VALLEY_PARAGRAPH, ""]
        for name, caption in valley_files:
            lines += [f"### {caption}", "", f"![{name}]({name})", ""]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    from .report_html import write_html

    write_html(md)
    if log_to_parent and not all_runs.empty:
        sweeps = sorted(set(all_runs["sweep"].dropna())) if sweep is None else [sweep]
        if len(sweeps) == 1:
            for exp in sorted(set(all_runs["experiment_id"])):
                parent = _runs.find_parent(uri, exp, sweeps[0])
                if parent:
                    with _runs._guard(uri):
                        c = _runs.client(uri)
                        for name in ["report.html", "report.md", *figures, *(g[0] for g in gamma_files),
                                     *(v[0] for v in valley_files)]:
                            c.log_artifact(parent, str(out / name), "report")
    return md
