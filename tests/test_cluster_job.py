"""The README's cluster job, for real on this machine: a Ray head started with the flags of ray_cluster.yaml's
head command (token authentication on, the dashboard and its job API on loopback), then the README's own
`ray job submit --address http://127.0.0.1:8265 --working-dir . -- permsym sweep ... --address auto` line
(read from README.md, only the port and the spec file substituted), run from the repository root.

What it checks: the job API refuses a request without Ray's token; the working directory is packaged without
.venv or .git; the job's `permsym` finds the head's MLFLOW_TRACKING_URI in the environment `ray start`
exported (the README says the job needs no --tracking-uri) and logs one FINISHED run per trial there; `ray job
submit` exits 0. The head is `ray start --block` in its own session, ended by its pid (its daemons end with it).
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures.mlflow_helpers import free_port, stop_session, sweep_runs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FAST = {"adam_steps": 200, "path_relax": False, "gamma_scan": False, "path_points": 5}
SEEDS = [0, 1]


def _yaml_head_flags(port: int, dashboard_port: int, temp_dir: Path) -> list[str]:
    """`ray start` flags of ray_cluster.yaml's head command, local ports and paths substituted."""
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    cmd = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    words = shlex.split(cmd.split("ray start", 1)[1])
    assert "--head" in words and "--dashboard-host=127.0.0.1" in words, words
    out = []
    for w in words:
        if w.startswith("--port="):
            w = f"--port={port}"
        elif w.startswith("--autoscaling-config"):   # the cluster launcher writes it; none on one machine
            continue
        out.append(w)
    # the agents' fixed default ports (52365, ...) may be held by another Ray on this machine (the other
    # test worker's): then the head's job agent never registers ("No available agent to submit job")
    agents = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
              f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
              f"--ray-client-server-port={free_port()}"]
    return out + agents + [f"--dashboard-port={dashboard_port}", "--num-cpus=2", f"--temp-dir={temp_dir}", "--block"]


def _readme_job_submit(dashboard_port: int, spec: Path) -> list[str]:
    """The README's `ray job submit` command line, with this head's dashboard port and our spec file."""
    text = (ROOT / "README.md").read_text()
    start = text.index("ray job submit --address http://127.0.0.1:8265")
    line = ""
    for part in text[start:].splitlines():
        line += " " + part.split("  #")[0].rstrip().rstrip("\\")
        if not part.rstrip().endswith("\\"):
            break
    words = shlex.split(line)
    assert words[:5] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265"], words
    assert words[5:7] == ["--working-dir", "."] and "--" in words and words[-2:] == ["--address", "auto"], words
    words[4] = f"http://127.0.0.1:{dashboard_port}"
    i = words.index("sweep")
    words[i + 1] = str(spec)
    return [str(Path(sys.executable).with_name("ray"))] + words[1:]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def test_readme_job_submit_runs_a_sweep_on_a_token_authenticated_head(tmp_path):
    # a short temp dir: Ray's unix sockets live under it (108-byte path limit)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))
    gcs_port, dash_port = free_port(), free_port()
    uri = f"sqlite:///{tmp_path}/head-mlflow.db"
    venv_bin = str(Path(sys.executable).parent)
    head_env = dict(os.environ, RAY_AUTH_MODE="token", MLFLOW_TRACKING_URI=uri, RAY_USAGE_STATS_ENABLED="0",
                    PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    log = tmp_path / "head.log"
    with log.open("w") as f:
        head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start",
                                 *_yaml_head_flags(gcs_port, dash_port, ray_tmp)],
                                env=head_env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(dash_port, head, log)
        # the job API without Ray's token: refused
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/api/jobs/", timeout=5)
                code = 200
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = None                              # the dashboard is still starting
            if code is not None or time.time() > deadline:
                break
            time.sleep(1)
        assert code == 401, code

        spec = tmp_path / "job.yaml"
        spec.write_text(yaml.safe_dump({"name": "job", "task": "toy", "resources": {"cpus": 1}, "max_failures": 1,
                                        "grid": {"widths": [[3]], "seeds": SEEDS, **FAST}}))
        cli_env = {k: v for k, v in head_env.items() if k != "MLFLOW_TRACKING_URI"}   # the job gets the head's
        # a head that has just started may not have its job agent registered yet: Ray answers "No available
        # agent to submit job, please try again later" (measured under load), so the submission is retried
        deadline = time.time() + 180
        while True:
            r = subprocess.run(_readme_job_submit(dash_port, spec), cwd=ROOT, env=cli_env, capture_output=True,
                               text=True, timeout=600)
            out = r.stdout + r.stderr
            if "No available agent to submit job" not in out or time.time() > deadline:
                break
            time.sleep(3)
        assert r.returncode == 0 and "succeeded" in out, out[-4000:]
        assert "sweep job: 2 planned, 0 already finished, 2 finished now, 0 failed, 0 errored" in out, out[-4000:]
        assert "Directory '.venv' is now ignored by default" in out, out[-4000:]     # not uploaded
        _c, runs = sweep_runs(uri, "job")
        kids = [x for x in runs if x.data.tags.get("trial_key")]
        assert sorted(int(x.data.params["seed"]) for x in kids if x.info.status == "FINISHED") == SEEDS, \
            [(x.data.tags.get("trial_key"), x.info.status) for x in kids]
    finally:
        stop_session(head, grace=60)
    # every Ray process of this head (they all carry its temp dir on their command line) has ended
    deadline = time.time() + 30
    while (left := subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True, text=True).stdout.split()) \
            and time.time() < deadline:
        time.sleep(1)
    assert not left, left
    shutil.rmtree(ray_tmp, ignore_errors=True)
