"""Real sweeps: Ray Tune (one shared local Ray per module), MLflow in SQLite or behind a real `mlflow server`,
Optuna with its study in SQLite, a driver killed for real and resumed, and a two-node Ray cluster.

Trials are tiny (toy task, width 3, short warm-up, no path relaxation, no gamma scan) so the whole module
stays within a few minutes on a 2-core machine.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures.mlflow_helpers import sweep_runs

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FAST = {"adam_steps": 200, "path_relax": False, "gamma_scan": False, "path_points": 5}


def _spec(name: str, seeds, **over) -> dict:
    d = {"name": name, "task": "toy", "grid": {"widths": [[3]], "seeds": list(seeds), **FAST},
         "resources": {"cpus": 1}, "max_failures": 1}
    d.update(over)
    return d


def _children(uri: str, sweep: str):
    c, runs = sweep_runs(uri, sweep)
    return c, [r for r in runs if r.data.tags.get("trial_key")], [r for r in runs if not r.data.tags.get("trial_key")]


def _assert_one_finished_per_key(uri: str, sweep: str, keys: set[str]):
    c, kids, parents = _children(uri, sweep)
    assert len(parents) == 1
    finished = [r for r in kids if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["trial_key"] for r in finished) == sorted(keys)
    assert not [r for r in kids if r.info.status == "RUNNING"]
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in kids)
    return c, finished



def test_local_sweep_relaunch_and_time_limit(local_ray, tmp_path):
    from sweeps.plan import plan
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking.store import results_uri

    spec = load_spec(_spec("local4", range(4)))
    keys = {t.key for t in plan(spec)}
    s = run_sweep(spec, results_dir=tmp_path, progress=True)
    uri = results_uri(tmp_path)
    assert s["finished"] == 4 and s["failed"] == 0 and s["errored"] == 0
    assert s["tracking_uri"] == uri
    c, finished = _assert_one_finished_per_key(uri, "local4", keys)
    for r in finished:
        names = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert "trial_record.json" in names and "points.json" in names, names
        figs = c.list_artifacts(r.info.run_id, "figures")
        assert figs, "figures logged"
        assert r.data.params["widths"] == "3"
        assert "minimum_loss" in r.data.metrics
        rec = json.loads(Path(c.download_artifacts(r.info.run_id, "trial_record.json", str(tmp_path / r.info.run_id))
                              ).read_text())
        assert rec["worker"]["node_id"]

    again = run_sweep(spec, results_dir=tmp_path, progress=False)
    assert again["already_finished"] == 4 and again["ran"] == 0
    _assert_one_finished_per_key(uri, "local4", keys)

    # figures: false draws no PNGs (a large sweep's choice); the record and metrics are complete
    s = run_sweep(load_spec(_spec("nofig", [0], figures=False)), results_dir=tmp_path, progress=False)
    assert s["finished"] == 1
    _c, kids, _p = _children(uri, "nofig")
    assert [r.info.status for r in kids] == ["FINISHED"]
    assert "trial_record.json" in {a.path for a in c.list_artifacts(kids[0].info.run_id)}
    assert not c.list_artifacts(kids[0].info.run_id, "figures")
    assert "minimum_loss" in kids[0].data.metrics

    # a trial over its time limit is stopped and recorded FAILED with the reason; the sweep goes on
    d = _spec("limit", [0], trial_time_limit_s=1.0)
    d["grid"].update(widths=[[6]], adam_steps=3000, path_relax=True, gamma_scan=True)   # far longer than 1 s
    slow = load_spec(d)
    s = run_sweep(slow, results_dir=tmp_path, progress=False)
    assert s["failed"] == 1 and s["finished"] == 0, s["trials"] or s["errored"]
    _c, kids, _p = _children(uri, "limit")
    assert [r.info.status for r in kids] == ["FAILED"]
    assert kids[0].data.tags["failure_reason"].startswith("time_limit")


def test_driver_killed_then_resumed(local_ray, tmp_path):
    from sweeps.plan import plan
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking.store import results_uri

    d = _spec("killed", range(4), max_concurrent=1)
    d["grid"]["adam_steps"] = 8000                   # a few seconds per trial: a window to kill the driver in
    spec_file = tmp_path / "killed.yaml"
    spec_file.write_text(yaml.safe_dump(d))
    results = tmp_path / "res"
    uri = results_uri(results)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    driver_log = tmp_path / "driver.log"
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "sweep", str(spec_file), "--results", str(results)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=driver_log.open("w"),
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        n_done = 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            try:                                    # no runs until the driver has made the store
                _c, kids, _p = _children(uri, "killed")
            except Exception:
                continue
            n_done = sum(r.info.status == "FINISHED" for r in kids)
            if n_done >= 1:
                break
        assert proc.poll() is None, ("the sweep ended before it could be interrupted:\n"
                                     + "\n".join(driver_log.read_text().splitlines()[-15:]))
        assert 1 <= n_done < 4
        os.kill(proc.pid, signal.SIGKILL)           # the driver, by its pid
        proc.wait(timeout=30)
        try:                                        # and what it started (its own Ray), so no late write lands
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    spec = load_spec(spec_file)
    keys = {t.key for t in plan(spec)}
    import io
    import re

    buf = io.StringIO()
    s = run_sweep(spec, results_dir=results, resume=True, progress=True, stream=buf)
    assert s["already_finished"] >= 1
    done = [tuple(map(int, m)) for m in re.findall(r"\] (\d+)/(\d+) done", buf.getvalue())]
    assert done and all(k <= n for k, n in done), buf.getvalue()   # no "4/3 done" from re-reported keys
    _c, finished = _assert_one_finished_per_key(uri, "killed", keys)
    assert len(finished) == 4
    # every key counted once: the restored Tune trials re-report the trials that had ended before the kill
    # (their last metrics, or `skipped`), and those keys count in already_finished only; a key the killed
    # driver's still-running Ray worker finished after this launch's start counts as skipped (held elsewhere)
    counted = s["already_finished"] + s["finished"] + s["failed"] + s["skipped"] + s["elsewhere"]
    assert counted == 4, dict(already=s["already_finished"], finished=s["finished"], failed=s["failed"],
                              skipped=s["skipped"], elsewhere=s["elsewhere"])


def test_optuna_study_persists_and_continues(local_ray, tmp_path):
    import optuna

    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking.store import results_uri

    search = {"kind": "optuna", "sampler": "random", "n_trials": 2, "metric": "min_loss", "mode": "min", "seed": 0}
    first = run_sweep(load_spec(_spec("opt", range(6), search=search, max_concurrent=2)), results_dir=tmp_path,
                      progress=False)
    assert first["finished"] + first["skipped"] == 2
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="opt", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2

    more = dict(search, n_trials=4)
    second = run_sweep(load_spec(_spec("opt", range(6), search=more, max_concurrent=2)), results_dir=tmp_path,
                       progress=False)
    assert second["already_finished"] == 2 and second["finished"] + second["skipped"] == 2
    study = optuna.load_study(study_name="opt", storage=storage)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4
    third = run_sweep(load_spec(_spec("opt", range(6), search=more)), results_dir=tmp_path, progress=False)
    assert third["ran"] == 0
    _c, kids, parents = _children(results_uri(tmp_path), "opt")
    fin = [r.data.tags["trial_key"] for r in kids if r.info.status == "FINISHED"]
    assert len(fin) == len(set(fin)) and 1 <= len(fin) <= 4 and len(parents) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_logs_to_a_real_mlflow_server(local_ray, tmp_path):
    from sweeps.plan import plan
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking.store import server_env

    port = _free_port()
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
           "--default-artifact-root", (tmp_path / "server" / "artifacts").as_uri(),
           "--host", "127.0.0.1", "--port", str(port)]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(cmd, env=server_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        spec = load_spec(_spec("served", [0, 1]))
        s = run_sweep(spec, tracking_uri=uri, results_dir=tmp_path / "res", progress=False)
        assert s["finished"] == 2 and s["tracking_uri"] == uri
        assert not (tmp_path / "res" / "mlflow.db").exists()
        c, finished = _assert_one_finished_per_key(uri, "served", {t.key for t in plan(spec)})
        for r in finished:
            assert "trial_record.json" in {a.path for a in c.list_artifacts(r.info.run_id)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)       # the server's own session: the process we started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def test_two_node_cluster_runs_trials_on_both_nodes(local_ray, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from sweeps.plan import plan
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking.store import results_uri

    ray.shutdown()                                   # the module's local Ray: this test brings its own cluster
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        spec = load_spec(_spec("twonode", range(4)))
        s = run_sweep(spec, results_dir=tmp_path, progress=False)
        assert s["finished"] == 4
        uri = results_uri(tmp_path)
        c, finished = _assert_one_finished_per_key(uri, "twonode", {t.key for t in plan(spec)})
        nodes = set()
        for r in finished:
            p = c.download_artifacts(r.info.run_id, "trial_record.json", str(tmp_path / r.info.run_id))
            nodes.add(json.loads(Path(p).read_text())["worker"]["node_id"])
        assert len(nodes) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
