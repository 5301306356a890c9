"""Keep a trial's record on disk when the tracking server is unreachable, and log it later.

A worker that gets `TrackingUnavailable` from `finish_trial_run` (or `start_trial_run`) builds the spool
payload (`payload_of`), writes it on its own disk (best effort) and sends it back to the driver in its Tune
result; the driver writes it under `<results>/spool/` (`write_payload`), so a record made on a remote node
is kept where the sweep's results are. `sync` (the driver at the end of the sweep, or `permsym sync`) logs
every spooled record once the server is back, to the tracking URI recorded in the file unless told another. A spool file is removed only after its run ended FINISHED (or FAILED for a
spooled failure), so nothing is dropped; a key that already has a FINISHED run is not logged twice.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from . import runs as _runs
from .owner import RunClosed

SPOOL_DIR = "spool"
SPOOL_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def spool_dir(results_dir) -> Path:
    return Path(results_dir).resolve() / SPOOL_DIR


def payload_of(trial_key: str, record: Any, meta: dict) -> dict:
    """The spool file's content: {spool_version, trial_key, meta, record}.

    `meta` holds what logging needs later: `experiment_id`, `parent_run_id`, `sweep`, `config` (the trial
    config dict), `tracking_uri` (where it was meant to go), and optionally `run_id` (the run opened before
    the server went away), `attempt`, `fail_reason` (spool a failure instead of a record; `record` may then
    be None), `figures` (false: `sync` logs the record without its PNGs, as the sweep's spec asked).
    """
    record = None if record is None else _runs.as_record(record)
    meta = dict(meta)
    if "config" not in meta and record is not None:
        meta["config"] = record.get("config") or {}
    return {"spool_version": SPOOL_VERSION, "trial_key": trial_key, "meta": meta, "record": record}


def write_payload(results_dir, payload: dict) -> Path:
    """Write a spool payload atomically to `<results>/spool/<trial_key>.json`; return the path."""
    d = spool_dir(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{_SAFE.sub('_', payload['trial_key'])}.json"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def spool_record(results_dir, trial_key: str, record: Any, meta: dict) -> Path:
    """payload_of + write_payload: keep one record (or failure) under `<results>/spool/`."""
    return write_payload(results_dir, payload_of(trial_key, record, meta))


def spooled_uris(results_dir) -> set[str]:
    """The tracking URIs the spooled records were meant for."""
    out = set()
    for path in spooled(results_dir):
        try:
            uri = (json.loads(path.read_text()).get("meta") or {}).get("tracking_uri")
        except (OSError, json.JSONDecodeError):
            continue
        if uri:
            out.add(uri)
    return out


def spooled(results_dir) -> list[Path]:
    d = spool_dir(results_dir)
    return sorted(d.glob("*.json")) if d.is_dir() else []


def sync(results_dir, tracking_uri: str | None = None) -> int:
    """Log every spooled record to `tracking_uri` (default: the URI recorded in each file); return how many
    runs were logged now.

    Per file: if the key already has a FINISHED run in its sweep, the file is dropped (already logged);
    otherwise a fresh run is opened (any RUNNING run of the key, such as the one opened before the server
    went away, is marked KILLED), the record logged, the run ended, and only then the file removed.
    Raises TrackingUnavailable if the server is still unreachable (files stay for the next sync).
    """
    n = 0
    finished_cache: dict[tuple[str, str, str], set[str]] = {}
    given = tracking_uri
    for path in spooled(results_dir):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue                       # an unreadable file is left for a person to look at
        key = payload["trial_key"]
        meta = payload.get("meta") or {}
        record = payload.get("record")
        tracking_uri = given or meta.get("tracking_uri")
        if not tracking_uri:
            continue                       # nowhere to log it: left for `permsym sync --tracking-uri`
        exp, sweep = str(meta["experiment_id"]), meta["sweep"]
        if (tracking_uri, exp, sweep) not in finished_cache:
            finished_cache[(tracking_uri, exp, sweep)] = _runs.finished_keys(tracking_uri, exp, sweep)
        if key in finished_cache[(tracking_uri, exp, sweep)]:
            path.unlink(missing_ok=True)
            continue
        if meta.get("run_id"):             # the attempt opened before the server went away: it ends here
            _end_abandoned(tracking_uri, meta["run_id"])
        attempt = int(meta.get("attempt") or 1)
        run_id = _runs.start_trial_run(tracking_uri, exp, meta["parent_run_id"], sweep, key,
                                       meta.get("config") or (record or {}).get("config") or {}, attempt)
        if meta.get("fail_reason") and record is None:
            _runs.fail_trial_run(tracking_uri, run_id, meta["fail_reason"])
        else:
            try:
                _runs.finish_trial_run(tracking_uri, run_id, record, figures=bool(meta.get("figures", True)))
            except RunClosed:              # the key FINISHED meanwhile: this copy is not logged twice
                pass
            finished_cache[(tracking_uri, exp, sweep)].add(key)
        path.unlink(missing_ok=True)
        n += 1
    return n


def _end_abandoned(tracking_uri: str, run_id: str) -> None:
    with _runs.guard(tracking_uri):
        c = _runs.client(tracking_uri)
        try:
            status = c.get_run(run_id).info.status
        except Exception as e:
            if isinstance(e, _runs.TrackingUnavailable) or _runs._is_unavailable(e):
                raise
            return                         # a run that is not there (another store): nothing to end
        if status == "RUNNING":
            c.set_tag(run_id, "failure_reason", "attempt abandoned (tracking server unreachable); its record "
                                                "was spooled and logged by sync in a new run")
            c.set_terminated(run_id, "KILLED")
