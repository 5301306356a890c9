"""The cockpit commands of `permsym`: `status`, `sweeps`, and `sweep --dry-run` (what a sweep would do).

Everything here reads the store only (SQLite file or tracking server), so it works from another terminal or
machine while a sweep runs. `sweeps.cli` attaches the commands to the `permsym` group.
"""
from __future__ import annotations

import math
import os

import click

from .cost import MODEL_OVERHEAD_S, model_trial_s


def _store_options(f):
    f = click.option("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the results folder).")(f)
    f = click.option("--results", default=None, type=click.Path(file_okay=False),
                     help="Results folder of the SQLite store (default: ./permsym-results).")(f)
    return f


def _uri(results, tracking_uri) -> str:
    from tracking.query import resolve_tracking_uri
    from tracking.store import clean_uri

    return clean_uri(resolve_tracking_uri(tracking_uri, results))


def _results_dir(results, uri: str):
    """The folder whose spool to count: --results, else the SQLite store's folder (None for a server)."""
    from tracking.store import sqlite_path

    if results is not None:
        return results
    db = sqlite_path(uri)
    return db.parent if db is not None else None


def _need_store(uri: str) -> None:
    from tracking.store import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise click.UsageError(f"no results store at {db} (run a sweep first, or pass --results / --tracking-uri)")


@click.command("sweeps")
@_store_options
def sweeps_cmd(results, tracking_uri) -> None:
    """The sweeps in a store: state (RUNNING while the driver runs), planned, finished, running, failed."""
    from tracking import status
    from tracking.runs import TrackingUnavailable

    uri = _uri(results, tracking_uri)
    _need_store(uri)
    try:
        rows = status.sweeps(uri)
    except TrackingUnavailable as e:
        raise click.ClickException(str(e)) from None
    click.echo(status.format_sweeps(rows))


@click.command("status")
@click.argument("sweep", required=False)
@_store_options
def status_cmd(sweep, results, tracking_uri) -> None:
    """What SWEEP (default: the newest sweep) is doing: finished, running (host, pids, phase), failed with
    their reasons, pending, spooled records and an estimate of the time left."""
    from tracking import status
    from tracking.runs import TrackingUnavailable

    uri = _uri(results, tracking_uri)
    _need_store(uri)
    try:
        found = status.status(uri, sweep, _results_dir(results, uri))
    except TrackingUnavailable as e:
        raise click.ClickException(str(e)) from None
    if not found:
        raise click.UsageError(f"SWEEP: no sweep named {sweep!r} in this store (`permsym sweeps` lists them)"
                               if sweep else "no sweeps in this store")
    click.echo("\n".join(status.format_status(s) for s in found))


# --- sweep --dry-run ------------------------------------------------------------------------------------

def _measured_times(uri: str) -> dict[tuple, float]:
    """Mean `time_total` of FINISHED trial runs in the store, by (task, activation, widths)."""
    from mlflow import MlflowClient

    from tracking import runs

    out: dict[tuple, list[float]] = {}
    exps = [e.experiment_id for e in MlflowClient(uri).search_experiments()]
    for r in runs.search_all(uri, exps, f"{runs._role_filter(runs.TRIAL_ROLE)} and attributes.status = 'FINISHED'"):
        t = r.data.metrics.get("time_total")
        p = r.data.params
        if t is not None and math.isfinite(t):
            out.setdefault((p.get("task"), p.get("activation"), p.get("widths")), []).append(float(t))
    return {k: sum(v) / len(v) + MODEL_OVERHEAD_S for k, v in out.items()}


def dry_run(spec, tracking_uri: str, results_dir) -> str:
    """What `permsym sweep SPEC` would do, as text; starts nothing and writes nothing (no store is created)."""
    from tracking import runs
    from tracking.store import redact_uri, sqlite_path

    from .plan import plan
    from .spec_checks import task_dims

    planned = plan(spec)
    done: set[str] = set()
    measured: dict[tuple, float] = {}
    db = sqlite_path(tracking_uri)
    store_note = "no store yet" if db is not None and not db.exists() else ""
    if not store_note:
        from mlflow import MlflowClient

        with runs._guard(tracking_uri):
            exp = MlflowClient(tracking_uri).get_experiment_by_name(spec.experiment_name)
            if exp is not None:
                done = runs.finished_keys(tracking_uri, exp.experiment_id, spec.name)
            measured = _measured_times(tracking_uri)
    n_in, n_out, default_bias = task_dims(spec.task, spec.task_options)
    lines = [f"sweep {spec.name} (dry run: nothing started, nothing written); store {redact_uri(tracking_uri)}"
             + (f" ({store_note})" if store_note else ""),
             f"{'key':12}  {'trial':44} {'state':9} {'est. s':>7}  source"]
    todo_s, n_model = 0.0, 0
    for t in planned:
        c = t.config
        key = (c["task"], c["activation"], ",".join(map(str, c["widths"])))
        if key in measured:
            est, src = measured[key], "measured"
        else:
            bias = default_bias if c.get("bias") is None else bool(c["bias"])
            est, src = model_trial_s(c, n_in, n_out, bias), "model"
        state = "done" if t.key in done else "to run"
        if state == "to run":
            todo_s += est
            n_model += src == "model"
        lines.append(f"{t.key[:12]}  {t.label()[:44]:44} {state:9} {est:7.1f}  {src}")
    n_todo = sum(t.key not in done for t in planned)
    slots = max(1, int((os.cpu_count() or 1) // max(spec.resources.cpus, 1e-9)))
    if spec.max_concurrent:
        slots = min(slots, spec.max_concurrent)
    if spec.search.kind == "optuna":
        n = spec.search.n_trials or len(planned)
        lines.append(f"optuna search: {n} trials drawn from the {len(planned)} above")
    lines.append(f"{len(planned)} planned, {len(planned) - n_todo} already done, {n_todo} to run; estimated "
                 f"cost {todo_s / 3600:.2f} trial-hours ({todo_s * spec.resources.cpus / 3600:.2f} CPU-hours), about "
                 f"{todo_s / min(slots, max(n_todo, 1)) / 60:.1f} min on this machine ({slots} at once)"
                 + (f"; {n_model} estimate(s) from the toy-task model of BENCHMARKS.md (rough)" if n_model else ""))
    return "\n".join(lines)
