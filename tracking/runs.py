"""One MLflow child run per trial, under one parent run per sweep.

Every function takes the tracking URI explicitly and uses `MlflowClient(tracking_uri)`, never MLflow's
global active run, so one worker process can log trials of different sweeps and stores.

Run layout
- parent: tags `sweep`, `permsym.role=parent`, `planned`, `driver_host`, `driver_pid`; artifact
  `sweep_spec.json`; RUNNING while its sweep's driver runs, then FINISHED, FAILED or KILLED; reused by a relaunch.
- child: tags `mlflow.parentRunId`, `trial_key`, `sweep`, `code_version`, `attempt`, `permsym.role=trial`,
  `converged`, `failure_reason` (when it failed or did not converge), `phase` (while RUNNING: what the trial is
  doing, e.g. `reduced L1K1 3/6`), `worker_pid`, `trial_pid`, `hostname`, `node_id`; params: the trial config flattened
  (lists joined with ","); metrics: see `record_metrics`; artifacts: `trial_record.json`, `points.json`
  (an MLflow table: `mlflow.load_table("points.json", run_ids=...)` stacks all runs), `figures/*.png`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .store import is_http, redact_uri

PARENT_ROLE = "parent"
TRIAL_ROLE = "trial"
ROLE_TAG = "permsym.role"
RECORD_ARTIFACT = "trial_record.json"
POINTS_ARTIFACT = "points.json"
SPEC_ARTIFACT = "sweep_spec.json"

# Dead-server detection: MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) take minutes to
# give up on a stopped server. permsym's calls use these unless the user set the variables.
# Also keeps worker logs quiet (no "View run ... at" line per ended run, no progress bar per download).
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                 "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

_UNAVAILABLE_PATTERNS = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                         "timeout exception", "Connection aborted", "RemoteDisconnected", "Connection reset",
                         "NewConnectionError", "Read timed out", "ConnectionError")


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached (spool the record and `sync` later)."""


def _is_unavailable(exc: BaseException) -> bool:
    import requests

    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
            return True
        if any(p in str(e) for p in _UNAVAILABLE_PATTERNS):
            return True
        e = e.__cause__ or e.__context__
    return False


def redact_uri_text(text: str, tracking_uri: str) -> str:
    """text with the URI (and its user:password@) replaced by the redacted URI."""
    from .store import split_credentials

    clean, creds = split_credentials(tracking_uri)
    text = text.replace(str(tracking_uri), redact_uri(tracking_uri))
    return text.replace(creds.get("MLFLOW_TRACKING_PASSWORD", "\0"), "***") if creds else text


def server_guard(tracking_uri: str):
    """Public form of _guard: a dead server raises TrackingUnavailable (one line in the CLI)."""
    return _guard(tracking_uri)


@contextlib.contextmanager
def _guard(tracking_uri: str):
    """Fast failure against a dead server, and TrackingUnavailable for connection errors."""
    if not is_http(tracking_uri):
        yield
        return
    saved = {k: os.environ.get(k) for k in FAST_FAIL_ENV}
    for k, v in FAST_FAIL_ENV.items():
        if saved[k] is None:
            os.environ[k] = v
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as e:
        if _is_unavailable(e):
            detail = redact_uri_text(str(e).splitlines()[0][:300], tracking_uri)
            raise TrackingUnavailable(f"tracking server {redact_uri(tracking_uri)} unreachable: {detail}") from e
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def _q(value: str) -> str:
    """A string literal for an MLflow filter string."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def search_all(tracking_uri: str, experiment_ids: Iterable[str], filter_string: str = "",
               order_by: list[str] | None = None) -> list:
    """Every active run matching the filter (pages through the results 1000 at a time)."""
    from mlflow.entities import ViewType

    c = client(tracking_uri)
    out, token = [], None
    exp = list(experiment_ids)
    if not exp:
        return out
    while True:
        page = c.search_runs(exp, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                             max_results=1000, order_by=order_by, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


# --- what gets logged --------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout permsym runs from, else the installed package version."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if re.fullmatch(r"[0-9a-f]{40}", sha):
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha[:12] + ("-dirty" if dirty else "")
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return "permsym-" + version("permsym")
    except Exception:
        return "unknown"


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_param_value(x) for x in v)
    if v is None:
        return "None"
    return str(v)


def flatten_config(config: dict, prefix: str = "") -> dict[str, str]:
    """Config -> MLflow params: nested mappings become dotted keys, lists "4,3" (readable in the UI)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if v:
                out.update(flatten_config(v, key + "."))
            else:
                out[key] = "{}"
        else:
            out[key] = _param_value(v)[:6000]
    return out


