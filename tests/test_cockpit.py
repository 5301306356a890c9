"""The researcher's cockpit, with real components: a real sweep driven through `python -m sweeps.cli` (its own
Ray, a SQLite store in a tmp dir), `permsym status` / `sweeps` / `sweep --dry-run` reading that store from
another process while it runs, Ctrl-C (SIGINT to the sweep's process group, as a terminal sends it), a
tracking server that is down, and `permsym ui` stopped with SIGTERM."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fixtures.mlflow_helpers import free_port, sweep_runs

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ROOT = Path(__file__).resolve().parents[1]
FAST = {"path_relax": False, "gamma_scan": False, "path_points": 5}


def _cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _env(**extra):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT), **extra)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def test_version_and_experiment_name_validation():
    from sweeps.cli import main
    from sweeps.spec import SpecError, load_spec

    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("permsym 0.1.0 (code "), r.output
    for bad in ("../../etc", "a/b", "a\\b", ".hidden", "x..y"):
        with pytest.raises(SpecError, match="^experiment: expected"):
            load_spec({"name": "s", "experiment": bad, "grid": {"widths": [[3]]}})
    assert load_spec({"name": "s", "experiment": "my study 1", "grid": {"widths": [[3]]}}).experiment_name == \
        "my study 1"


def test_tracking_server_down_is_one_line(tmp_path):
    """Nothing listens on the port: `sweep`, `status` and `sweeps` say so in one line, exit 1, start nothing."""
    uri = f"http://127.0.0.1:{free_port()}"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "down", "grid": {"widths": [[3]], **FAST}}))
    env = _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    for args in (["sweep", str(spec), "--tracking-uri", uri, "--results", str(tmp_path / "res")],
                 ["status", "--tracking-uri", uri], ["sweeps", "--tracking-uri", uri],
                 ["sweep", "--dry-run", str(spec), "--tracking-uri", uri]):
        p = _cli(*args, env=env)
        err = p.stderr.strip().splitlines()
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert len(err) == 1 and err[0].startswith("error: tracking server") and "unreachable" in err[0], p.stderr
        assert "Traceback" not in p.stdout + p.stderr
    assert not (tmp_path / "res" / "ray").exists()


def test_credentials_of_a_down_server_are_never_printed(tmp_path):
    """Every command handed a user:password@ URI of a server that is down fails in one line without the
    password (MLflow's own error text embeds the URI it was given)."""
    uri = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "down", "grid": {"widths": [[3]], **FAST}}))
    (tmp_path / "res").mkdir()
    env = _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    for args in (["sweep", str(spec), "--tracking-uri", uri, "--results", str(tmp_path / "res")],
                 ["status", "--tracking-uri", uri], ["sweeps", "--tracking-uri", uri],
                 ["results", "--tracking-uri", uri], ["report", "--tracking-uri", uri, "--out", str(tmp_path / "r")],
                 ["sync", "--results", str(tmp_path / "res"), "--tracking-uri", uri]):
        p = _cli(*args, env=env)
        assert "s3cret-pw" not in p.stdout + p.stderr, (args, p.stdout, p.stderr)
        assert "Traceback" not in p.stdout + p.stderr, (args, p.stderr)
        assert p.returncode != 0 or args[0] == "sync", (args, p.stdout, p.stderr)   # empty spool: nothing to log


