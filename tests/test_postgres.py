"""The path ray_cluster.yaml sets up, for real: PostgreSQL 15 -> `mlflow server --serve-artifacts` -> a sweep
on a two-node Ray cluster -> `permsym results`.

A PostgreSQL cluster is initialised in a temporary folder and run as an unprivileged user (tests/fixtures/
postgres.py), on a free loopback port with its unix socket in that folder and peer authentication, as on the
cluster's head. The `mlflow server` is started with the flags of the head's command in ray_cluster.yaml (read
from the file, so the two cannot drift apart) with local paths, ports and hosts substituted, behind MLflow's
basic-auth app configured by the head's own setup command (run as written, with HOME a temporary folder): a
request without the login, or with a wrong password, is refused with 401. The login reaches the Ray nodes as
MLFLOW_TRACKING_USERNAME/PASSWORD in their environment, as `ray start` exports it on the head and workers.
The sweep is the `permsym sweep` CLI joining a `ray.cluster_utils.Cluster` of two one-CPU nodes
(`--address`, as `ray job submit ... permsym sweep --address auto` does); `permsym status` and `results` then
read the server with the login in the environment, as the README's recipe does through its tunnel.
Everything started here is ended by its pid or data directory.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures.mlflow_helpers import free_port, stop_session
from fixtures.postgres import PostgresServer, unavailable_reason

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FAST = {"adam_steps": 200, "path_relax": False, "gamma_scan": False, "path_points": 5}
SEEDS = [0, 1, 2]


def _yaml_server_args() -> list[str]:
    """The arguments after `mlflow server` in ray_cluster.yaml's head start command."""
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    cmd = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    words = shlex.split(cmd.split("mlflow server", 1)[1].split(">", 1)[0])
    return words


def _flags(words: list[str]) -> dict[str, str | None]:
    out, i = {}, 0
    while i < len(words):
        w = words[i]
        assert w.startswith("--"), words
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            out[w] = words[i + 1]
            i += 2
        else:
            out[w] = None
            i += 1
    return out


def test_server_command_is_the_one_of_ray_cluster_yaml():
    """What the test below starts is the head's command: same flags, a PostgreSQL store over a unix socket."""
    flags = _flags(_yaml_server_args())
    assert set(flags) == {"--app-name", "--backend-store-uri", "--artifacts-destination", "--serve-artifacts",
                          "--host", "--port"}, flags
    assert flags["--backend-store-uri"] == "postgresql:///mlflow?host=/var/run/postgresql"
    assert flags["--serve-artifacts"] is None and flags["--app-name"] == "basic-auth"
    # the head installs the driver SQLAlchemy opens a plain postgresql:// URI with (psycopg 3 since 2.1;
    # with psycopg2 alone the server exits at start: "No module named 'psycopg'")
    from sqlalchemy.dialects import postgresql

    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    driver = postgresql.dialect.driver
    assert driver == "psycopg", driver
    assert '"psycopg[binary]' in "\n".join(cfg["head_setup_commands"])


def _server_cmd(pg: PostgresServer, artifacts: Path, port: int) -> list[str]:
    flags = _flags(_yaml_server_args())
    flags.update({"--backend-store-uri": pg.uri("mlflow"), "--artifacts-destination": str(artifacts),
                  "--host": "127.0.0.1", "--port": str(port)})
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server"]
    for k, v in flags.items():
        cmd += [k] if v is None else [k, v]
    return cmd


def _write_auth_config(home: Path, user: str, password: str) -> Path:
    """~/.permsym/mlflow.env as the README creates it, then the head's setup command that writes the ini."""
    (home / ".permsym").mkdir(parents=True)
    (home / ".permsym" / "mlflow.env").write_text(
        f"MLFLOW_TRACKING_USERNAME={user}\nMLFLOW_TRACKING_PASSWORD={password}\n")
    (home / "permsym-results").mkdir()
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    for cmd in cfg["head_setup_commands"]:
        if "mlflow-auth.ini" in cmd or "flask_secret_key" in cmd:
            subprocess.run(["bash", "-c", cmd], env=env, check=True, timeout=30)
    ini = home / "permsym-results" / "mlflow-auth.ini"
    for f in (ini, home / "permsym-results" / "flask_secret_key"):
        assert oct(f.stat().st_mode & 0o777) == "0o600", (f, oct(f.stat().st_mode))   # umask 077
    return ini


