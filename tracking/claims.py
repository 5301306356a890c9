"""Atomic key claims for SQLite MLflow stores: a sidecar table (sweep, trial_key) -> run_id, UNIQUE per key.

MLflow's own tables cannot say "this key is held" atomically: a run's start_time is set by the client before
its insert commits, so two claimers ordering runs by start_time can both win. For a SQLite store the holder
of each key is kept in `<db>.claims` next to the database file; claim, take-over and the end FINISHED each run
inside one `BEGIN IMMEDIATE` transaction on it, so they are serialised across processes on this host (and on
any host that shares the file system the SQLite store already needs). Server stores have no such table
(tracking.sweepstore falls back to its read-back rule).
"""
from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = ("CREATE TABLE IF NOT EXISTS claims (sweep TEXT NOT NULL, trial_key TEXT NOT NULL, "
           "run_id TEXT NOT NULL, PRIMARY KEY (sweep, trial_key))")


@dataclass(frozen=True)
class ClaimTable:
    """The sidecar claims file of one SQLite MLflow store (holds only its path: picklable into Ray trials)."""

    path: str

    @classmethod
    def for_uri(cls, tracking_uri: str) -> "ClaimTable | None":
        from .store import sqlite_path

        db = sqlite_path(tracking_uri)
        return None if db is None else cls(str(Path(db).with_name(Path(db).name + ".claims")))

    @contextlib.contextmanager
    def locked(self):
        """One write transaction on the table (other claimers of any key wait); commits on success."""
        conn = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        try:
            conn.execute(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Locked(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()


@dataclass
class _Locked:
    conn: sqlite3.Connection

    def holder(self, sweep: str, key: str) -> str | None:
        row = self.conn.execute("SELECT run_id FROM claims WHERE sweep = ? AND trial_key = ?",
                                (sweep, key)).fetchone()
        return row[0] if row else None

    def hold(self, sweep: str, key: str, run_id: str) -> None:
        self.conn.execute("INSERT INTO claims (sweep, trial_key, run_id) VALUES (?, ?, ?) "
                          "ON CONFLICT (sweep, trial_key) DO UPDATE SET run_id = excluded.run_id",
                          (sweep, key, run_id))
