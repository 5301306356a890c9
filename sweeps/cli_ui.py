"""`permsym ui`: the MLflow UI on a results folder, and nothing left behind when it stops.

`mlflow server` starts uvicorn, which starts its workers: all of them run in a process group of their own
(started with a new session), and Ctrl-C, SIGTERM or SIGHUP to `permsym ui` ends that group (SIGTERM, then
SIGKILL after 20 s), by its id.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

UI_DEFAULT_HOST = "127.0.0.1"


def ui_server_command(results_dir, host: str = UI_DEFAULT_HOST, port: int = 5000) -> list[str]:
    """The `mlflow server` command line that `permsym ui` runs (bound to 127.0.0.1 unless asked otherwise)."""
    from tracking.store import artifact_root, results_uri

    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", results_uri(results_dir),
            "--default-artifact-root", artifact_root(results_dir).as_uri(), "--host", host, "--port", str(port)]


def experiment_url(base: str, experiment_id: str | None = None) -> str:
    """The UI's page for an experiment in the model-training view (runs table, nested children, metrics).

    MLflow 3.17's UI has a global GenAI / Model-training switch (default GenAI, kept in the browser's local
    storage) that wins over the experiment's `mlflow.experimentKind` tag; `?workflowType=machine_learning`
    sets it."""
    page = f"#/experiments/{experiment_id}" if experiment_id is not None else "#/experiments"
    return f"{base.rstrip('/')}/{page}?workflowType=machine_learning"


def end_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """End the process group led by `proc` (the server and every process it started): SIGTERM, up to
    `grace_s` for the leader to exit, then SIGKILL to whatever of the group is left."""
    def signal_group(sig) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    signal_group(signal.SIGKILL)
    proc.wait(timeout=10)


class _Stop(Exception):
    def __init__(self, signum: int):
        self.signum = signum


@click.command("ui")
@click.option("--results", "results_dir", default="./permsym-results", show_default=True,
              type=click.Path(file_okay=False), help="The results folder of a sweep.")
@click.option("--host", default=UI_DEFAULT_HOST, show_default=True,
              help="Interface to bind (127.0.0.1: this machine only; widen it explicitly).")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
def ui_cmd(results_dir, host, port) -> None:
    """Open the MLflow UI on a results folder (mlflow server, background job runner off)."""
    from tracking.store import server_env

    db = Path(results_dir).resolve() / "mlflow.db"
    if not db.is_file():
        raise click.UsageError(f"--results: expected a folder with mlflow.db (run `permsym sweep` first), "
                               f"got {results_dir}")
    cmd = ui_server_command(results_dir, host, port)
    click.echo(f"MLflow UI on {experiment_url(f'http://{host}:{port}')} (Ctrl-C to stop)")

    def stop(signum, _frame):
        raise _Stop(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    proc = None
    try:
        proc = subprocess.Popen(cmd, env=server_env(), start_new_session=True)
        rc = proc.wait()
    except KeyboardInterrupt:
        rc = 130
    except _Stop as e:
        rc = 128 + e.signum
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc is not None and hasattr(proc, "pid"):
            end_group(proc)                     # also when the server ended on its own: no worker outlives it
    sys.exit(rc)