def as_record(record: Any) -> dict:
    """Accept the record as a dict, or an object with to_dict() / a dataclass (TrialResult)."""
    if isinstance(record, dict):
        return record
    if hasattr(record, "to_dict"):
        return record.to_dict()
    import dataclasses

    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    raise TypeError(f"trial record: expected a dict, got {type(record).__name__}")


def record_converged(record: dict) -> bool:
    return bool((record.get("minimum") or {}).get("converged")) and not record.get("failure")


def failure_reason(record: dict) -> str | None:
    if record.get("failure"):
        return _one_line(str(record["failure"]))
    if not record_converged(record):
        m = record.get("minimum") or {}
        return _one_line(f"minimum did not converge (|grad|_inf={m.get('grad_inf')})")
    return None


def _one_line(s: str, limit: int = 500) -> str:
    s = " ".join(str(s).split())
    return s[:limit]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def count_prefix(layer, order) -> str:
    return f"L{int(layer)}_K{int(order)}_"


COUNT_FIELDS = ("log10_bound", "n_found", "n_critical", "n_saddle", "n_first_order", "log10_critical",
                "log10_saddle", "log10_first_order", "n_pair_sets", "n_not_converged", "n_channel", "n_reduced",
                "n_reduced_irreducible", "n_reducible", "n_undetermined", "n_uncertified", "n_ambiguous",
                "n_points_reducible")


def record_metrics(record: dict) -> dict[str, float]:
    """The trial's scalars as MLflow metrics (non-finite and missing values are left out).

    minimum_{loss,grad_inf,index,n_zero}, minimum_channel (1/0: the minimisation ended along a channel to
    infinity), minimum_certified (1/0: a converged trial whose theta* is a certified minimum), n_params, log10_minima, n_points, n_reduced, converged (1/0),
    arch_depth (number of hidden layers), arch_width_{min,max,sum}, time_<phase>, L<k>_barrier (highest
    path barrier of layer k) and, for converged trials only, the counts per layer and order
    L<k>_K<K>_{log10_bound, n_found, n_critical, n_saddle, n_first_order, log10_critical, log10_saddle,
    log10_first_order, frac_first_order, n_pair_sets, n_not_converged, n_reduced, n_reduced_irreducible,
    n_reducible, n_undetermined, n_uncertified, n_ambiguous, n_points_reducible} (permsym_core.counting: counts of irreducible
    points only; saddles certified by escape). Unconverged trials log no counts: they count nowhere.
    """
    m: dict[str, float] = {}
    mini = record.get("minimum") or {}
    for k in ("loss", "grad_inf", "index", "n_zero"):
        m[f"minimum_{k}"] = mini.get(k)
    m["n_params"] = mini.get("n_params")
    m["log10_minima"] = record.get("log10_minima")
    m["n_points"] = len(record.get("points") or [])
    m["n_reduced"] = len(record.get("reduced") or [])
    conv = record_converged(record)
    m["converged"] = 1.0 if conv else 0.0
    m["minimum_channel"] = 1.0 if mini.get("stop_reason") == "channel" else 0.0
    m["minimum_certified"] = 1.0 if (conv and mini.get("is_minimum")) else 0.0
    widths = [int(w) for w in (record.get("config") or {}).get("widths") or []]
    if widths:
        m["arch_depth"] = len(widths)
        m["arch_width_min"] = min(widths)
        m["arch_width_max"] = max(widths)
        m["arch_width_sum"] = sum(widths)
    for phase, t in (record.get("timings") or {}).items():
        m[f"time_{phase}"] = t
    for p in record.get("paths") or []:
        key = f"L{int(p.get('layer', 0))}_barrier"
        b = p.get("barrier")
        if _finite(b):
            m[key] = max(b, m.get(key, -math.inf))
    if conv:
        for c in record.get("counts") or []:
            pre = count_prefix(c["layer"], c["order"])
            for f in COUNT_FIELDS:
                m[pre + f] = c.get(f)
            if c.get("n_saddle"):
                m[pre + "frac_first_order"] = c.get("n_first_order", 0) / c["n_saddle"]
    return {k: float(v) for k, v in m.items() if _finite(v)}


