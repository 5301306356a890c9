"""A spool that survives a cluster: the tracking server goes down while a trial runs; the worker's record
comes back to the driver, which keeps it under the sweep's results folder and says, on exit, what is pending
and the exact command; `permsym sync` without --tracking-uri logs it where the sweep was logging."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fixtures.mlflow_helpers import MlflowServer, make_template_db, sweep_runs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_server_down_mid_trial_record_reaches_the_driver_and_sync_logs_it(tmp_path):
    srv = MlflowServer(tmp_path / "srv", make_template_db(tmp_path / "tpl")).start()
    spec = {"name": "sp", "task": "toy", "resources": {"cpus": 1},
            "grid": {"widths": [[5]], "seeds": [0], "adam_steps": 2000, "path_relax": False, "gamma_scan": False,
                     "path_points": 5}}
    f = tmp_path / "sp.yaml"
    f.write_text(yaml.safe_dump(spec))
    res = (tmp_path / "res").resolve()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "sweep", str(f), "--results", str(res),
                             "--tracking-uri", srv.uri, "--quiet"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        running = None
        while running is None and time.time() - t0 < 300 and proc.poll() is None:
            try:
                _c, rs = sweep_runs(srv.uri, "sp")
                running = next((r for r in rs if r.data.tags.get("trial_key") and r.info.status == "RUNNING"), None)
            except Exception:
                pass
            time.sleep(0.5)
        assert running is not None, ("no trial run opened", proc.poll(), proc.poll() is not None and proc.communicate())
        srv.stop()                                           # the server goes away while the trial runs
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    cmd = f"permsym sync --results {res} --tracking-uri {srv.uri}"
    assert proc.returncode == 3, (out[-2000:], err[-2000:])
    assert f"sweep sp: 1 record(s) pending in the spool; run: {cmd}" in err
    assert "interrupted" not in out and cmd in out
    files = list((res / "spool").glob("*.json"))
    assert len(files) == 1
    payload = json.loads(files[0].read_text())
    assert payload["meta"]["tracking_uri"] == srv.uri and payload["record"]["minimum"]["loss"] >= 0

    srv.start()                                               # same port, same database
    s = subprocess.run([sys.executable, "-m", "sweeps.cli", "sync", "--results", str(res)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert s.returncode == 0, s.stdout + s.stderr
    assert f"logged 1 spooled record(s) to {srv.uri}; 0 left in the spool" in s.stdout
    try:
        _c, rs = sweep_runs(srv.uri, "sp")
        kids = [r for r in rs if r.data.tags.get("trial_key")]
        assert [r.info.status for r in kids if r.info.status == "FINISHED"] == ["FINISHED"]
        assert {r.info.run_id: r.info.status for r in kids}[running.info.run_id] == "KILLED"
        fin = next(r for r in kids if r.info.status == "FINISHED")
        assert fin.data.metrics["minimum_loss"] == pytest.approx(payload["record"]["minimum"]["loss"], rel=1e-12)
    finally:
        srv.stop()
