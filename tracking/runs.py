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
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from .metrics import COUNT_FIELDS, count_prefix, record_converged, record_metrics  # noqa: F401  (re-exported)
from .record import (_one_line, as_record, code_version, failure_reason, flatten_config,  # noqa: F401
                     points_frame, points_table_json, run_name_for)
from .filters import PARENT_ROLE, ROLE_TAG, TRIAL_ROLE, _q, _role_filter, _trial_filter  # noqa: F401
from .run_end import _check_open, _end_finished, _order, _settle_finished  # noqa: F401  (re-exported)
from .environ import environ_set
from .store import is_http, redact_uri

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
    try:
        with environ_set(FAST_FAIL_ENV, keep_existing=True):
            yield
    except TrackingUnavailable:
        raise
    except Exception as e:
        if _is_unavailable(e):
            detail = redact_uri_text(str(e).splitlines()[0][:300], tracking_uri)
            raise TrackingUnavailable(f"tracking server {redact_uri(tracking_uri)} unreachable: {detail}") from e
        raise


def client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


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


# --- the sweep's parent run ----------------------------------------------------------------------------

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

def finished_keys(tracking_uri: str, experiment_id: str, sweep_name: str) -> set[str]:
    """Trial keys of this sweep that have a FINISHED run (converged or not: both are recorded outcomes)."""
    with _guard(tracking_uri):
        found = search_all(tracking_uri, [experiment_id], _trial_filter(sweep_name, "attributes.status = 'FINISHED'"))
    return {r.data.tags["trial_key"] for r in found if "trial_key" in r.data.tags}


def _kill_running(tracking_uri: str, experiment_id: str, sweep_name: str, trial_key: str | None = None,
                  owner=None, mine_gone: bool = False) -> list[str]:
    """KILL the RUNNING trial runs (of one key, or of the sweep) whose owner is gone as seen by `owner`
    (tracking.owner.owner_alive): runs of a live driver are left alone."""
    from .owner import owner_alive

    extra = "attributes.status = 'RUNNING'"
    if trial_key is not None:
        extra += f" and tags.trial_key = {_q(trial_key)}"
    c = client(tracking_uri)
    killed = []
    now = time.time()
    for r in search_all(tracking_uri, [experiment_id], _trial_filter(sweep_name, extra)):
        if owner_alive(r.data.tags, owner, now, mine_gone=mine_gone):
            continue
        c.set_tag(r.info.run_id, "failure_reason", "attempt abandoned (worker or driver stopped); marked KILLED")
        c.set_terminated(r.info.run_id, "KILLED")
        killed.append(r.info.run_id)
    return killed


def start_trial_run(tracking_uri: str, experiment_id: str, parent_run_id: str, sweep_name: str, trial_key: str,
                    config_dict: dict, attempt: int = 1, *, tags: dict | None = None, kill_dead: bool = True) -> str:
    """Open the trial's child run (RUNNING), with extra `tags` (its owner: tracking.owner). kill_dead: first
    mark KILLED the RUNNING runs of the key whose owner is gone (tracking.sweepstore.SweepStore.claim does
    that itself, after creating its run)."""
    from mlflow.entities import Param

    with _guard(tracking_uri):
        if kill_dead:
            _kill_running(tracking_uri, experiment_id, sweep_name, trial_key)
        c = client(tracking_uri)
        all_tags = {"mlflow.parentRunId": parent_run_id, "trial_key": trial_key, "sweep": sweep_name,
                    "code_version": code_version(), "attempt": str(attempt), ROLE_TAG: TRIAL_ROLE}
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run = c.create_run(experiment_id, run_name=run_name_for(config_dict, attempt), tags=all_tags)
        params = [Param(k, v) for k, v in flatten_config(config_dict).items()]
        if params:
            c.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def finish_trial_run(tracking_uri: str, run_id: str, record: Any, *, figures: bool = True, claims=None) -> None:
    """Log the record (metrics, tags, JSON, points table, figures) and end the run FINISHED.

    Only a RUNNING run whose key has no FINISHED run yet is ended FINISHED; otherwise RunClosed
    (tracking.owner) is raised (a KILLED or FAILED run never becomes FINISHED): without a claims table
    before anything is logged; with one (`claims`, SQLite stores) the key's checks run once after the upload, in
    the table's lock, so a run that loses there keeps its uploaded record but ends KILLED.

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
        if claims is None:
            _check_open(c, run_id)
        elif c.get_run(run_id).info.status != "RUNNING":     # the key's checks run once, in the table lock
            from .owner import RunClosed

            raise RunClosed(f"run {run_id} is not RUNNING: not ending it FINISHED")
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
        _end_finished(c, run_id, claims)


def fail_trial_run(tracking_uri: str, run_id: str, reason: str) -> None:
    """End the run FAILED with a one-line `failure_reason` tag (a run that already ended is left as it is)."""
    from mlflow.entities import RunTag

    with _guard(tracking_uri):
        c = client(tracking_uri)
        if c.get_run(run_id).info.status != "RUNNING":
            return
        c.log_batch(run_id, tags=[RunTag("failure_reason", _one_line(reason)), RunTag("converged", "false"),
                                  RunTag("phase", "failed")])
        c.set_terminated(run_id, "FAILED")


def close_orphans(tracking_uri: str, experiment_id: str, sweep_name: str, owner=None) -> list[str]:
    """Mark KILLED this sweep's RUNNING trial runs whose owner is gone (tracking.owner.owner_alive; `owner`'s
    own runs count as gone: its driver is ending). Runs of another live driver are left RUNNING."""
    with _guard(tracking_uri):
        return _kill_running(tracking_uri, experiment_id, sweep_name, owner=owner, mine_gone=owner is not None)


def log_trial(tracking_uri: str, experiment_id: str, parent_run_id: str, sweep_name: str, trial_key: str,
              record: Any, attempt: int = 1, *, figures: bool = True) -> str:
    """start_trial_run + finish_trial_run in one call (for a record already computed). Returns the run id."""
    record = as_record(record)
    run_id = start_trial_run(tracking_uri, experiment_id, parent_run_id, sweep_name, trial_key,
                             record.get("config") or {}, attempt)
    finish_trial_run(tracking_uri, run_id, record, figures=figures)
    return run_id



# --- public names for the filter helpers (tracking.sweepstore and the commands use these) -------------------

quote = _q
trial_filter = _trial_filter
role_filter = _role_filter
guard = _guard


def __getattr__(name):              # the secrets helpers moved to tracking.secrets; old imports keep working
    if name in ("SECRET_NAME", "secret_env_values", "scan_for_secrets"):
        from . import secrets

        return getattr(secrets, name)
    raise AttributeError(name)