def points_frame(record: dict):
    """The per-point table: one row per permutation point (without saved parameters)."""
    import pandas as pd

    rows = []
    for i, p in enumerate(record.get("points") or []):
        row = {k: v for k, v in p.items() if k not in ("params", "escape")}
        esc = p.get("escape")
        if "escape" in p:     # schema >= 2: the escape test flattened (its per-direction rows stay in the record)
            row["escape_certified"] = esc.get("certified") if esc else None
            row["escape_n_checked"] = esc.get("n_checked") if esc else None
            row["escape_worst_rel_err"] = esc.get("worst_rel_err") if esc else None
        row["point_id"] = i
        rows.append(row)
    return pd.DataFrame(rows)


def points_table_json(record: dict) -> str:
    """The per-point table in MLflow's table format (pandas "split" orient without index), written with
    json.dumps so floats keep every digit (log_table's to_json keeps 10 significant digits) and NaN is null."""
    df = points_frame(record)

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    data = [[clean(v) for v in row] for row in df.astype(object).itertuples(index=False, name=None)]
    return json.dumps({"columns": list(df.columns), "data": data}, default=str)


def run_name_for(config: dict, attempt: int | None = None) -> str:
    w = "x".join(str(x) for x in config.get("widths") or [])
    name = f"{config.get('task', 'trial')}-w{w}-{config.get('activation', '')}-s{config.get('seed', '')}"
    return name if not attempt or int(attempt) <= 1 else f"{name}-a{attempt}"


# --- the sweep's parent run ----------------------------------------------------------------------------

def _role_filter(role: str) -> str:
    return f"tags.`{ROLE_TAG}` = {_q(role)}"


def find_parent(tracking_uri: str, experiment_id: str, sweep_name: str) -> str | None:
    with _guard(tracking_uri):
        found = search_all(tracking_uri, [experiment_id],
                           f"tags.sweep = {_q(sweep_name)} and {_role_filter(PARENT_ROLE)}",
                           order_by=["attributes.start_time ASC"])
    return found[0].info.run_id if found else None


def get_or_create_parent(tracking_uri: str, experiment_id: str, sweep_name: str, spec_dict: dict, *,
                         running: bool = False, tags: dict | None = None) -> str:
    """The sweep's parent run; a relaunch reuses it and refreshes `sweep_spec.json`.

    running=False (logging outside a sweep): created FINISHED. running=True (a sweep's driver): the run is
    left (or set back to) RUNNING until `end_parent`, so the UI shows the sweep as running while it runs.
    `tags` (e.g. driver_host, driver_pid, planned) are set on the run either way."""
    from mlflow.entities import RunStatus, RunTag

    with _guard(tracking_uri):
        run_id = find_parent(tracking_uri, experiment_id, sweep_name)
        c = client(tracking_uri)
        if run_id is None:
            run = c.create_run(experiment_id, run_name=sweep_name,
                               tags={"sweep": sweep_name, ROLE_TAG: PARENT_ROLE, "code_version": code_version(),
                                     "mlflow.note.content": f"permsym sweep `{sweep_name}`: one child run per trial."})
            run_id = run.info.run_id
            if not running:
                c.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        elif running:
            c.update_run(run_id, status="RUNNING")
        if tags:
            c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        c.log_dict(run_id, _jsonable(spec_dict), SPEC_ARTIFACT)
    return run_id