def _yaml_server_env(home: Path) -> dict[str, str]:
    """The variables the head's start command sets for `mlflow server`, evaluated as bash does, HOME = home."""
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    cmd = next(c for c in cfg["head_start_ray_commands"] if "mlflow server" in c)
    assigns = cmd.split("nohup mlflow server", 1)[0].rsplit(";", 1)[1].strip()
    names = [w.split("=", 1)[0] for w in shlex.split(assigns)]
    script = f"export {assigns}; " + "; ".join(f'printf "%s\\0" "${n}"' for n in names)
    out = subprocess.run(["bash", "-c", script], env={"HOME": str(home), "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return dict(zip(names, out.split("\0")[:-1]))


def _http_status(url: str, auth: tuple[str, str] | None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _wait_healthy(uri: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def test_sweep_on_two_nodes_into_postgres_backed_server(tmp_path, monkeypatch):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    import ray
    from mlflow import MlflowClient
    from ray.cluster_utils import Cluster

    from sweeps.plan import plan
    from sweeps.spec import load_spec
    from tracking import query
    from tracking.store import server_env

    pg = PostgresServer(free_port()).start()
    server = cluster = None
    log = tmp_path / "mlflow-server.log"
    try:
        pg.createdb("mlflow")
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        user, password = "permsym", secrets.token_urlsafe(24)
        ini = _write_auth_config(tmp_path / "home", user, password)
        env = server_env()
        env.pop("MLFLOW_TRACKING_URI", None)
        server_vars = _yaml_server_env(tmp_path / "home")
        assert server_vars["MLFLOW_AUTH_CONFIG_PATH"] == str(ini) and server_vars["MLFLOW_FLASK_SERVER_SECRET_KEY"]
        env.update(server_vars)
        with log.open("w") as f:
            server = subprocess.Popen(_server_cmd(pg, tmp_path / "artifacts", port), stdout=f,
                                      stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
        _wait_healthy(uri, server, log)
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _http_status(search, None) == 401 and _http_status(search, (user, "wrong")) == 401
        assert _http_status(search, (user, password)) == 200
        # the login in the environment of every Ray node and of the driver, never in a URI
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

        if ray.is_initialized():                    # another module's Ray in this process: not ours to keep
            ray.shutdown()
        cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 1, "include_dashboard": False})
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        node_ids = {cluster.head_node.node_id, worker.node_id}

        d = {"name": "pg", "task": "toy", "grid": {"widths": [[3]], "seeds": SEEDS, **FAST},
             "resources": {"cpus": 1}, "max_failures": 1}
        spec_file = tmp_path / "pg.yaml"
        spec_file.write_text(yaml.safe_dump(d))
        keys = {t.key for t in plan(load_spec(spec_file))}
        drv_env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
        drv_env.pop("MLFLOW_TRACKING_URI", None)
        drv = subprocess.run([sys.executable, "-m", "sweeps.cli", "sweep", str(spec_file), "--quiet",
                              "--address", cluster.address, "--tracking-uri", uri,
                              "--results", str(tmp_path / "res")],
                             cwd=ROOT, env=drv_env, capture_output=True, text=True, timeout=400)
        assert drv.returncode == 0, (drv.stdout[-3000:], drv.stderr[-3000:])
        assert not (tmp_path / "res" / "mlflow.db").exists()          # everything went to the server

        # the database itself: one parent and one FINISHED trial run per key, in PostgreSQL
        n_fin = pg.sql("mlflow", "select count(*) from runs where status = 'FINISHED'")
        assert int(n_fin) == len(SEEDS) + 1
        n_trials = pg.sql("mlflow", "select count(*) from tags where key = 'permsym.role' and value = 'trial'")
        assert int(n_trials) == len(SEEDS)

        rdf = query.runs("pg", tracking_uri=uri)
        assert sorted(rdf["trial_key"]) == sorted(keys) and sorted(rdf["seed"]) == SEEDS
        conv = rdf[rdf["converged"]]
        assert len(conv) >= 1, rdf[["trial_key", "failure_reason"]]
        nodes = {rec["worker"]["node_id"] for rec in query.records(list(rdf["run_id"]), uri).values()}
        assert nodes == node_ids, (nodes, node_ids)                  # trials ran on both nodes
        # artifacts went through the server into --artifacts-destination
        c = MlflowClient(uri)
        assert all(c.get_run(r).info.artifact_uri.startswith("mlflow-artifacts:") for r in rdf["run_id"])
        assert len(list((tmp_path / "artifacts").rglob("trial_record.json"))) == len(SEEDS)
        pts = query.points("pg", tracking_uri=uri)
        assert len(pts) == int(conv["n_points"].sum()) and set(pts["run_id"]) <= set(conv["run_id"])

        res = subprocess.run([sys.executable, "-m", "sweeps.cli", "results", "--sweep", "pg", "--tracking-uri", uri,
                              "--format", "json"], cwd=ROOT, env=drv_env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        rows = json.loads(res.stdout)
        assert rows and all(r["widths"] == [3] and r["n_trials"] == len(SEEDS) for r in rows)
        assert {r["n_seeds"] for r in rows} == {len(conv)}
        st = subprocess.run([sys.executable, "-m", "sweeps.cli", "status", "pg", "--tracking-uri", uri],
                            cwd=ROOT, env=drv_env, capture_output=True, text=True, timeout=120)
        assert st.returncode == 0 and f"planned {len(SEEDS)}, finished {len(SEEDS)}" in st.stdout, (st.stdout, st.stderr[-2000:])
        assert password not in st.stdout + st.stderr + drv.stdout + drv.stderr + res.stdout + res.stderr
    finally:
        if cluster is not None:
            cluster.shutdown()
        if server is not None:
            stop_session(server)          # the server's own session: it and its workers
        pg.stop()

