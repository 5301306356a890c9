"""The per-layer index table against n_{k+1} (tracking.report_index) and the summary's weight-decay groups,
on hand-built points and runs whose answers are counted by hand."""
import pandas as pd

from tracking.query import summarise
from tracking.report_index import index_by_layer, index_hist_figure


def _pt(layer, index, n_next, critical=True, reducible=False, undetermined=False, order=1, saddle=None, wd=0.0):
    return dict(task="mnist", activation="tanh", widths=(8, 6), layer=layer, order=order, index=index,
                n_next=n_next, plateau_dim=None if wd else order * n_next, critical=critical, reducible=reducible,
                reducibility_undetermined=undetermined, saddle=index >= 1 if saddle is None else saddle,
                weight_decay=wd, run_id="r")


def test_index_table_per_layer_counts_only_critical_irreducible_points():
    pts = pd.DataFrame([_pt(1, 5, 6), _pt(1, 6, 6), _pt(1, 5, 6), _pt(1, 1, 6, critical=False),
                        _pt(1, 1, 6, reducible=True), _pt(1, 1, 6, undetermined=True),
                        _pt(2, 1, 1), _pt(2, 0, 1), _pt(2, 1, 1), _pt(2, 2, 1), _pt(2, 1, 1, saddle=False)])
    t = index_by_layer(pts).set_index("layer")
    assert t.loc[1, "n_points"] == 3 and t.loc[1, "index_dist"] == "5:2, 6:1"
    assert (t.loc[1, "index_min"], t.loc[1, "index_max"], t.loc[1, "n_first_order"]) == (5, 6, 0)
    assert t.loc[1, "n_next"] == 6 and not t.loc[1, "first_order_possible"]
    # an index-1 point whose escape is not certified is no first-order saddle
    assert t.loc[2, "index_dist"] == "0:1, 1:3, 2:1" and t.loc[2, "n_first_order"] == 2
    assert t.loc[2, "first_order_possible"]
    assert index_hist_figure(pts) is not None


def test_index_table_reads_n_next_from_the_plateau_dimension_of_older_records():
    pts = pd.DataFrame([_pt(1, 3, 2, order=2), _pt(1, 4, 2, order=2)]).drop(columns=["n_next"])
    t = index_by_layer(pts)
    assert list(t["n_next"]) == [2] and t.iloc[0]["first_order_possible"]
    assert index_by_layer(pd.DataFrame()).empty and index_hist_figure(pd.DataFrame()) is None


def test_summary_never_pools_trials_of_different_weight_decays():
    """Same architecture, two seeds without a penalty and one with: two rows, each with its own seeds."""
    base = dict(task="teacher", activation="tanh", widths=(4,), converged=True, L1_K1_log10_bound=1.0,
                minimum_certified=1.0, minimum_channel=0.0)
    rows = [dict(base, run_id="p0", seed=0, weight_decay=0.0, L1_K1_n_found=1.0),
            dict(base, run_id="p1", seed=1, weight_decay=0.0, L1_K1_n_found=3.0),
            dict(base, run_id="w0", seed=0, weight_decay=1e-5, L1_K1_n_found=6.0)]
    out = summarise(pd.DataFrame(rows), pd.DataFrame()).set_index("weight_decay")
    assert out.loc[0.0, "n_seeds"] == 2 and out.loc[0.0, "n_found"] == 2.0
    assert out.loc[1e-5, "n_seeds"] == 1 and out.loc[1e-5, "n_found"] == 6.0
    plain = summarise(pd.DataFrame(rows[:2]), pd.DataFrame())
    assert "weight_decay" not in plain.columns or plain["weight_decay"].isna().all()


def test_index_table_keeps_penalised_points_apart_and_mixed_with_older_records():
    """Older plain records (no n_next) with penalised ones (no plateau): every point is placed, the two
    landscapes are separate rows, and the plain-loss statement is not applied to the penalised row."""
    old = [_pt(1, 5, 6), _pt(1, 6, 6)]
    for p in old:
        del p["n_next"]
    pen = [_pt(1, 1, 6, wd=1e-4), _pt(1, 1, 6, wd=1e-4), _pt(1, 2, 6, wd=1e-4)]
    df = pd.DataFrame(old + pen)
    t = index_by_layer(df)
    assert t["n_points"].sum() == 5 and len(t) == 2
    plain = t[t["first_order_possible"].notna()].iloc[0]
    penalised = t[t["first_order_possible"].isna()].iloc[0]
    assert (plain["n_points"], plain["n_first_order"], plain["first_order_possible"]) == (2, 0, False)
    assert (penalised["n_points"], penalised["n_first_order"]) == (3, 2)


def test_report_figures_never_pool_weight_decays():
    """The counts figure sums log10 counts over layers per (task, activation, widths): with the weight decay in
    the label a plain row and a penalised row of one architecture stay two curves, not one pooled sum."""
    from tracking.report import _label_weight_decay, counts_vs_width_figure

    rows = [dict(task="teacher", activation="tanh", widths=(4,), order=1, layer=1, weight_decay=w,
                 log10_bound=1.0, log10_saddle=s, log10_first_order=0.5, log10_minima=1.38, n_seeds=1)
            for w, s in ((0.0, 1.0), (1e-5, 1.5))]
    lab = _label_weight_decay(pd.DataFrame(rows))
    assert sorted(lab["activation"]) == ["tanh", "tanh, weight decay 1e-05"]
    fig = counts_vs_width_figure(lab)
    ys = sorted(round(float(y), 6) for ax in fig.axes for line in ax.get_lines()
                if "all saddles" in line.get_label() for y in line.get_ydata())
    assert ys == [1.0, 1.5]


def test_index_histogram_bars_keep_weight_decays_apart():
    """Layer 1 has two plain points of index 5 and three penalised ones of index 1, 1, 2: two bar series with
    those counts, never one bar of height 5 pooling the landscapes."""
    pts = pd.DataFrame([_pt(1, 5, 6), _pt(1, 5, 6), _pt(1, 1, 6, wd=1e-4), _pt(1, 1, 6, wd=1e-4),
                        _pt(1, 2, 6, wd=1e-4)])
    fig = index_hist_figure(pts)
    (ax,) = fig.axes
    bars = {c.get_label(): [int(p.get_height()) for p in c.patches] for c in ax.containers}
    assert bars == {"K=1 (n=2)": [0, 0, 0, 0, 0, 2, 0], "K=1, weight decay 0.0001 (n=3)": [0, 2, 1, 0, 0, 0, 0]}


def test_index_table_never_pools_two_weight_decays_even_unlabelled():
    """Points of lambda = 1e-5 and 1e-4 with the same activation label: two rows, each with its own lambda."""
    pts = pd.DataFrame([_pt(1, 1, 6, wd=1e-5), _pt(1, 2, 6, wd=1e-4), _pt(1, 2, 6, wd=1e-4)])
    t = index_by_layer(pts).set_index("weight_decay")
    assert sorted(t.index) == [1e-5, 1e-4]
    assert (t.loc[1e-5, "n_points"], t.loc[1e-5, "n_first_order"]) == (1, 1)
    assert (t.loc[1e-4, "n_points"], t.loc[1e-4, "index_dist"]) == (2, "2:2")
