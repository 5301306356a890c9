"""Per-trial figures (matplotlib, Agg, no pyplot state: safe in workers that run several trials).

Each function takes a trial record (the dict of `permsym_core.study.run_trial`) and returns a
`matplotlib.figure.Figure`, or None when the record has nothing to draw.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

MAX_SPECTRUM_PANELS = 12


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def fixed_figure(width: float, height: float, *, left: float = 0.85, right: float = 0.2, bottom: float = 0.55,
                 top: float = 0.35, wspace: float = 0.2) -> Figure:
    """A per-run figure with fixed margins in inches (room for tick labels, axis labels and a title) and no
    layout engine: constrained layout was 30-47 % of drawing such a figure (measured on a width-5 toy record),
    and a sweep draws four of them for every run."""
    fig = new_figure(width, height, layout=None)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wspace)
    return fig


def _title(ax, text: str, **kw) -> None:
    """An axes title at a fixed height on a log or symlog y axis (matplotlib otherwise measures every tick label to
    place it); on a linear axis the automatic height, which lifts the title above the axis's offset text."""
    if ax.get_yscale() == "linear":
        ax.set_title(text, **kw)
    else:
        ax.set_title(text, y=1.0, **kw)


def save_png(fig: Figure, path) -> None:
    fig.savefig(path, format="png", dpi=100)


def _point_label(p: dict) -> str:
    neurons = ",".join(str(n) for n in (p.get("neurons") or []))
    return f"L{p.get('layer')} K{p.get('order')} red{p.get('reduced_id')} dup[{neurons}]"