def _wait(pred, timeout, what, proc=None, log=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = "" if log is None else "\n".join(Path(log).read_text().splitlines()[-20:])
    raise AssertionError(f"{what} not seen within {timeout} s\n{tail}")


@pytest.mark.slow
def test_status_progress_dry_run_and_ctrl_c_on_a_running_sweep(tmp_path):
    """One real sweep of two trials (one quick, one long), one at a time. While it runs, from other processes:
    `sweeps` shows it RUNNING, `status` shows the finished trial and the running one with its host, pids and
    phase; the driver prints the phase. Then Ctrl-C: exit 130, no run left RUNNING, parent KILLED. Then
    `sweep --dry-run` counts the finished trial as done and writes nothing; `results` honours
    MLFLOW_TRACKING_URI."""
    from mlflow import MlflowClient

    from sweeps.cli import main
    from tracking.store import results_uri

    d = {"name": "cockpit", "task": "toy", "max_concurrent": 1, "resources": {"cpus": 1},
         "grid": {"widths": [[3], [16]], "adam_steps": 20000, **FAST}}
    spec = tmp_path / "cockpit.yaml"
    spec.write_text(yaml.safe_dump(d))
    results = tmp_path / "res"
    uri = results_uri(results)
    out = tmp_path / "driver.out"
    # the driver gets Ctrl-C as a terminal's foreground job would: a suite started in the background (`make test &`,
    # nohup) runs with SIGINT ignored, an ignore every child inherits through exec and Python then keeps
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "sweep", str(spec), "--results", str(results)],
                            cwd=ROOT, env=_env(), stdout=out.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runner = CliRunner()
    try:
        def running_with_phase():
            _c, rs = sweep_runs(uri, "cockpit")
            kids = [r for r in rs if r.data.tags.get("trial_key")]
            fin = [r for r in kids if r.info.status == "FINISHED"]
            run = [r for r in kids if r.info.status == "RUNNING" and r.data.tags.get("phase", "").startswith("reduced")]
            return fin and run and run[0]

        live = _wait(running_with_phase, 240, "a finished trial and a running one in phase 'reduced'", proc, out)
        sw = runner.invoke(main, ["sweeps", "--results", str(results)])
        assert sw.exit_code == 0, sw.output
        row = [ln for ln in sw.output.splitlines() if ln.startswith("cockpit")]
        assert row and row[0].split()[2] == "RUNNING" and row[0].split()[3:6] == ["2", "1", "1"], sw.output
        st = runner.invoke(main, ["status", "cockpit", "--results", str(results)])
        assert st.exit_code == 0, st.output
        line = [ln for ln in st.output.splitlines() if ln.strip().startswith("running ")]
        assert len(line) == 1, st.output
        tags = live.data.tags
        assert f"worker pid {tags['worker_pid']}" in line[0] and f"host {tags['hostname']}" in line[0]
        assert "phase: reduced L1K1 " in line[0] and "/120" in line[0], line[0]     # C(16, 2) = 120 pairs
        assert "planned 2, finished 1" in st.output and "pending 0" in st.output and "spooled 0" in st.output
        assert "estimated time left" in st.output
        _wait(lambda: "reduced L1K1" in out.read_text(), 60, "a phase line on the driver", proc, out)
        os.killpg(proc.pid, signal.SIGINT)                   # Ctrl-C: the terminal signals the whole group
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    text = out.read_text()
    assert rc == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    c, rs = sweep_runs(uri, "cockpit")
    assert not [r for r in rs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status) for r in rs]
    parent = [r for r in rs if not r.data.tags.get("trial_key")]
    assert [p.info.status for p in parent] == ["KILLED"]
    exp = c.get_experiment(parent[0].info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"

    n_runs = len(rs)
    mtime = (results / "mlflow.db").stat().st_mtime_ns
    dry = runner.invoke(main, ["sweep", "--dry-run", str(spec), "--results", str(results)])
    assert dry.exit_code == 0, dry.output
    assert "2 planned, 1 already done, 1 to run" in dry.output, dry.output
    states = [ln.split()[-3] for ln in dry.output.splitlines() if "widths=" in ln]
    assert sorted(states) == ["done", "run"], dry.output              # "to run" splits into two words
    assert "measured" in dry.output                                   # the finished width-3 trial's own time
    assert len(sweep_runs(uri, "cockpit")[1]) == n_runs and (results / "mlflow.db").stat().st_mtime_ns == mtime
    fresh = tmp_path / "nothing-here"
    dry2 = runner.invoke(main, ["sweep", "--dry-run", str(spec), "--results", str(fresh)])
    assert dry2.exit_code == 0 and "2 planned, 0 already done, 2 to run" in dry2.output and "model" in dry2.output
    assert not fresh.exists()

    p = _cli("results", "--format", "json", env=dict(_env(), MLFLOW_TRACKING_URI=uri))
    assert p.returncode == 0, p.stderr
    import json

    rows = json.loads(p.stdout)
    assert rows and {tuple(r["widths"]) for r in rows} == {(3,)}, rows[:2]
    assert MlflowClient(uri).get_run(parent[0].info.run_id).info.status == "KILLED"


def _descendants(pid: int) -> set[int]:
    """Every process whose parent chain leads to `pid` (read from /proc)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, frontier = set(), {pid}
    while frontier:
        nxt = {c for c, p in parents.items() if p in frontier and c not in out}
        out |= nxt
        frontier = nxt
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_ui_sigterm_ends_the_server_and_its_workers(tmp_path):
    from tracking.store import prepare_store, results_uri

    prepare_store(results_uri(tmp_path), "ui")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sweeps.cli", "ui", "--results", str(tmp_path), "--port", str(port)],
                            cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait(healthy, 120, "the UI's /health", proc)
        kids = _descendants(proc.pid)
        assert len(kids) >= 2, kids                   # mlflow server, uvicorn and its workers
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert rc == 128 + signal.SIGTERM
    _wait(lambda: not any(_alive(k) for k in kids), 30, f"the end of every child of permsym ui {sorted(kids)}")


@pytest.mark.slow
def test_credentialed_tracking_uri_never_leaks(tmp_path):
    """A real sweep (its own Ray, temp dir under tmp_path) logging to a real `mlflow server` through a URI
    with user:password@: the password is nowhere in the printed output, the runs (names, params, tags,
    metrics, every artifact), the results folder (Ray Tune's experiment state) or Ray's session files
    (where the runtime_env is recorded); the trials did log (the URI worked), and `status` redacts it too."""
    from fixtures.mlflow_helpers import MlflowServer

    from tracking.runs import scan_for_secrets

    user, password = "permsym-user", "pw-8f3e1c77d2"
    srv = MlflowServer(tmp_path / "srv").start()
    try:
        host = srv.uri.split("//", 1)[1]
        uri = f"http://{user}:{password}@{host}"
        spec = tmp_path / "cred.yaml"
        spec.write_text(yaml.safe_dump({"name": "cred", "grid": {"widths": [[3]], "adam_steps": 200, **FAST}}))
        ray_tmp = Path("/tmp") / f"rt-{os.getpid()}-{tmp_path.name[-12:]}"   # short: Ray's socket paths
        env = _env(RAY_TMPDIR=str(ray_tmp))
        p = _cli("sweep", str(spec), "--tracking-uri", uri, "--results", str(tmp_path / "res"), env=env, timeout=400)
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        st = _cli("status", "cred", "--tracking-uri", uri, env=env)
        assert st.returncode == 0 and "finished 1" in st.stdout, st.stdout + st.stderr
        printed = p.stdout + p.stderr + st.stdout + st.stderr
        assert password not in printed and f"{user}:" not in printed, printed[-2000:]
        assert srv.uri in p.stdout                                     # the redacted URI is what is shown
        from mlflow import MlflowClient

        c = MlflowClient(srv.uri)
        exps = [e.experiment_id for e in c.search_experiments()]
        kids = [r for r in c.search_runs(exps) if r.data.tags.get("trial_key")]
        assert [r.info.status for r in kids] == ["FINISHED"]
        for e in exps:
            assert scan_for_secrets(srv.uri, e, [password, f"{user}:"]) == []
        files = [q for base in (tmp_path / "res", ray_tmp, srv.folder) for q in base.rglob("*") if q.is_file()]
        assert any("tuner.pkl" in q.name or "experiment_state" in q.name for q in files)
        leaked = [str(q) for q in files if password.encode() in q.read_bytes()]
        assert not leaked, leaked
    finally:
        srv.stop()
        shutil.rmtree(Path("/tmp") / f"rt-{os.getpid()}-{tmp_path.name[-12:]}", ignore_errors=True)
