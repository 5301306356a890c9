"""tracking: trial runs in a real SQLite store and through a real `mlflow server`; concurrency; spool + sync;
secrets. No Ray here: tracking never imports it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.mlflow_helpers import MlflowServer, fresh_store, make_template_db
from fixtures.records import make_record

from tracking import runs, spool, store

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORKER = Path(__file__).parent / "fixtures" / "log_worker.py"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template_db(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, template):
    srv = MlflowServer(tmp_path_factory.mktemp("server"), template).start()
    yield srv
    srv.stop()


def _store(template, tmp_path, name="exp"):
    uri = fresh_store(template, tmp_path / "results")
    return uri, store.prepare_store(uri, name)


def _client(uri):
    return runs.client(uri)


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, (path, img.shape)
    assert img.std() > 0.01, f"{path} is blank"


def test_no_ray_in_tracking():
    for f in Path(store.__file__).parent.glob("*.py"):
        text = f.read_text()
        assert "import ray" not in text and "from ray" not in text, f


def test_store_paths_and_prepare_idempotent(template, tmp_path):
    res = tmp_path / "r"
    assert store.results_uri(res) == f"sqlite:///{res.resolve()}/mlflow.db"
    assert store.artifact_root(res) == res.resolve() / "artifacts"
    assert store.default_results_dir() == Path("./permsym-results").resolve()
    uri = fresh_store(template, res)
    e1 = store.prepare_store(uri, "exp")
    assert store.prepare_store(uri, "exp") == e1
    import sqlite3

    mode = sqlite3.connect(res / "mlflow.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    exp = _client(uri).get_experiment(e1)
    assert exp.artifact_location == (res.resolve() / "artifacts" / "exp").as_uri()
    assert store.server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_prepare_store_by_several_processes_at_once(tmp_path):
    """Three drivers start on one new results folder in the same instant: without the build-aside-and-link
    creation this broke the file for good (left `_alembic_tmp_metrics` and a stuck alembic version)."""
    import sqlite3

    uri = store.results_uri(tmp_path / "r")
    start = time.time() + 6                         # after every process has imported mlflow
    code = ("import sys, time; from tracking import store\n"
            f"while time.time() < {start}: pass\n"
            f"print(store.prepare_store({uri!r}, 'exp'))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-400:] for _o, e in outs]
    assert len({o.strip() for o, _e in outs}) == 1
    con = sqlite3.connect(tmp_path / "r" / "mlflow.db")
    assert not con.execute("SELECT name FROM sqlite_master WHERE name LIKE '%alembic_tmp%'").fetchall()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [n for (n,) in con.execute("SELECT name FROM experiments")].count("exp") == 1
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")) == []
    con.close()
    assert _client(uri).get_experiment_by_name("exp") is not None      # a later client opens it as it is


def _check_finished_run(uri, exp, rid, record, tmp_path):
    c = _client(uri)
    run = c.get_run(rid)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["trial_key"] == "k1" and tags["sweep"] == "sw" and tags["attempt"] == "1"
    assert tags["permsym.role"] == "trial" and tags["converged"] == "true" and tags["code_version"]
    assert "mlflow.parentRunId" in tags
    cfg = record["config"]
    assert params["widths"] == ",".join(str(w) for w in cfg["widths"])
    assert params["task"] == cfg["task"] and params["seed"] == str(cfg["seed"])
    assert metrics["minimum_loss"] == pytest.approx(record["minimum"]["loss"])
    assert metrics["n_params"] == record["minimum"]["n_params"]
    for c_ in record["counts"]:
        pre = f"L{c_['layer']}_K{c_['order']}_"
        assert metrics[pre + "n_saddle"] == c_["n_saddle"]
        assert metrics[pre + "n_first_order"] == c_["n_first_order"]
        assert metrics[pre + "log10_bound"] == pytest.approx(c_["log10_bound"])
    for phase, t in record["timings"].items():
        assert metrics[f"time_{phase}"] == pytest.approx(t)
    arts = {a.path for a in c.list_artifacts(rid)} | {a.path for a in c.list_artifacts(rid, "figures")}
    assert {"trial_record.json", "points.json", "figures/spectra.png", "figures/path.png"} <= arts
    local = Path(c.download_artifacts(rid, "", str(tmp_path / rid)))
    assert json.loads((local / "trial_record.json").read_text())["minimum"] == record["minimum"]
    for png in (local / "figures").glob("*.png"):
        _png_ok(png)
    if record.get("gamma_scan"):
        assert (local / "figures" / "gamma_line.png").exists()
    import mlflow

    mlflow.set_tracking_uri(uri)           # MlflowClient.load_table searches through the global URI
    try:
        table = c.load_table(exp, "points.json", run_ids=[rid], extra_columns=["run_id"])
    finally:
        mlflow.set_tracking_uri(None)      # it also set MLFLOW_TRACKING_URI, which later sweeps would honour
    assert len(table) == len(record["points"])
    assert list(table["index"]) == [p["index"] for p in record["points"]]


@pytest.mark.parametrize("backend", ["sqlite", "server"])
def test_trial_lifecycle(backend, template, tmp_path, request):
    if backend == "sqlite":
        uri, exp = _store(template, tmp_path)
    else:
        uri = request.getfixturevalue("server").uri
        exp = store.prepare_store(uri, f"life-{tmp_path.name}")
    rec = make_record((4,), 0)
    parent = runs.get_or_create_parent(uri, exp, "sw", {"name": "sw", "grid": {"widths": [[4]]}})
    assert runs.get_or_create_parent(uri, exp, "sw", {"name": "sw"}) == parent
    ptags = _client(uri).get_run(parent).data.tags
    assert ptags["sweep"] == "sw" and ptags["permsym.role"] == "parent"

    # a crashed first attempt is left RUNNING; the second attempt marks it KILLED
    crashed = runs.start_trial_run(uri, exp, parent, "sw", "k1", rec["config"], attempt=1)
    t0 = time.time()
    rid = runs.start_trial_run(uri, exp, parent, "sw", "k1", rec["config"], attempt=1)
    runs.finish_trial_run(uri, rid, rec)
    log_s = time.time() - t0
    print(f"\n[{backend}] start+finish of one trial run (figures included): {log_s:.2f} s")
    assert _client(uri).get_run(crashed).info.status == "KILLED"
    _check_finished_run(uri, exp, rid, rec, tmp_path)
    assert runs.finished_keys(uri, exp, "sw") == {"k1"}

    # a failure ends FAILED with a one-line reason
    fid = runs.start_trial_run(uri, exp, parent, "sw", "k2", rec["config"], attempt=1)
    runs.fail_trial_run(uri, fid, "RuntimeError: loss became NaN\n  at step 12")
    frun = _client(uri).get_run(fid)
    assert frun.info.status == "FAILED" and frun.data.tags["failure_reason"] == "RuntimeError: loss became NaN at step 12"

    # an unconverged record: FINISHED, converged=false, failure_reason, no counts, no points table
    bad = make_record((4,), 7, converged=False)
    bid = runs.start_trial_run(uri, exp, parent, "sw", "k3", bad["config"], attempt=1)
    runs.finish_trial_run(uri, bid, bad)
    brun = _client(uri).get_run(bid)
    assert brun.info.status == "FINISHED" and brun.data.tags["converged"] == "false"
    assert "did not reach grad_tol" in brun.data.tags["failure_reason"]
    assert not any(k.startswith("L1_K1_") for k in brun.data.metrics)

    # orphans: a RUNNING run of this sweep becomes KILLED, finished ones are untouched, parent untouched
    oid = runs.start_trial_run(uri, exp, parent, "sw", "k4", rec["config"], attempt=2)
    assert runs.close_orphans(uri, exp, "sw") == [oid]
    assert _client(uri).get_run(oid).info.status == "KILLED"
    assert _client(uri).get_run(rid).info.status == "FINISHED"
    assert runs.finished_keys(uri, exp, "sw") == {"k1", "k3"}
    assert runs.get_or_create_parent(uri, exp, "sw", {}) == parent


def _run_writers(uri, exp, parent, sweep, tmp_path, n_workers=8, per_worker=2):
    rec_path = tmp_path / "rec.json"
    rec_path.write_text(json.dumps(make_record((4,), 0)))
    env = dict(os.environ, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, str(WORKER), uri, exp, parent, sweep, str(w), str(per_worker),
                               str(rec_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for w in range(n_workers)]
    outs = []
    for p in procs:
        o, e = p.communicate(timeout=300)
        outs.append((p.returncode, o, e))
    wall = time.time() - t0
    results = []
    for rc, o, e in outs:
        assert rc == 0, e[-2000:]
        assert "database is locked" not in e, e[-2000:]
        results.append(json.loads(o.strip().splitlines()[-1]))
    return results, wall


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "server"])
def test_concurrent_writers(backend, template, tmp_path, request):
    if backend == "sqlite":
        uri, exp = _store(template, tmp_path)
    else:
        uri = request.getfixturevalue("server").uri
        exp = store.prepare_store(uri, f"conc-{tmp_path.name}")
    parent = runs.get_or_create_parent(uri, exp, "conc", {})
    results, wall = _run_writers(uri, exp, parent, "conc", tmp_path)
    errors = [e for r in results for e in r["errors"]]
    assert errors == []
    ids = [i for r in results for i in r["run_ids"]]
    times = sorted(t for r in results for t in r["times"])
    print(f"\n[{backend}] 8 writers x 2 runs: {wall:.1f} s wall, per run median {times[len(times) // 2]:.2f} s, "
          f"max {times[-1]:.2f} s")
    assert len(ids) == 16 and len(set(ids)) == 16
    found = runs.search_all(uri, [exp], "tags.sweep = 'conc' and attributes.status = 'FINISHED'")
    assert len([r for r in found if r.data.tags.get("permsym.role") == "trial"]) == 16
    assert runs.finished_keys(uri, exp, "conc") == {f"w{w}-t{i}" for w in range(8) for i in range(2)}


@pytest.mark.slow
def test_spool_and_sync_across_server_restart(template, tmp_path):
    srv = MlflowServer(tmp_path / "srv", template).start()
    try:
        uri = srv.uri
        exp = store.prepare_store(uri, "spool")
        parent = runs.get_or_create_parent(uri, exp, "sp", {})
        rec = make_record((3,), 1)
        rid = runs.start_trial_run(uri, exp, parent, "sp", "key-a", rec["config"], 1)
        srv.stop()
        t0 = time.time()
        with pytest.raises(runs.TrackingUnavailable):
            runs.finish_trial_run(uri, rid, rec)
        detect_s = time.time() - t0
        print(f"\ndead server detected in {detect_s:.1f} s")
        assert detect_s < 30
        res = tmp_path / "results"
        meta = {"experiment_id": exp, "parent_run_id": parent, "sweep": "sp", "config": rec["config"],
                "run_id": rid, "attempt": 1}
        path = spool.spool_record(res, "key-a", rec, meta)
        assert path == res.resolve() / "spool" / "key-a.json"
        assert json.loads(path.read_text())["record"]["minimum"] == rec["minimum"]
        assert not list(path.parent.glob("*.tmp"))
        # a second record spooled while down: never started (the server was already gone)
        rec_b = make_record((4,), 2)
        # (from a sweep with `figures: false`: its sync logs the record without PNGs)
        spool.spool_record(res, "key-b", rec_b, dict(meta, run_id=None, config=rec_b["config"], figures=False))
        with pytest.raises(runs.TrackingUnavailable):
            spool.sync(res, uri)
        assert len(spool.spooled(res)) == 2                    # nothing dropped while the server is down

        srv.start()                                             # same port, same database
        assert spool.sync(res, uri) == 2
        assert spool.spooled(res) == []
        c = runs.client(uri)
        assert c.get_run(rid).info.status == "KILLED"          # the attempt opened before the outage
        assert runs.finished_keys(uri, exp, "sp") == {"key-a", "key-b"}
        fin = runs.search_all(uri, [exp], "tags.trial_key = 'key-a' and attributes.status = 'FINISHED'")
        assert len(fin) == 1
        assert fin[0].data.metrics["minimum_loss"] == pytest.approx(rec["minimum"]["loss"])
        fin_b = runs.search_all(uri, [exp], "tags.trial_key = 'key-b' and attributes.status = 'FINISHED'")
        assert c.list_artifacts(fin[0].info.run_id, "figures"), "figures drawn (the default)"
        assert "trial_record.json" in {a.path for a in c.list_artifacts(fin_b[0].info.run_id)}
        assert not c.list_artifacts(fin_b[0].info.run_id, "figures")
        # syncing again, or a spool file for a key that already finished, logs nothing twice
        spool.spool_record(res, "key-a", rec, meta)
        assert spool.sync(res, uri) == 0
        assert spool.spooled(res) == []
        assert len(runs.search_all(uri, [exp], "tags.trial_key = 'key-a' and attributes.status = 'FINISHED'")) == 1
    finally:
        srv.stop()


def test_no_secrets_in_runs(template, tmp_path, monkeypatch):
    secret = "s3cr3t-Value-9f8e7d6c"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("PERMSYM_API_TOKEN", secret + "-tok")
    uri, exp = _store(template, tmp_path)
    parent = runs.get_or_create_parent(uri, exp, "sec", {"name": "sec"})
    rec = make_record((3,), 0)
    rid = runs.start_trial_run(uri, exp, parent, "sec", "k", rec["config"], 1)
    runs.finish_trial_run(uri, rid, rec, figures=False)
    values = runs.secret_env_values()
    assert secret in values.values()
    assert runs.scan_for_secrets(uri, exp, values.values()) == []
    # the scanner does find a value that was logged
    runs.client(uri).set_tag(rid, "oops", secret)
    assert runs.scan_for_secrets(uri, exp, [secret]) == [f"{rid}: tag oops"]


def test_environ_set_puts_every_variable_back(monkeypatch):
    from tracking.environ import environ_set

    monkeypatch.setenv("PERMSYM_T_SET", "mine")
    monkeypatch.delenv("PERMSYM_T_UNSET", raising=False)
    with environ_set({"PERMSYM_T_SET": "theirs", "PERMSYM_T_UNSET": "new"}, keep_existing=True):
        assert os.environ["PERMSYM_T_SET"] == "mine" and os.environ["PERMSYM_T_UNSET"] == "new"
    assert os.environ["PERMSYM_T_SET"] == "mine" and "PERMSYM_T_UNSET" not in os.environ
    with pytest.raises(KeyError):                       # restored on the way out of an exception too
        with environ_set({"PERMSYM_T_SET": "theirs", "PERMSYM_T_UNSET": "new"}):
            assert os.environ["PERMSYM_T_SET"] == "theirs" and os.environ["PERMSYM_T_UNSET"] == "new"
            raise KeyError("x")
    assert os.environ["PERMSYM_T_SET"] == "mine" and "PERMSYM_T_UNSET" not in os.environ
