"""A local cache of FINISHED trial runs and their JSON artifacts, so that queries on 10,000 runs take seconds.

A FINISHED trial run never changes (its record, metrics and tables are written once, then the run is ended),
so what a query read of it can be kept by run id. Runs in any other state are never cached. The cache is one
SQLite file (default `$XDG_CACHE_HOME/permsym/results.sqlite`, i.e. ~/.cache/permsym; `PERMSYM_CACHE_DIR` moves
it, `PERMSYM_CACHE=off` turns it off), shared by every store: a store's runs are filed under a key of
(tracking URI, experiment id, the experiment's creation time), so a store deleted and made again at the same
path never sees the old store's runs.

How a query brings it up to date (`finished_runs`), per scope (the experiments and sweep queried):
- first time: one full listing of the scope's FINISHED trial runs (what an uncached query costs); cached runs
  of the scope (from queries of other scopes) that it does not list are dropped;
- afterwards: only the FINISHED runs with `end_time` >= the newest end time seen minus `MARGIN_MS` (runs
  ended since; the margin, 5 minutes unless PERMSYM_CACHE_MARGIN_S says otherwise, absorbs clocks of nodes
  that disagree by less and runs whose end was committed late), plus two small listings that invalidate: the scope's deleted runs and its runs not
  FINISHED (RUNNING, FAILED, KILLED). A cached run found in either is dropped with its artifacts and
  remembered; a remembered run seen in neither (restored) is read again with `get_run`.
Limits: a run deleted and removed for good (`mlflow gc`) between two queries, or a FINISHED run whose end time
lies more than the margin before the newest one seen, is not noticed; `PERMSYM_CACHE=off`, `cache=False` in
tracking.query, or deleting the cache file starts from a full listing.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from . import runs as _runs

#: How far before the newest end time seen a query looks again (clock skew between nodes, late commits).
MARGIN_MS = int(float(os.environ.get("PERMSYM_CACHE_MARGIN_S", "300")) * 1000)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (exp_key TEXT, run_id TEXT, sweep TEXT, end_time INTEGER, data TEXT,
                                 PRIMARY KEY (exp_key, run_id));
CREATE TABLE IF NOT EXISTS scopes (scope TEXT PRIMARY KEY, high_water INTEGER);
CREATE TABLE IF NOT EXISTS gone (exp_key TEXT, run_id TEXT, sweep TEXT, PRIMARY KEY (exp_key, run_id));
CREATE TABLE IF NOT EXISTS artifacts (run_id TEXT, path TEXT, text TEXT, PRIMARY KEY (run_id, path));
"""


@dataclass(frozen=True)
class RunData:
    """What the queries read of one run (an MLflow Run's info and data, as plain values)."""
    run_id: str
    experiment_id: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, r) -> "RunData":
        i, d = r.info, r.data
        return cls(i.run_id, i.experiment_id, i.status, i.start_time, i.end_time, i.artifact_uri,
                   dict(d.tags), dict(d.params), dict(d.metrics))

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "RunData":
        return cls(**json.loads(text))


def cache_path() -> Path | None:
    """The cache file, or None when caching is off (PERMSYM_CACHE=off|0|false|no)."""
    if os.environ.get("PERMSYM_CACHE", "").strip().lower() in ("off", "0", "false", "no"):
        return None
    base = os.environ.get("PERMSYM_CACHE_DIR")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "permsym")
    return Path(base) / "results.sqlite"


def trial_scope_filter(sweep: str | None, extra: str = "") -> str:
    parts = [f"tags.`{_runs.ROLE_TAG}` = '{_runs.TRIAL_ROLE}'"]
    if sweep is not None:
        parts.append(f"tags.sweep = {_runs._q(sweep)}")
    if extra:
        parts.append(extra)
    return " and ".join(parts)