def end_parent(tracking_uri: str, run_id: str, status: str) -> None:
    """End the sweep's parent run: FINISHED, FAILED (trials failed or errored) or KILLED (interrupted)."""
    with _guard(tracking_uri):
        client(tracking_uri).set_terminated(run_id, status)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


# --- trial runs ------------------------------------------------------------------------------------------

def _trial_filter(sweep_name: str, extra: str = "") -> str:
    f = f"tags.sweep = {_q(sweep_name)} and {_role_filter(TRIAL_ROLE)}"
    return f"{f} and {extra}" if extra else f


def finished_keys(tracking_uri: str, experiment_id: str, sweep_name: str) -> set[str]:
    """Trial keys of this sweep that have a FINISHED run (converged or not: both are recorded outcomes)."""
    with _guard(tracking_uri):
        found = search_all(tracking_uri, [experiment_id], _trial_filter(sweep_name, "attributes.status = 'FINISHED'"))
    return {r.data.tags["trial_key"] for r in found if "trial_key" in r.data.tags}


def _kill_running(tracking_uri: str, experiment_id: str, sweep_name: str, trial_key: str | None = None) -> list[str]:
    extra = "attributes.status = 'RUNNING'"
    if trial_key is not None:
        extra += f" and tags.trial_key = {_q(trial_key)}"
    c = client(tracking_uri)
    killed = []
    for r in search_all(tracking_uri, [experiment_id], _trial_filter(sweep_name, extra)):
        c.set_tag(r.info.run_id, "failure_reason", "attempt abandoned (worker or driver stopped); marked KILLED")
        c.set_terminated(r.info.run_id, "KILLED")
        killed.append(r.info.run_id)
    return killed


def start_trial_run(tracking_uri: str, experiment_id: str, parent_run_id: str, sweep_name: str, trial_key: str,
                    config_dict: dict, attempt: int = 1) -> str:
    """Open the trial's child run (RUNNING) after marking any RUNNING run of the same key KILLED."""
    from mlflow.entities import Param

    with _guard(tracking_uri):
        _kill_running(tracking_uri, experiment_id, sweep_name, trial_key)
        c = client(tracking_uri)
        tags = {"mlflow.parentRunId": parent_run_id, "trial_key": trial_key, "sweep": sweep_name,
                "code_version": code_version(), "attempt": str(attempt), ROLE_TAG: TRIAL_ROLE}
        run = c.create_run(experiment_id, run_name=run_name_for(config_dict, attempt), tags=tags)
        params = [Param(k, v) for k, v in flatten_config(config_dict).items()]
        if params:
            c.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def finish_trial_run(tracking_uri: str, run_id: str, record: Any, *, figures: bool = True) -> None:
    """Log the record (metrics, tags, JSON, points table, figures) and end the run FINISHED.

    A record that did not converge (or carries `failure`) also ends FINISHED, tagged `converged=false` and
    `failure_reason`, and is excluded from every count downstream. Raises TrackingUnavailable when the
    server cannot be reached (the caller spools the record, see tracking.spool). `figures=False` skips
    the PNGs (they cost about half of the logging time).
    """
    from mlflow.entities import Metric, RunTag

    record = as_record(record)
    conv = record_converged(record)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in record_metrics(record).items()]
    tags = [RunTag("converged", "true" if conv else "false"), RunTag("phase", "done"),
            RunTag("schema_version", str(record.get("schema_version", "")))]
    reason = failure_reason(record)
    if reason:
        tags.append(RunTag("failure_reason", reason))
    if conv and record.get("points"):
        # what MlflowClient.log_table records, so that mlflow.load_table and the UI find the table
        tags.append(RunTag("mlflow.loggedArtifacts", json.dumps([{"path": POINTS_ARTIFACT, "type": "table"}])))
    with _guard(tracking_uri):
        c = client(tracking_uri)
        c.log_batch(run_id, metrics=metrics, tags=tags)
        with tempfile.TemporaryDirectory(prefix="permsym-log-") as tmp:
            tmp = Path(tmp)
            (tmp / RECORD_ARTIFACT).write_text(json.dumps(record, default=str))
            if figures:
                (tmp / "figures").mkdir()
                from .figures import save_png, trial_figures

                for name, fig in trial_figures(record).items():
                    save_png(fig, tmp / name)
            if conv and record.get("points"):
                (tmp / POINTS_ARTIFACT).write_text(points_table_json(record))
            c.log_artifacts(run_id, str(tmp))
        c.set_terminated(run_id, "FINISHED")


