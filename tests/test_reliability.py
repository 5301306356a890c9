"""Issue 7: each fault injected for real, asserting on the tracking store's final contents.

- a Ray worker (and a trial's own process) killed with SIGKILL by its pid mid-trial: retried, one FINISHED run
  per key, the killed attempts KILLED or FAILED;
- diverging and out-of-budget networks inside a real sweep: recorded outcomes, excluded from the counts;
- 8 trials logging at once into one SQLite store: all FINISHED, no "database is locked";
- malformed point files and out-of-range command lines: one line `error: ...`, exit 2, nothing started;
- secrets in the environment never reach the store; the UI binds 127.0.0.1; Ray auth never disabled;
- a node of a two-node Ray cluster removed mid-sweep: its trial rescheduled on the other node.

(The driver killed and resumed, the time limit, the real mlflow server and the spool are in test_sweep.py and
test_tracking.py.) Trials are tiny toy networks; one local Ray serves every test but the cluster one (last).
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fixtures.mlflow_helpers import sweep_runs

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

ROOT = Path(__file__).resolve().parents[1]
FAST = {"adam_steps": 200, "path_relax": False, "gamma_scan": False, "path_points": 5}
BAD_POINTS = sorted((ROOT / "tests" / "bad_points").glob("*.json"))
BAD_CLI = sorted((ROOT / "tests" / "bad_cli").glob("*.txt"))
LOCKED = "database is locked"


def _spec(name: str, seeds, widths=((3,),), **over) -> dict:
    grid = {"widths": [list(w) for w in widths], "seeds": list(seeds), **FAST, **over.pop("grid", {})}
    d = {"name": name, "task": "toy", "grid": grid, "resources": {"cpus": 1}, "max_failures": 1}
    d.update(over)
    return d


def _trial_runs(uri: str, sweep: str) -> list:
    _c, runs = sweep_runs(uri, sweep)
    return [r for r in runs if r.data.tags.get("trial_key")]


def _one_finished_per_key(uri: str, sweep: str, keys: set[str]) -> list:
    kids = _trial_runs(uri, sweep)
    finished = [r for r in kids if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["trial_key"] for r in finished) == sorted(keys), \
        [(r.data.tags["trial_key"][:8], r.info.status) for r in kids]
    assert not [r for r in kids if r.info.status == "RUNNING"], "a run was left RUNNING"
    return kids


def _poll_running(uri: str, sweep: str, tag: str, deadline: float, pred=lambda r: True):
    """The first RUNNING trial run of `sweep` that carries `tag` and satisfies pred (None at the deadline)."""
    while time.time() < deadline:
        try:
            for r in _trial_runs(uri, sweep):
                if r.info.status == "RUNNING" and r.data.tags.get(tag) and pred(r):
                    return r
        except Exception:                             # the store is not created yet
            pass
        time.sleep(0.3)
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _session_logs_mention(text: str) -> list[str]:
    """Ray session log files (workers, raylet, GCS) of the Ray this process is connected to that contain text."""
    import ray

    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    hits = []
    for f in (session / "logs").rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                if text.encode() in fh.read():
                    hits.append(f.name)
    return hits



# --- 1. a worker process killed mid-trial -------------------------------------------------------------------

@pytest.mark.slow
def test_worker_and_trial_process_killed_mid_trial_are_retried(local_ray, tmp_path):
    from sweeps.plan import plan
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking.store import results_uri

    # relaxed paths make each trial last 10+ s even on a quiet machine, and a third trial is a spare target
    spec = load_spec(_spec("wkill", [0, 1, 2], widths=[(5,)], max_failures=2, max_concurrent=2,
                           grid={"path_relax": True}))
    keys = {t.key for t in plan(spec)}
    uri = results_uri(tmp_path)
    host = socket.gethostname()
    killed: dict[str, dict] = {}                      # "worker" / "trial" -> {key, pid, run_id}
    errors: list[str] = []

    def killer():
        try:
            deadline = time.time() + 240
            for what, tag in (("worker", "worker_pid"), ("trial", "trial_pid")):
                while what not in killed:
                    taken = {k["key"] for k in killed.values()}
                    r = _poll_running(uri, "wkill", "trial_pid", deadline,
                                      lambda r: r.data.tags["trial_key"] not in taken
                                      and r.data.tags.get("hostname") == host
                                      and _alive(int(r.data.tags[tag])))
                    if r is None:
                        errors.append(f"no RUNNING trial to kill its {what}")
                        return
                    time.sleep(1.0)                   # mid-way through the trial
                    pid = int(r.data.tags[tag])
                    if what == "worker":
                        try:
                            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                        except FileNotFoundError:     # that trial ended meanwhile: take the next one
                            continue
                        assert b"ray" in cmd, cmd[:200]   # the Ray worker of this test's Ray, by its pid
                    if not _alive(int(r.data.tags["trial_pid"])):
                        continue                      # that trial ended in the second (its worker may run the next)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:        # it finished within the second: take the next one
                        continue
                    killed[what] = {"key": r.data.tags["trial_key"], "pid": pid, "run_id": r.info.run_id,
                                    "trial_pid": int(r.data.tags["trial_pid"])}
        except Exception as e:                        # surfaced by the main thread
            errors.append(repr(e))

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    out = io.StringIO()
    s = run_sweep(spec, results_dir=tmp_path, progress=True, stream=out)
    th.join(timeout=30)
    assert not errors, errors
    assert set(killed) == {"worker", "trial"}, killed
    assert s["finished"] == len(keys) and s["errored"] == 0 and s["failed"] == 0, out.getvalue()[-3000:]
    kids = _one_finished_per_key(uri, "wkill", keys)
    by_id = {r.info.run_id: r for r in kids}
    # the attempt whose Ray worker died: nobody could end it; the retry (or the driver) marked it KILLED
    w = by_id[killed["worker"]["run_id"]]
    assert w.info.status in ("KILLED", "FAILED"), w.info.status
    assert "abandoned" in w.data.tags.get("failure_reason", "") or w.info.status == "FAILED"
    assert not _alive(killed["worker"]["trial_pid"]), "the killed worker's trial process outlived it"
    # the attempt whose own process died: the worker saw it and ended the run FAILED with the signal
    t = by_id[killed["trial"]["run_id"]]
    assert t.info.status == "FAILED", t.info.status
    assert "crashed" in t.data.tags["failure_reason"] and "signal 9" in t.data.tags["failure_reason"]
    for k in (killed["worker"]["key"], killed["trial"]["key"]):
        fin = [r for r in kids if r.data.tags["trial_key"] == k and r.info.status == "FINISHED"]
        assert len(fin) == 1 and int(fin[0].data.tags["attempt"]) >= 2
        assert fin[0].data.tags["converged"] == "true"
    assert "crashed, retrying" in out.getvalue()


# --- 3. diverging and out-of-budget networks inside a real sweep -------------------------------------------

@pytest.mark.slow
def test_diverging_and_budget_trials_are_recorded_outcomes(local_ray, tmp_path):
    """init_scale 1e6 diverges; max_iter 1 cannot reach grad_tol; (1.0, 2000) is the normal trial. Run through
    the command line joining this test's Ray: exit status 0."""
    from mlflow import MlflowClient

    from sweeps.plan import plan
    from sweeps.spec import load_spec
    from tracking import query
    from tracking.store import results_uri

    d = _spec("faulty", [0], grid={"init_scale": [1.0, 1.0e6], "max_iter": [2000, 1]}, max_concurrent=2)
    f = tmp_path / "faulty.yaml"
    f.write_text(yaml.safe_dump(d))
    results = tmp_path / "res"
    address = local_ray.get_runtime_context().gcs_address
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    p = subprocess.run([sys.executable, "-m", "sweeps.cli", "sweep", str(f), "--results", str(results),
                        "--address", address], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "4 finished now, 0 failed, 0 errored" in p.stdout, p.stdout[-2000:]
    uri = results_uri(results)
    keys = {t.key for t in plan(load_spec(f))}
    kids = _one_finished_per_key(uri, "faulty", keys)
    assert len(kids) == 4                             # no retries: a failed minimum is an outcome, not a crash
    c = MlflowClient(uri)
    reasons = {}
    for r in kids:
        rec = json.loads(Path(c.download_artifacts(r.info.run_id, "trial_record.json", str(tmp_path / r.info.run_id))
                              ).read_text())
        cfg = rec["config"]
        reasons[(cfg["init_scale"], cfg["max_iter"])] = (r.data.tags["converged"], r.data.tags.get("failure_reason"),
                                                         r.data.metrics.get("converged"))
    assert reasons[(1.0, 2000)] == ("true", None, 1.0)
    for k, stop in (((1.0e6, 2000), "diverged"), ((1.0e6, 1), "diverged"), ((1.0, 1), "max_iter")):
        conv, reason, metric = reasons[k]
        assert conv == "false" and metric == 0.0 and reason.startswith("minimum not converged: " + stop), reasons[k]
    summ = query.summary("faulty", tracking_uri=uri)
    assert not summ.empty and set(summ["n_seeds"]) == {1}, summ   # only the converged trial counts
    rdf = query.runs("faulty", tracking_uri=uri)
    assert int(rdf["converged"].sum()) == 1 and len(rdf) == 4


# --- 4. many workers logging at once ----------------------------------------------------------------------

@pytest.mark.slow
def test_eight_concurrent_trials_into_one_sqlite_store(local_ray, tmp_path):
    from sweeps.plan import plan
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking.store import results_uri

    spec = load_spec(_spec("eight", range(8), resources={"cpus": 0.25}, max_concurrent=8))
    out = io.StringIO()
    s = run_sweep(spec, results_dir=tmp_path, progress=True, stream=out)
    text = out.getvalue()
    assert s["finished"] == 8 and s["failed"] == 0 and s["errored"] == 0, text[-3000:]
    uri = results_uri(tmp_path)
    kids = _one_finished_per_key(uri, "eight", {t.key for t in plan(spec)})
    # they did run at once: the most runs open at the same moment (from the store's start and end times)
    edges = sorted([(r.info.start_time, 1) for r in kids] + [(r.info.end_time, -1) for r in kids])
    open_now, most = 0, 0
    for _t, step in edges:
        open_now += step
        most = max(most, open_now)
    assert most >= 4, most
    assert len(kids) == 8 and {r.data.tags["attempt"] for r in kids} == {"1"}   # nothing retried
    assert LOCKED not in text
    for r in kids:
        assert LOCKED not in json.dumps(r.data.tags)
    assert not _session_logs_mention(LOCKED)


# --- 5. bad input: saved point files and command lines --------------------------------------------------------

def _expected_points() -> dict[str, str]:
    out = {}
    for line in (ROOT / "tests" / "bad_points" / "EXPECTED.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, frag = line.split(": ", 1)
            out[name] = frag
    return out


def _one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    return err[0]


def test_bad_point_corpus_is_complete():
    assert len(BAD_POINTS) >= 8 and set(_expected_points()) == {p.name for p in BAD_POINTS}
    assert len(BAD_CLI) >= 8


@pytest.mark.parametrize("path", BAD_POINTS, ids=[p.stem for p in BAD_POINTS])
def test_bad_point_file_one_line_error(path):
    from sweeps.cli import main

    r = CliRunner().invoke(main, ["point", str(path), "--task", "toy"])
    msg = _one_line_error(r)
    assert path.name in msg and _expected_points()[path.name] in msg, msg


def _cli_case(path: Path, results: Path) -> tuple[list[str], str]:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# expect:"), path.name
    args = shlex.split(lines[1].format(root=ROOT, results=results))
    return args, lines[0].split(":", 1)[1].strip()


@pytest.mark.parametrize("path", BAD_CLI, ids=[p.stem for p in BAD_CLI])
def test_bad_command_line_one_line_error(path, tmp_path, monkeypatch):
    from sweeps.cli import main

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    args, expect = _cli_case(path, results)
    r = CliRunner().invoke(main, args)
    msg = _one_line_error(r)
    assert expect in msg, msg
    assert not (results / "mlflow.db").exists() and not (tmp_path / "permsym-results").exists()


def test_bad_inputs_through_the_real_process(tmp_path):
    """The installed entry point, not CliRunner: a hostile point file and a missing spec."""
    for args in (["point", str(ROOT / "tests" / "bad_points" / "08_python_tag.json")],
                 ["sweep", "missing.yaml", "--results", str(tmp_path / "res")]):
        p = subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == ""
        assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: "), p.stderr
    assert not (tmp_path / "res").exists()
    assert not Path("/tmp/permsym-pwned").exists()


def test_saved_point_round_trip(tmp_path):
    """`permsym trial --save-params --json` -> one point's params in a file -> `permsym point` reproduces its
    loss and index."""
    from sweeps.cli import main

    r = CliRunner().invoke(main, ["trial", "--widths", "3", "--adam-steps", "200", "--no-path-relax",
                                  "--no-gamma-scan", "--save-params", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    pt = next(p for p in rec["points"] if p.get("critical"))
    f = tmp_path / "point.json"
    f.write_text(json.dumps(pt["params"]))
    r = CliRunner().invoke(main, ["point", str(f), "--task", "toy", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["loss"] == pytest.approx(pt["loss"], rel=1e-12, abs=1e-15)
    assert got["index"] == pt["index"] and got["n_zero"] == pt["n_zero"] and got["critical"]
    m = tmp_path / "minimum.json"
    m.write_text(json.dumps(rec["minimum"]))          # a whole minimum object (params inside) works too
    r = CliRunner().invoke(main, ["point", str(m)])
    assert r.exit_code == 0 and "index 0" in r.stdout, r.output


# --- 6. security ---------------------------------------------------------------------------------------

SECRETS = {"MY_API_TOKEN": "s3cr3t-token-8d1f0c2a", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCY",
           "DB_PASSWORD": "hunter2-correct-horse-77", "PERMSYM_PRIVATE_KEY": "pk-0b9e4d1c7a"}


@pytest.mark.slow
def test_secrets_in_the_environment_never_reach_the_store(tmp_path):
    """A real sweep started (with its own Ray) from an environment holding secrets: none of their values in the
    runs' names, params, tags, metrics or artifacts, nor in any file under the results folder."""
    from mlflow import MlflowClient

    from tracking.runs import scan_for_secrets, secret_env_values
    from tracking.store import results_uri

    f = tmp_path / "sec.yaml"
    f.write_text(yaml.safe_dump(_spec("secrets", [0])))
    results = tmp_path / "res"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **SECRETS)
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-m", "sweeps.cli", "sweep", str(f), "--results", str(results)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    values = list(secret_env_values(SECRETS).values())
    assert sorted(values) == sorted(SECRETS.values())
    uri = results_uri(results)
    kids = _trial_runs(uri, "secrets")
    assert [r.info.status for r in kids] == ["FINISHED"]
    c = MlflowClient(uri)
    for exp in c.search_experiments():
        assert scan_for_secrets(uri, exp.experiment_id, values) == []
    leaked = [str(q) for q in results.rglob("*") if q.is_file()
              and any(v.encode() in q.read_bytes() for v in values)]
    assert not leaked and not any(v in p.stdout + p.stderr for v in values), leaked


def test_ui_binds_localhost_by_default(tmp_path, monkeypatch):
    """What `permsym ui` would start (Popen intercepted, nothing started): mlflow server on 127.0.0.1."""
    from mlflow import MlflowClient

    import sweeps.cli as cli
    from tracking.store import results_uri

    MlflowClient(results_uri(tmp_path)).search_experiments()         # creates mlflow.db
    assert (tmp_path / "mlflow.db").is_file()
    cmd = cli.ui_server_command(tmp_path)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    started = []

    class FakePopen:
        def __init__(self, args, **kw):
            started.append(list(args))

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    r = CliRunner().invoke(cli.main, ["ui", "--results", str(tmp_path), "--port", "5999"])
    assert r.exit_code == 0, r.output
    assert len(started) == 1
    argv = started[0]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5999"
    assert "0.0.0.0" not in " ".join(argv)


def test_nothing_disables_ray_token_auth():
    pattern = re.compile(r"RAY_AUTH_MODE" + r"""['"]?\s*[=:,]\s*['"]?disabled""", re.I)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    hits = []
    for name in files:
        p = ROOT / name
        if p.is_file() and p.stat().st_size < 2_000_000:
            for line in p.read_text(errors="ignore").splitlines():
                # tests asserting its absence, and the one checking that init_ray overrides it, are fine
                if pattern.search(line) and "assert" not in line and "auth-override-under-test" not in line:
                    hits.append(f"{name}: {line.strip()}")
    assert not hits, hits
    # the embedded Ray starts without a dashboard; the cluster config keeps token auth on
    assert 'include_dashboard=False' in (ROOT / "sweeps" / "ray_start.py").read_text()
    assert "RAY_AUTH_MODE=token" in (ROOT / "ray_cluster.yaml").read_text()


# The probe runs in its own process (the module's Ray is already up here): the sweep's own init_ray starts
# embedded Ray, then raw gRPC calls reach its GCS and raylet on the node's address (not loopback: Ray 2.60
# binds every interface and maps a 127.0.0.1 node address back to the node's IP, so loopback-only is not
# available); without Ray's token they must be refused, with it (Ray's own client metadata) answered.
_RAY_AUTH_PROBE = """
import json, sys, grpc, ray
sys.path.insert(0, sys.argv[1])
from sweeps.ray_start import init_ray
from ray.core.generated import gcs_service_pb2 as g, gcs_service_pb2_grpc as gg
from ray.core.generated import node_manager_pb2 as n, node_manager_pb2_grpc as ng
from ray._private.authentication.grpc_authentication_client_interceptor import (
    _get_authentication_metadata_tuple as token_metadata)
import os
passed = ("PERMSYM_PROBE_VAR", "AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")   # what init_ray sets for its Ray
init_ray(None, {"PERMSYM_PROBE_VAR": "from-the-sweep"})
env_restored = not [k for k in passed if k in os.environ]
ip = ray.util.get_node_ip_address()
node = [x for x in ray.nodes() if x["Alive"]][0]
gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
calls = {"gcs": (gg.NodeInfoGcsServiceStub, gcs_port, "GetAllNodeInfo", g.GetAllNodeInfoRequest()),
         "raylet": (ng.NodeManagerServiceStub, node["NodeManagerPort"], "GetNodeStats", n.GetNodeStatsRequest())}
out = {"ip": ip}
for name, (stub, port, method, req) in calls.items():
    call = getattr(stub(grpc.insecure_channel(f"{ip}:{port}")), method)
    for label, md in (("none", ()), ("wrong", (("authorization", "Bearer " + "0" * 64),)),
                      ("token", token_metadata())):
        try:
            call(req, timeout=20, metadata=md)
            out[f"{name}/{label}"] = "OK"
        except grpc.RpcError as e:
            out[f"{name}/{label}"] = e.code().name
# every other TCP listener of this Ray's own processes off loopback: an HTTP request without the token must
# not be answered 200 (401, or not HTTP at all: the gRPC servers above)
import psutil, urllib.request, urllib.error
procs = {c.pid for c in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
http = {}
for c in psutil.net_connections(kind="tcp"):
    if c.status != psutil.CONN_LISTEN or c.pid not in procs or c.laddr.ip.startswith("127.") or c.laddr.ip == "::1":
        continue
    try:
        with urllib.request.urlopen(f"http://{ip}:{c.laddr.port}/", timeout=5) as r:
            http[c.laddr.port] = r.status
    except urllib.error.HTTPError as e:
        http[c.laddr.port] = e.code
    except Exception as e:
        http[c.laddr.port] = type(e).__name__
out["http"] = http
# the sweep's variables reach its workers (through the raylet's environment), this process's is as before
out["worker_var"] = ray.get(ray.remote(lambda: os.environ.get("PERMSYM_PROBE_VAR")).remote())
out["env_restored"] = env_restored
ray.shutdown()
print("PROBE " + json.dumps(out))
"""


def test_embedded_ray_refuses_clients_without_its_token(tmp_path):
    # a shell that turned Ray's token off: the sweep refuses in one line before anything starts or is written
    spec = tmp_path / "open.yaml"
    spec.write_text(yaml.safe_dump(_spec("open", [0])))
    off = dict(os.environ, RAY_AUTH_MODE="disabled")             # auth-override-under-test
    r = subprocess.run([sys.executable, "-m", "sweeps.cli", "sweep", str(spec), "--results", str(tmp_path / "res")],
                       cwd=ROOT, env={**off, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: RAY_AUTH_MODE: expected unset or 'token'"), err
    assert not (tmp_path / "res").exists()
    # Ray's default for a local cluster, which the sweep's init_ray starts
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    r = subprocess.run([sys.executable, "-c", _RAY_AUTH_PROBE, str(ROOT)], capture_output=True, text=True,
                       timeout=180, env=env)
    line = [x for x in r.stdout.splitlines() if x.startswith("PROBE ")]
    assert r.returncode == 0 and line, (r.stdout[-2000:], r.stderr[-3000:])
    got = json.loads(line[0][6:])
    # got["ip"]: the node's address other hosts see (127.0.0.1 only on a machine without a network)
    for svc in ("gcs", "raylet"):
        assert got[f"{svc}/none"] == "UNAUTHENTICATED" and got[f"{svc}/wrong"] == "UNAUTHENTICATED", got
        assert got[f"{svc}/token"] == "OK", got
    assert len(got["http"]) >= 3, got                       # GCS, raylet, workers at least
    assert not [port for port, status in got["http"].items() if status == 200], got
    assert got["worker_var"] == "from-the-sweep" and got["env_restored"] is True, got


# --- 2. a node removed mid-sweep (last: it replaces the module's Ray with a cluster) ---------------------------

@pytest.mark.slow
def test_node_removed_mid_sweep_trials_rescheduled(local_ray, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from sweeps.plan import plan
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking.store import results_uri

    ray.shutdown()                                    # the module's local Ray: this test brings its own cluster
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
        head_id, worker_id = cluster.head_node.node_id, worker.node_id
        # the worker node must still be running its trial when it is removed: width-6 students with 3,000 Adam steps
        # compute 12-14 s after the trial's process starts (seeds 0-2, measured). Width 4 computes about 1.5 s
        # whatever adam_steps says (Adam stops at its plateau), and so does width 6 seed 0 with FAST's 200 steps:
        # the trial ended, FINISHED, between the remover's poll and the node's death (seen in CI).
        spec = load_spec(_spec("noderm", [0, 1, 2], widths=[(6,)], max_failures=2, grid={"adam_steps": 3000}))
        keys = {t.key for t in plan(spec)}
        uri = results_uri(tmp_path)
        removed: dict = {}
        errors: list[str] = []

        def remover():
            try:
                r = _poll_running(uri, "noderm", "trial_pid", time.time() + 240,
                                  lambda r: r.data.tags.get("node_id") == worker_id)
                if r is None:
                    errors.append("no trial ever ran on the second node")
                    return
                time.sleep(0.5)
                cluster.remove_node(worker)
                removed.update(key=r.data.tags["trial_key"], run_id=r.info.run_id)
            except Exception as e:
                errors.append(repr(e))

        th = threading.Thread(target=remover, daemon=True)
        th.start()
        out = io.StringIO()
        s = run_sweep(spec, results_dir=tmp_path, progress=True, stream=out)
        th.join(timeout=60)
        assert not errors and removed, (errors, out.getvalue()[-3000:])
        assert s["finished"] == 3 and s["errored"] == 0, out.getvalue()[-3000:]
        kids = _one_finished_per_key(uri, "noderm", keys)
        lost = next(r for r in kids if r.info.run_id == removed["run_id"])
        assert lost.info.status in ("KILLED", "FAILED"), lost.info.status
        again = [r for r in kids if r.data.tags["trial_key"] == removed["key"] and r.info.status == "FINISHED"]
        assert len(again) == 1 and again[0].data.tags["node_id"] == head_id
        assert [n["NodeID"] for n in ray.nodes() if n["Alive"]] == [head_id]
    finally:
        ray.shutdown()
        cluster.shutdown()
