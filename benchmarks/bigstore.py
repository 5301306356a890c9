"""A real MLflow store with N FINISHED trial runs, made in seconds (for benchmarks/results.py).

Logging 10,000 runs through MlflowClient costs about 5 store calls each (minutes on 2 cores), so the store is
seeded with a few runs logged the ordinary way (`tracking.runs.log_trial`, no figures: the four real toy
records of tests/fixtures/real_records, cycled) and then copied run by run inside the SQLite database: every row
of `runs`, `tags`, `params`, `metrics` and `latest_metrics` of a seed run gets a fresh run id and trial key
(tag `trial_key`, param `seed`), start and end times 1 s apart before the seeds' (as a sweep of hours would
leave them), and its artifacts are hard-linked under the new id. What the queries read is
then exactly what a sweep writes. Works for a SQLite store read directly and for the same database behind a
`mlflow server --serve-artifacts` (artifacts under its --artifacts-destination, URIs `mlflow-artifacts:/`).
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = sorted((ROOT / "tests" / "fixtures" / "real_records").glob("*.json"))
SWEEP = "big"
EXPERIMENT = "bench-results"


def seed_runs(uri: str, n_seed: int) -> tuple[str, list[str]]:
    """(experiment id, run ids): the sweep's parent and `n_seed` trial runs logged through `tracking.runs`."""
    from tracking import runs
    from tracking.store import prepare_store

    exp = prepare_store(uri, EXPERIMENT)
    parent = runs.get_or_create_parent(uri, exp, SWEEP, {"name": SWEEP})
    ids = []
    for i in range(n_seed):
        rec = json.loads(RECORDS[i % len(RECORDS)].read_text())
        rec["config"]["seed"] = 1000 + i
        ids.append(runs.log_trial(uri, exp, parent, SWEEP, f"seed-{i:04d}", rec, figures=False))
    return exp, ids


def _artifact_dir(artifact_uri: str, artifacts_destination: Path | None) -> Path:
    if artifact_uri.startswith("mlflow-artifacts:"):
        assert artifacts_destination is not None, "served artifacts need the server's --artifacts-destination"
        return artifacts_destination / artifact_uri.split(":", 1)[1].lstrip("/")
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    return Path(url2pathname(urlparse(artifact_uri).path)) if "://" in artifact_uri else Path(artifact_uri)


def clone_runs(db: Path, seed_ids: list[str], n_total: int, artifacts_destination: Path | None = None) -> int:
    """Copy the seed runs inside the SQLite database until the sweep has `n_total` trial runs. Returns the
    number of runs added."""
    con = sqlite3.connect(str(db), timeout=60)
    try:
        tables = ["runs", "tags", "params", "metrics", "latest_metrics"]
        cols = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in tables}
        rows = {t: {rid: con.execute(f"SELECT * FROM {t} WHERE run_uuid = ?", (rid,)).fetchall() for rid in seed_ids}
                for t in tables}
        add = n_total - len(seed_ids)
        new = {t: [] for t in tables}
        links = []
        for j in range(add):
            src = seed_ids[j % len(seed_ids)]
            rid = uuid.uuid4().hex
            key = f"clone-{j:06d}"
            for t in tables:
                ci = cols[t].index("run_uuid")
                for row in rows[t][src]:
                    row = list(row)
                    row[ci] = rid
                    if t == "runs":       # ended 1 s apart before the seeds: a sweep of hours, not seconds
                        st, en = cols[t].index("start_time"), cols[t].index("end_time")
                        dur = (row[en] or row[st]) - row[st]
                        row[en] = row[st] - (add - j) * 1000
                        row[st] = row[en] - dur
                        a = cols[t].index("artifact_uri")
                        links.append((row[a], row[a].replace(src, rid)))
                        row[a] = row[a].replace(src, rid)
                    elif t == "tags" and row[cols[t].index("key")] == "trial_key":
                        row[cols[t].index("value")] = key
                    elif t == "params" and row[cols[t].index("key")] == "seed":
                        row[cols[t].index("value")] = str(2000 + j)
                    new[t].append(tuple(row))
        with con:
            for t in tables:
                if new[t]:
                    marks = ",".join("?" * len(cols[t]))
                    con.executemany(f"INSERT INTO {t} ({','.join(cols[t])}) VALUES ({marks})", new[t])
    finally:
        con.close()
    for src_uri, dst_uri in links:
        src, dst = _artifact_dir(src_uri, artifacts_destination), _artifact_dir(dst_uri, artifacts_destination)
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                os.link(f, dst / f.name)
    return add


def make_sqlite_store(folder: Path, n: int, n_seed: int = 8) -> str:
    """A SQLite results folder with `n` FINISHED trial runs of sweep `big`; returns its tracking URI."""
    from tracking.store import results_uri, sqlite_path

    uri = results_uri(folder)
    _exp, ids = seed_runs(uri, min(n_seed, n))
    clone_runs(sqlite_path(uri), ids, n)
    return uri


def make_served_store(uri: str, db: Path, artifacts_destination: Path, n: int, n_seed: int = 8) -> None:
    """The same through a running `mlflow server` over SQLite `db` with --serve-artifacts."""
    _exp, ids = seed_runs(uri, min(n_seed, n))
    clone_runs(db, ids, n, artifacts_destination)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