def fail_trial_run(tracking_uri: str, run_id: str, reason: str) -> None:
    """End the run FAILED with a one-line `failure_reason` tag."""
    from mlflow.entities import RunTag

    with _guard(tracking_uri):
        c = client(tracking_uri)
        c.log_batch(run_id, tags=[RunTag("failure_reason", _one_line(reason)), RunTag("converged", "false"),
                                  RunTag("phase", "failed")])
        c.set_terminated(run_id, "FAILED")


def close_orphans(tracking_uri: str, experiment_id: str, sweep_name: str) -> list[str]:
    """Mark this sweep's trial runs still RUNNING as KILLED (after a crash or an interrupted driver)."""
    with _guard(tracking_uri):
        return _kill_running(tracking_uri, experiment_id, sweep_name)


def log_trial(tracking_uri: str, experiment_id: str, parent_run_id: str, sweep_name: str, trial_key: str,
              record: Any, attempt: int = 1, *, figures: bool = True) -> str:
    """start_trial_run + finish_trial_run in one call (for a record already computed). Returns the run id."""
    record = as_record(record)
    run_id = start_trial_run(tracking_uri, experiment_id, parent_run_id, sweep_name, trial_key,
                             record.get("config") or {}, attempt)
    finish_trial_run(tracking_uri, run_id, record, figures=figures)
    return run_id


# --- secrets -----------------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE)", re.I)


def secret_env_values(environ: dict | None = None, min_len: int = 6) -> dict[str, str]:
    """Environment variables named like secrets, with values long enough to search for."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if SECRET_NAME.search(k) and v and len(v) >= min_len}


def scan_for_secrets(tracking_uri: str, experiment_id: str, values: Iterable[str]) -> list[str]:
    """Where any of `values` occurs in the experiment's run names, params, tags or text artifacts.

    Returns one "run_id: where" line per finding (empty: nothing leaked).
    """
    values = [v for v in values if v]
    if not values:
        return []
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    c = client(tracking_uri)
    findings = []
    for r in search_all(tracking_uri, [experiment_id]):
        rid = r.info.run_id
        fields = [("run_name", r.info.run_name or "")]
        fields += [(f"param {k}", v) for k, v in r.data.params.items()]
        fields += [(f"tag {k}", v) for k, v in r.data.tags.items()]
        fields += [(f"metric {k}", k) for k in r.data.metrics]
        for where, text in fields:
            if any(v in str(text) for v in values):
                findings.append(f"{rid}: {where}")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(c.download_artifacts(rid, "", tmp))
            for f in local.rglob("*"):
                if f.is_file():
                    data = f.read_bytes()
                    if any(v.encode() in data for v in values):
                        findings.append(f"{rid}: artifact {f.relative_to(local)}")
    return findings
