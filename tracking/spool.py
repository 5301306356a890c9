"""Keep a trial's record on local disk when the tracking server is unreachable, and log it later.

A worker that gets `TrackingUnavailable` from `finish_trial_run` (or `start_trial_run`) calls
`spool_record`; `sync` (the `permsym sync` command, or the driver at the end of a sweep) logs every spooled
record once the server is back. A spool file is removed only after its run ended FINISHED (or FAILED for a
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

SPOOL_DIR = "spool"
SPOOL_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def spool_dir(results_dir) -> Path:
    return Path(results_dir).resolve() / SPOOL_DIR


def spool_record(results_dir, trial_key: str, record: Any, meta: dict) -> Path:
    """Write {meta, record} atomically to `<results>/spool/<trial_key>.json`; return the path.

    `meta` holds what logging needs later: `experiment_id`, `parent_run_id`, `sweep`, `config` (the trial
    config dict), and optionally `run_id` (the run opened before the server went away), `attempt`,
    `tracking_uri`, `fail_reason` (spool a failure instead of a record; `record` may then be None).
    """
    d = spool_dir(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    record = None if record is None else _runs.as_record(record)
    meta = dict(meta)
    if "config" not in meta and record is not None:
        meta["config"] = record.get("config") or {}
    payload = {"spool_version": SPOOL_VERSION, "trial_key": trial_key, "meta": meta, "record": record}
    path = d / f"{_SAFE.sub('_', trial_key)}.json"
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


def spooled(results_dir) -> list[Path]:
    d = spool_dir(results_dir)
    return sorted(d.glob("*.json")) if d.is_dir() else []


def sync(results_dir, tracking_uri: str) -> int:
    """Log every spooled record to `tracking_uri`; return how many runs were logged now.

    Per file: if the key already has a FINISHED run in its sweep, the file is dropped (already logged);
    otherwise a fresh run is opened (any RUNNING run of the key, such as the one opened before the server
    went away, is marked KILLED), the record logged, the run ended, and only then the file removed.
    Raises TrackingUnavailable if the server is still unreachable (files stay for the next sync).
    """
    n = 0
    finished_cache: dict[tuple[str, str], set[str]] = {}
    for path in spooled(results_dir):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue                       # an unreadable file is left for a person to look at
        key = payload["trial_key"]
        meta = payload.get("meta") or {}
        record = payload.get("record")
        exp, sweep = str(meta["experiment_id"]), meta["sweep"]
        if (exp, sweep) not in finished_cache:
            finished_cache[(exp, sweep)] = _runs.finished_keys(tracking_uri, exp, sweep)
        if key in finished_cache[(exp, sweep)]:
            path.unlink(missing_ok=True)
            continue
        attempt = int(meta.get("attempt") or 1)
        run_id = _runs.start_trial_run(tracking_uri, exp, meta["parent_run_id"], sweep, key,
                                       meta.get("config") or (record or {}).get("config") or {}, attempt)
        if meta.get("fail_reason") and record is None:
            _runs.fail_trial_run(tracking_uri, run_id, meta["fail_reason"])
        else:
            _runs.finish_trial_run(tracking_uri, run_id, record)
            finished_cache[(exp, sweep)].add(key)
        path.unlink(missing_ok=True)
        n += 1
    return n
