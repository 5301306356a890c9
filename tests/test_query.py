"""tracking.query / tracking.report / `permsym results|report` against a store filled with trial records.

The records are real `run_trial` records (tests/fixtures/real_records, produced by permsym_core.study on the
toy task; set PERMSYM_LIVE_TRIALS=1 to also run one trial live) plus hand-made ones in the same schema for a
two-hidden-layer net, another activation and an unconverged trial. Every number the query API returns is
recomputed here independently from the records.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from fixtures.mlflow_helpers import MlflowServer, fresh_store, make_template_db
from fixtures.records import make_record

from tracking import query, runs, store

FIXTURES = Path(__file__).parent / "fixtures"
SWEEP = "qsweep"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records() -> list[dict]:
    recs = [json.loads(p.read_text()) for p in sorted((FIXTURES / "real_records").glob("*.json"))]
    if os.environ.get("PERMSYM_LIVE_TRIALS"):
        from permsym_core.config import TrialConfig
        from permsym_core.study import run_trial

        recs.append(run_trial(TrialConfig(task="toy", widths=(3,), seed=5, adam_steps=500, path_relax=False)))
    if not recs:                                   # no real records available: the schema-following stand-ins
        recs = [make_record((3,), s) for s in (0, 1)] + [make_record((4,), s) for s in (0, 1)]
    recs += [make_record((4, 3), 0, n_in=2, task="teacher"), make_record((4, 3), 1, n_in=2, task="teacher"),
             make_record((5,), 0, activation="tanh"), make_record((4,), 9, converged=False)]
    return recs


RECORDS = _records()


def _key(rec) -> str:
    c = rec["config"]
    return f"{c['task']}-{c['activation']}-{'x'.join(map(str, c['widths']))}-s{c['seed']}"


def _fill(uri: str, exp: str) -> None:
    parent = runs.get_or_create_parent(uri, exp, SWEEP, {"name": SWEEP})
    for rec in RECORDS:
        runs.log_trial(uri, exp, parent, SWEEP, _key(rec), rec, figures=False)
    # a run of another sweep that the sweep filter must leave out
    other = runs.get_or_create_parent(uri, exp, "other", {})
    runs.log_trial(uri, exp, other, "other", "x", make_record((3,), 3), figures=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template_db(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory, template):
    res = tmp_path_factory.mktemp("results")
    uri = fresh_store(template, res)
    exp = store.prepare_store(uri, "permsym")
    _fill(uri, exp)
    return uri, res


@pytest.fixture(scope="module")
def server_store(tmp_path_factory, template):
    srv = MlflowServer(tmp_path_factory.mktemp("server"), template).start()
    exp = store.prepare_store(srv.uri, "permsym")
    _fill(srv.uri, exp)
    yield srv.uri
    srv.stop()


@pytest.fixture(params=["sqlite", "server"])
def uri(request):
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_store")[0]
    return request.getfixturevalue("server_store")


def _converged(rec) -> bool:
    return bool(rec["minimum"]["converged"]) and not rec.get("failure")


def test_runs_typed_and_equal_to_records(uri):
    df = query.runs(SWEEP, tracking_uri=uri)
    assert len(df) == len(RECORDS)
    by_key = {r.trial_key: r for r in df.itertuples()}
    for rec in RECORDS:
        row = by_key[_key(rec)]
        c = rec["config"]
        assert row.widths == tuple(c["widths"]) and row.depth == len(c["widths"])
        assert row.seed == c["seed"] and row.task == c["task"] and row.activation == c["activation"]
        assert row.orders == tuple(c["orders"])
        assert row.converged == _converged(rec)
        assert row.minimum_loss == pytest.approx(rec["minimum"]["loss"], rel=1e-12)
        for cnt in rec["counts"]:
            col = f"L{cnt['layer']}_K{cnt['order']}_n_saddle"
            if _converged(rec):
                assert getattr(row, col) == cnt["n_saddle"]
            else:
                assert math.isnan(getattr(row, col))
        for phase, t in rec["timings"].items():
            assert getattr(row, f"time_{phase}") == pytest.approx(t)
    assert df["converged"].dtype == bool
    assert not df[~df["converged"]]["failure_reason"].isna().any()
    assert len(query.runs("other", tracking_uri=uri)) == 1


def test_filters_go_into_the_mlflow_query(uri, monkeypatch):
    seen = []
    real = runs.search_all

    def spy(tracking_uri, experiment_ids, filter_string="", order_by=None):
        seen.append(filter_string)
        return real(tracking_uri, experiment_ids, filter_string, order_by)

    monkeypatch.setattr(runs, "search_all", spy)
    df = query.runs(SWEEP, tracking_uri=uri, task="toy", width_min=4, width_max=4, cache=False)   # the store's path
    cached = query.runs(SWEEP, tracking_uri=uri, task="toy", width_min=4, width_max=4)   # filtered from the cache
    assert list(cached["run_id"]) == list(df["run_id"])
    expect = [r for r in RECORDS if r["config"]["task"] == "toy" and set(r["config"]["widths"]) == {4}]
    assert sorted(df["trial_key"]) == sorted(_key(r) for r in expect)
    f = seen[-1]
    assert "tags.sweep = 'qsweep'" in f and "params.task = 'toy'" in f
    assert "metrics.arch_width_min >= 4" in f and "metrics.arch_width_max <= 4" in f
    assert set(query.runs(SWEEP, tracking_uri=uri, depth=2)["widths"]) == {(4, 3)}


def test_points_equal_records(uri):
    pts = query.points(SWEEP, tracking_uri=uri)
    conv = [r for r in RECORDS if _converged(r)]
    assert len(pts) == sum(len(r["points"]) for r in conv)
    rids = dict(zip(query.runs(SWEEP, tracking_uri=uri)["trial_key"], query.runs(SWEEP, tracking_uri=uri)["run_id"]))
    for rec in conv:
        mine = pts[pts["run_id"] == rids[_key(rec)]].sort_values("point_id")
        assert list(mine["index"]) == [p["index"] for p in rec["points"]]
        assert list(mine["n_zero"]) == [p["n_zero"] for p in rec["points"]]
        assert list(mine["claim_zero_holds"]) == [p["claim_zero_holds"] for p in rec["points"]]
        assert list(mine["plateau_dim"]) == [p["plateau_dim"] for p in rec["points"]]
        assert [None if v is pd.NA else int(v) for v in mine["fa_index"].astype(object)] == \
            [p["fa_index"] for p in rec["points"]]
        assert list(mine["neurons"]) == [tuple(p["neurons"]) for p in rec["points"]]
        assert mine["loss"].tolist() == pytest.approx([p["loss"] for p in rec["points"]], rel=1e-12)
        assert set(mine["widths"]) == {tuple(rec["config"]["widths"])}
    for col in ("layer", "order", "index", "n_zero", "tau", "gap", "ambiguous", "plateau_dim", "claim_zero_holds",
                "claim_guaranteed_holds", "fa_index", "loss", "grad_inf", "run_id", "task", "activation", "widths",
                "depth", "seed"):
        assert col in pts.columns, col


def _expected_summary():
    """Recomputed from the records alone: per (task, activation, widths) and (layer, order)."""
    groups = defaultdict(list)
    for r in RECORDS:
        if _converged(r):
            c = r["config"]
            groups[(c["task"], c["activation"], tuple(c["widths"]))].append(r)
    out = {}
    for g, recs in groups.items():
        entries = defaultdict(list)
        for r in recs:
            for cnt in r["counts"]:
                entries[(cnt["layer"], cnt["order"])].append((r, cnt))
        for (layer, order), lst in entries.items():
            n = len(lst)

            def lmean(field):
                tot = sum(10 ** c[field] for _, c in lst if c[field] is not None)
                return math.log10(tot / n) if tot > 0 else float("nan")

            crit = [p for r, _ in lst for p in r["points"] if p["layer"] == layer and p["order"] == order
                    and p["critical"]]
            fa = [p for p in crit if p["fa_index"] is not None]
            sad = sum(c["n_saddle"] for _, c in lst)
            out[g + (layer, order)] = {
                "n_seeds": n, "log10_bound": lst[0][1]["log10_bound"], "log10_minima": lst[0][0]["log10_minima"],
                "log10_critical": lmean("log10_critical"), "log10_saddle": lmean("log10_saddle"),
                "log10_first_order": lmean("log10_first_order"),
                "frac_first_order": sum(c["n_first_order"] for _, c in lst) / sad if sad else float("nan"),
                "frac_claim_zero": sum(p["claim_zero_holds"] for p in crit) / len(crit) if crit else float("nan"),
                "fa_agreement": sum(p["fa_index"] == p["index"] for p in fa) / len(fa) if fa else float("nan"),
                "n_points": len(crit)}
    return out


def _eq(a, b):
    if isinstance(b, float) and math.isnan(b):
        return a is None or (isinstance(a, float) and math.isnan(a))
    return a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_summary_equals_records(uri):
    s = query.summary(SWEEP, tracking_uri=uri)
    exp = _expected_summary()
    assert len(s) == len(exp)
    for row in s.to_dict(orient="records"):
        e = exp[(row["task"], row["activation"], row["widths"], row["layer"], row["order"])]
        for k, v in e.items():
            assert _eq(row[k], v), (k, row[k], v)
        assert _eq(row["log10_ratio_saddle"], e["log10_saddle"] - e["log10_bound"]) or \
            abs(row["log10_ratio_saddle"] - (e["log10_saddle"] - e["log10_bound"])) < 1e-9
    # the unconverged trial counts nowhere
    assert s[(s["widths"] == (4,)) & (s["task"] == "toy")]["n_seeds"].max() == \
        sum(1 for r in RECORDS if _converged(r) and tuple(r["config"]["widths"]) == (4,) and r["config"]["task"] == "toy")
    by_depth = query.summary(SWEEP, tracking_uri=uri, by=("depth",))
    assert set(by_depth["depth"]) == {1, 2}


def _cli(args):
    from click.testing import CliRunner

    from sweeps.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cli_results_json_parses(sqlite_store):
    uri, res = sqlite_store
    r = _cli(["results", "--results", str(res), "--sweep", SWEEP, "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(data) == len(_expected_summary())
    assert all(isinstance(d["widths"], list) for d in data)
    r = _cli(["results", "--tracking-uri", uri, "--sweep", SWEEP])
    assert r.exit_code == 0 and "log10_bound" in r.stdout
    r = _cli(["results", "--tracking-uri", uri, "--format", "csv", "--by", "task,depth"])
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("task,depth,layer,order")


def test_cli_report_writes_readable_figures(sqlite_store, tmp_path):
    import matplotlib.image as mpimg

    uri, res = sqlite_store
    out = tmp_path / "rep"
    r = _cli(["report", "--results", str(res), "--sweep", SWEEP, "--out", str(out)])
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    names = ["counts_vs_width.png", "index_hist.png", "nzero_vs_plateau.png", "barrier_vs_width.png",
             "gamma_line_1.png"]
    pngs = sorted(out.glob("*.png"))
    assert set(names) <= {p.name for p in pngs}
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_SIGNATURE
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0.01, p
        assert f"]({p.name})" in md
    assert "not converged" in md.lower()
    c = runs.client(uri)
    exp = store.prepare_store(uri, "permsym")
    parent = runs.find_parent(uri, exp, SWEEP)
    logged = {a.path for a in c.list_artifacts(parent, "report")}
    assert "report/report.md" in logged and "report/counts_vs_width.png" in logged
    assert "report/report.html" in logged
    page = (out / "report.html").read_text()
    # self-contained: every figure of the Markdown is embedded (byte for byte), nothing is linked
    import base64
    import re

    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in pngs)
    assert "<table>" in page and page.count("<tr>") >= len(_expected_summary()) + 1
    assert not re.search(r'src="(?!data:)', page) and "](" not in page     # no linked file, no raw Markdown


def test_summarise_counts_channels_and_certified_minima_over_all_trials():
    """frac_channel / frac_certified over every finished trial of an architecture; one that never converged
    still gets its row (no silent drop)."""
    import pandas as pd

    from tracking.query import summarise

    rows = [dict(run_id="a0", task="teacher", activation="tanh", widths=(4,), seed=0, converged=True,
                 minimum_certified=1.0, minimum_channel=0.0, L1_K1_n_found=2.0, L1_K1_log10_bound=1.0),
            dict(run_id="a1", task="teacher", activation="tanh", widths=(4,), seed=1, converged=False,
                 minimum_certified=0.0, minimum_channel=1.0),
            dict(run_id="a2", task="teacher", activation="tanh", widths=(4,), seed=2, converged=False,
                 minimum_certified=0.0, minimum_channel=0.0),
            dict(run_id="b0", task="teacher", activation="tanh", widths=(3, 3), seed=0, converged=False,
                 minimum_certified=0.0, minimum_channel=1.0),
            dict(run_id="b1", task="teacher", activation="tanh", widths=(3, 3), seed=1, converged=False,
                 minimum_certified=0.0, minimum_channel=1.0)]
    out = summarise(pd.DataFrame(rows), pd.DataFrame())
    a = out[out["widths"] == (4,)].iloc[0]
    assert (a["layer"], a["n_seeds"], a["n_trials"]) == (1, 1, 3)
    assert a["frac_certified"] == pytest.approx(1 / 3) and a["frac_channel"] == pytest.approx(1 / 3)
    b = out[out["widths"] == (3, 3)]
    assert len(b) == 1 and b.iloc[0]["n_seeds"] == 0 and b.iloc[0]["n_trials"] == 2
    assert b.iloc[0]["frac_channel"] == 1.0 and b.iloc[0]["frac_certified"] == 0.0


def test_frac_first_order_is_the_one_metric_definition_pooled_over_seeds():
    """3 first-order saddles among 4 saddles (seed 0: 2 of 3, seed 1: 1 of 1) is 0.75 in the summary (pooled,
    not the 0.83 mean of the per-seed ratios), in tracking.metrics, in a trial's Tune metrics and in its MLflow
    metric; a layer without saddles gets NaN everywhere."""
    from tracking import metrics
    from tracking.query import summarise

    base = dict(task="toy", activation="sigmoid", widths=(4,), converged=True, L1_K1_log10_bound=1.0,
                L1_K1_n_found=5.0, L2_K1_log10_bound=1.0, L2_K1_n_found=1.0, L2_K1_n_saddle=0.0,
                L2_K1_n_first_order=0.0)
    rows = [dict(base, run_id="s0", seed=0, L1_K1_n_saddle=3.0, L1_K1_n_first_order=2.0),
            dict(base, run_id="s1", seed=1, L1_K1_n_saddle=1.0, L1_K1_n_first_order=1.0)]
    out = summarise(pd.DataFrame(rows), pd.DataFrame()).set_index("layer")
    assert out.loc[1, "frac_first_order"] == 0.75 == metrics.frac_first_order(3, 4)
    assert math.isnan(out.loc[2, "frac_first_order"]) and math.isnan(metrics.frac_first_order(0, 0))
    rec = {"minimum": {"converged": True, "loss": 1e-9, "grad_inf": 1e-12},
           "counts": [{"layer": 1, "order": 1, "n_found": 5, "n_critical": 5, "n_saddle": 4, "n_first_order": 3}]}
    assert metrics.trial_metrics(rec)["frac_first_order"] == 0.75
    assert metrics.record_metrics(rec)["L1_K1_frac_first_order"] == 0.75