def _search(uri: str, exp_ids: Sequence[str], filt: str, deleted: bool = False) -> list:
    from mlflow.entities import ViewType

    c = _runs.client(uri)
    out, token = [], None
    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    while True:
        page = c.search_runs(list(exp_ids), filter_string=filt, run_view_type=view, max_results=1000,
                             page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


class ResultsCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.con = sqlite3.connect(str(path), timeout=60, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.executescript(_SCHEMA)

    def close(self) -> None:
        self.con.close()

    # --- which store an experiment belongs to ---------------------------------------------------------
    @staticmethod
    def experiment_keys(uri: str, exp_ids: Sequence[str]) -> dict[str, str]:
        """experiment id -> its key (tracking URI, id, creation time): a store made again gets new keys."""
        c = _runs.client(uri)
        out = {}
        for e in exp_ids:
            created = c.get_experiment(e).creation_time
            out[e] = hashlib.sha256(f"{uri}\0{e}\0{created}".encode()).hexdigest()[:24]
        return out

    # --- the runs ----------------------------------------------------------------------------------------
    def finished_runs(self, uri: str, exp_ids: Sequence[str], sweep: str | None) -> list[RunData]:
        """Every active FINISHED trial run of the experiments (and sweep), brought up to date (module doc)."""
        if not exp_ids:
            return []
        keys = self.experiment_keys(uri, exp_ids)
        scope = hashlib.sha256(json.dumps([sorted(keys.values()), sweep]).encode()).hexdigest()[:24]
        row = self.con.execute("SELECT high_water FROM scopes WHERE scope = ?", (scope,)).fetchone()
        finished = "attributes.status = 'FINISHED'"
        if row is None:                                  # the complete list: whatever else is cached is stale
            new = _search(uri, exp_ids, trial_scope_filter(sweep, finished))
            listed = {r.info.run_id for r in new}
            self._drop([c for c in self._cached(keys, sweep) if c[1] not in listed])
        else:
            since = int(row[0]) - MARGIN_MS
            new = _search(uri, exp_ids, trial_scope_filter(sweep, f"{finished} and attributes.end_time >= {since}"))
            gone = _search(uri, exp_ids, trial_scope_filter(sweep), deleted=True)
            gone += _search(uri, exp_ids, trial_scope_filter(sweep, "attributes.status != 'FINISHED'"))
            self._invalidate(uri, keys, sweep, {r.info.run_id for r in gone}, new)
        self._put(keys, [RunData.from_mlflow(r) for r in new])
        high = max([r.info.end_time or 0 for r in new] + [int(row[0]) if row else 0])
        self.con.execute("INSERT INTO scopes VALUES (?, ?) ON CONFLICT(scope) DO UPDATE SET high_water = "
                         "excluded.high_water", (scope, high))
        return self._load(keys.values(), sweep)

    def _put(self, keys: dict[str, str], found: Iterable[RunData]) -> None:
        rows = [(keys[r.experiment_id], r.run_id, r.tags.get("sweep"), r.end_time or 0, r.to_json())
                for r in found if r.status == "FINISHED" and r.experiment_id in keys]    # never anything else
        with self.con:
            self.con.execute("BEGIN")
            self.con.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)", rows)
            self.con.executemany("DELETE FROM gone WHERE exp_key = ? AND run_id = ?", [r[:2] for r in rows])

    def _cached(self, keys: dict[str, str], sweep: str | None, table: str = "runs") -> list[tuple]:
        """(exp_key, run_id, sweep) of the scope's runs in `table` (runs: cached; gone: remembered)."""
        kset = list(keys.values())
        sweep_sql, sweep_arg = ("", []) if sweep is None else (" AND sweep = ?", [sweep])
        return self.con.execute(f"SELECT exp_key, run_id, sweep FROM {table} WHERE exp_key IN "
                                f"({','.join('?' * len(kset))}){sweep_sql}", [*kset, *sweep_arg]).fetchall()

    def _drop(self, rows: list[tuple]) -> None:
        """Forget cached runs (and their artifacts), remembering them as gone."""
        if not rows:
            return
        with self.con:
            self.con.execute("BEGIN")
            for k, rid, sw in rows:
                self.con.execute("DELETE FROM runs WHERE exp_key = ? AND run_id = ?", (k, rid))
                self.con.execute("DELETE FROM artifacts WHERE run_id = ?", (rid,))
                self.con.execute("INSERT OR REPLACE INTO gone VALUES (?, ?, ?)", (k, rid, sw))

    def _invalidate(self, uri: str, keys: dict[str, str], sweep: str | None, gone_ids: set[str], new: list) -> None:
        self._drop([c for c in self._cached(keys, sweep) if c[1] in gone_ids])
        remembered = self._cached(keys, sweep, "gone")
        back = [rid for _k, rid, _s in remembered if rid not in gone_ids]
        if back:                                         # restored (or removed for good): read them again
            c = _runs.client(uri)
            for rid in back:
                try:
                    r = c.get_run(rid)
                except Exception:                        # noqa: BLE001 - gone for good
                    r = None
                if r is not None and r.info.lifecycle_stage == "active" and r.info.status == "FINISHED":
                    new.append(r)
                else:
                    with self.con:
                        self.con.execute("DELETE FROM gone WHERE run_id = ?", (rid,))

    def _load(self, exp_keys: Iterable[str], sweep: str | None) -> list[RunData]:
        kset = list(exp_keys)
        q = f"SELECT data FROM runs WHERE exp_key IN ({','.join('?' * len(kset))})"
        args = list(kset)
        if sweep is not None:
            q += " AND sweep = ?"
            args.append(sweep)
        return [RunData.from_json(t) for (t,) in self.con.execute(q, args)]

    def is_finished(self, run_ids: Iterable[str]) -> set[str]:
        """The given runs that the cache holds as FINISHED."""
        ids = list(run_ids)
        out = set()
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = f"SELECT run_id, data FROM runs WHERE run_id IN ({','.join('?' * len(part))})"
            out.update(rid for rid, _d in self.con.execute(q, part))
        return out

    def artifact_uri(self, run_id: str) -> str | None:
        row = self.con.execute("SELECT data FROM runs WHERE run_id = ? LIMIT 1", (run_id,)).fetchone()
        return RunData.from_json(row[0]).artifact_uri if row else None

    # --- artifacts of cached runs ---------------------------------------------------------------------------
    def get_artifacts(self, path: str, run_ids: Sequence[str]) -> dict[str, str]:
        out = {}
        ids = list(run_ids)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = f"SELECT run_id, text FROM artifacts WHERE path = ? AND run_id IN ({','.join('?' * len(part))})"
            out.update(self.con.execute(q, [path, *part]).fetchall())
        return out

    def put_artifacts(self, path: str, texts: dict[str, str]) -> None:
        """Keep artifact texts of runs the cache holds as FINISHED (any other run's are left out)."""
        ok = self.is_finished(texts)
        with self.con:
            self.con.execute("BEGIN")
            self.con.executemany("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?)",
                                 [(rid, path, t) for rid, t in texts.items() if rid in ok])


def open_cache() -> ResultsCache | None:
    p = cache_path()
    return None if p is None else ResultsCache(p)


def read_artifact(uri: str, run_id: str, artifact: str, artifact_uri: str | None = None) -> str:
    """The text of one artifact of a run. With the run's artifact URI known, no store call is needed to find
    it: a local file is read in place, anything else is fetched from its artifact repository (for
    `mlflow-artifacts:` through the tracking server)."""
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if artifact_uri:
        if artifact_uri.startswith("file://") or "://" not in artifact_uri and ":" not in artifact_uri.split("/")[0]:
            from urllib.parse import urlparse
            from urllib.request import url2pathname

            base = Path(url2pathname(urlparse(artifact_uri).path)) if artifact_uri.startswith("file:") \
                else Path(artifact_uri)
            return (base / artifact).read_text()
        from mlflow.artifacts import download_artifacts

        with tempfile.TemporaryDirectory(prefix="permsym-q-") as tmp:
            local = download_artifacts(artifact_uri=f"{artifact_uri.rstrip('/')}/{artifact}", dst_path=tmp,
                                       tracking_uri=uri)
            return Path(local).read_text()
    with tempfile.TemporaryDirectory(prefix="permsym-q-") as tmp:
        return Path(_runs.client(uri).download_artifacts(run_id, artifact, tmp)).read_text()