def spectrum_figure(record: dict, max_panels: int = MAX_SPECTRUM_PANELS) -> Figure | None:
    """Lowest Hessian eigenvalues at each permutation point on a symmetric log scale, +-tau marked."""
    pts = [p for p in record.get("points") or [] if p.get("lowest_eigenvalues")]
    if not pts:
        return None
    shown = pts[:max_panels]
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    # A fixed layout and shared y axis: constrained layout over 12 symlog panels took 3 s per figure.
    fig = new_figure(3.0 * ncols + 0.6, 2.5 * nrows + 0.7, layout=None)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
    fig.subplots_adjust(left=0.6 / (3.0 * ncols + 0.6) + 0.04, right=0.98, bottom=0.55 / (2.5 * nrows + 0.7),
                        top=1 - 0.75 / (2.5 * nrows + 0.7), wspace=0.08, hspace=0.55)
    taus = [float(p.get("tau") or 0.0) for p in shown]
    linthresh = max(min([t for t in taus if t > 0], default=1e-12), 1e-300)
    big = max([abs(float(e)) for p in shown for e in p["lowest_eigenvalues"]] + [10 * linthresh])
    lo, hi = math.floor(math.log10(linthresh)), math.ceil(math.log10(big))
    step = max(1, math.ceil((hi - lo) / 3))
    decades = [10.0 ** e for e in range(hi, lo - 1, -step)]
    ticks = sorted([-d for d in decades] + [0.0] + decades)
    for ax, p in zip(axes, shown):
        eig = np.asarray(p["lowest_eigenvalues"], dtype=float)
        tau = float(p.get("tau") or 0.0) or 1e-12
        colors = np.where(eig < -tau, "tab:red", np.where(eig > tau, "tab:blue", "tab:gray"))
        ax.scatter(np.arange(1, len(eig) + 1), eig, c=list(colors), s=22, zorder=3)
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        for s in (tau, -tau):
            ax.axhline(s, color="k", ls="--", lw=0.8)
        ax.axhspan(-tau, tau, color="0.9", zorder=0)
        _title(ax, f"{_point_label(p)}\nindex {p.get('index')}, n_zero {p.get('n_zero')}"
               f"{' (ambiguous)' if p.get('ambiguous') else ''}", fontsize=8)
        ax.set_xticks(range(1, len(eig) + 1, 2))
        ax.set_xlabel("eigenvalue rank", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    more = f" (first {len(shown)} of {len(pts)} points)" if len(pts) > len(shown) else ""
    fig.suptitle(f"Lowest Hessian eigenvalues at the permutation points{more}; dashed: +-tau "
                 f"(red: negative, grey: zero, blue: positive)", fontsize=9)
    return fig


def gamma_line_figure(record: dict, max_lines: int = 6) -> Figure | None:
    """Index and n_zero along the gamma-line of duplicated neurons (record['gamma_scan'])."""
    scans = [s for s in record.get("gamma_scan") or [] if s.get("gammas")]
    if not scans:
        return None
    scans = scans[:max_lines]
    fig = fixed_figure(9.5, 3.4, top=0.4, wspace=0.3)
    ax1, ax2 = fig.subplots(1, 2, sharex=True)
    fa_labelled = False
    n = len(scans)
    for i, s in enumerate(scans):
        g = np.asarray(s["gammas"], dtype=float)
        label = f"L{s.get('layer')} red{s.get('reduced_id')} n{s.get('neuron')}"
        off = 0.06 * (i - (n - 1) / 2)          # small offsets so that equal lines stay visible
        line = ax1.plot(g, np.asarray(s["index"], dtype=float) + off, marker="o", ms=3, lw=1, label=label)[0]
        ax2.plot(g, np.asarray(s["n_zero"], dtype=float) + off, marker="o", ms=3, lw=1, color=line.get_color(),
                 label=label)
        # the split block's prediction; records before schema 2 carried the Fukumizu-Amari one as fa_index
        fa = s.get("index_predicted", s.get("fa_index"))
        if fa is not None and len(fa) == len(g):
            fa_v = np.array([np.nan if v is None else float(v) for v in fa])
            ax1.plot(g, fa_v + off, ls="none", marker="x", ms=6, color="k", alpha=0.6,
                     label=None if fa_labelled else ("split-block prediction" if "index_predicted" in s
                                                     else "Fukumizu-Amari prediction"))
            fa_labelled = True
    for ax, name, key in ((ax1, "index (# eigenvalues < -tau)", "index"),
                          (ax2, "n_zero (# |eigenvalue| <= tau)", "n_zero")):
        vals = [v for s in scans for v in s[key] if v is not None]
        lo, hi = (min(vals), max(vals)) if vals else (0, 1)
        ax.set_ylim(lo - 0.5, hi + 0.5)
        ax.set_yticks(range(int(lo), int(hi) + 1))
        ax.axvspan(0, 1, color="0.92", zorder=0)
        ax.axvline(0.5, color="k", ls=":", lw=0.8)
        ax.set_xlabel("gamma (outgoing split gamma : 1-gamma)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    handles, labels = ax1.get_legend_handles_labels()
    legend = fig.legend(handles, labels, fontsize=7, loc="upper right")
    width = legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi      # inches
    fig.subplots_adjust(right=1 - (width + 0.1) / fig.get_figwidth())               # the legend beside the axes
    fig.suptitle("gamma-line: shaded 0 < gamma < 1, dotted: the permutation point gamma = 1/2", fontsize=9)
    return fig


def path_figure(record: dict) -> Figure | None:
    """Loss along theta* -> permutation point -> P_ij theta*, one line per recorded path."""
    paths = [p for p in record.get("paths") or [] if p.get("losses")]
    if not paths:
        return None
    fig = fixed_figure(6, 3.6)
    ax = fig.subplots()
    for p in paths:
        losses = np.asarray(p["losses"], dtype=float)
        s = np.linspace(0, 1, len(losses))
        pair = ",".join(str(x) for x in p.get("pair") or [])
        ax.plot(s, losses, marker=".", ms=3, label=f"layer {p.get('layer')}, pair ({pair}), "
                                                     f"barrier {p.get('barrier', float('nan')):.3g}")
    ax.axvline(0.5, color="k", ls=":", lw=0.8)
    _loss_axes(ax, paths, "position along the path (0: theta*, 0.5: permutation point, 1: P_ij theta*)",
               "Loss along the equal-loss valley path")
    return fig


def _loss_axes(ax, paths: list[dict], xlabel: str, title: str) -> None:
    """The axes of a loss-along-a-path figure: log scale when every loss is positive, labels, grid, legend."""
    if np.all(np.concatenate([np.asarray(p["losses"], float) for p in paths]) > 0):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _title(ax, title, fontsize=9)


def valley_figure(record: dict, max_lines: int = 6) -> Figure | None:
    """Relative loss deviation along the valley segments of each transposition (record['valleys']): flat at
    the permutation point's loss, the 1e-12 tolerance dashed."""
    items = [v for v in record.get("valleys") or [] if v.get("losses")]
    if not items:
        return None
    groups = {(g.get("layer"), g.get("reduced")): g for g in record.get("valley_groups") or []}
    fig = fixed_figure(7.5, 3.8)
    ax = fig.subplots()
    for v in items[:max_lines]:
        g = groups.get((v.get("layer"), v.get("reduced")), {})
        ref, floor = g.get("loss"), g.get("loss_floor") or 0.0
        losses = np.asarray(v["losses"], dtype=float)
        if ref is None:
            continue
        dev = np.abs(losses - ref) / max(abs(ref), floor, 1e-300)
        s = np.linspace(0, v.get("n_segments", 1), len(losses))
        p, q = v.get("transposition") or ["?", "?"]
        ax.plot(s, np.maximum(dev, 1e-18), marker=".", ms=2, lw=0.8,
                label=f"L{v.get('layer')} red{v.get('reduced')} ({p} {q}), group order {g.get('group_order')}"
                      f" of {g.get('n_factorial')}")
    ax.axhline(1e-12, color="k", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("segment (slide / move) along the transposition's walk")
    ax.set_ylabel("|L - L(point)| / L(point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    _title(ax, "Equal-loss valley: loss along the segments realising each transposition", fontsize=9)
    return fig


def permuted_path_figure(record: dict) -> Figure | None:
    """Loss along minimum -> permutation point -> valley -> sigma point -> sigma minimum (record['permuted_paths'];
    the minimum is theta* for a relaxed first leg, where a saddle's descent leg ends for a `descent` one)."""
    paths = [p for p in record.get("permuted_paths") or [] if p.get("losses")]
    if not paths:
        return None
    fig = fixed_figure(7, 3.6)
    ax = fig.subplots()
    for p in paths:
        losses = np.asarray(p["losses"], dtype=float)
        line = ax.plot(np.arange(len(losses)), losses, marker=".", ms=2, lw=0.8,
                       label=f"layer {p.get('layer')}, sigma {p.get('sigma')}, {p.get('first_leg', 'relaxed')} leg, "
                             f"max excess {p.get('max_rel_excess', float('nan')):.2g}")[0]
        a, b, _ = p.get("legs") or [0, 0, 0]
        ax.axvspan(a, a + b, color=line.get_color(), alpha=0.08)
        ax.axhline(p.get("point_loss"), color=line.get_color(), ls=":", lw=0.8)
    _loss_axes(ax, paths, "sample (shaded: the valley at the permutation point's loss, dotted)",
               "Minimum to permuted minimum: m -> point -> valley -> sigma point -> sigma m")
    return fig


def trial_figures(record: dict) -> dict:
    """{artifact file name: Figure} for every figure the record supports."""
    out = {}
    for name, fn in (("figures/spectra.png", spectrum_figure), ("figures/gamma_line.png", gamma_line_figure),
                     ("figures/path.png", path_figure), ("figures/valley.png", valley_figure),
                     ("figures/permuted_path.png", permuted_path_figure)):
        fig = fn(record)
        if fig is not None:
            out[name] = fig
    return out


def log_figures(tracking_uri: str, run_id: str, record: dict | None = None) -> int:
    """Draw a logged trial's figures and add them to its run (`figures/*.png`); the record is read from the
    run when not given. Returns how many were logged. A run may be FINISHED already: MLflow accepts artifacts
    on any run, and the figures change no metric, tag or status."""
    import json
    import tempfile
    from pathlib import Path

    from . import runs
    from .cache import read_artifact

    if record is None:
        with runs.guard(tracking_uri):
            record = json.loads(read_artifact(tracking_uri, run_id, runs.RECORD_ARTIFACT))
    figs = trial_figures(record)
    if not figs:
        return 0
    with tempfile.TemporaryDirectory(prefix="permsym-fig-") as tmp:
        for name, fig in figs.items():
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            save_png(fig, Path(tmp) / name)
        with runs.guard(tracking_uri):
            runs.client(tracking_uri).log_artifacts(run_id, str(Path(tmp) / "figures"), "figures")
    return len(figs)
