"""The store a sweep talks to: one typed object per (tracking URI, experiment, sweep), like Optuna's storages.

`SweepStore` is everything `sweeps` needs from MLflow (which keys are FINISHED, claim a key for a run, end the
run, tag it, read the running runs, close the runs nobody owns any more); it holds only strings, so Ray
pickles it into every trial. `Owner` says who owns a RUNNING run: the driver (host, pid, a random id per
driver launch). Ownership rules (README, "One owner per run"):
- a key is *claimed* before its trial runs (`SweepStore.claim`): the run is created RUNNING with its owner
  and a heartbeat; on a SQLite store the key's holder is then decided in the sidecar claims table
  (tracking.claims, one transaction: atomic), on a server store by reading the key's runs back twice (a
  FINISHED run, or a live RUNNING run that started earlier, ties broken by run id, wins: best effort). The
  loser's run ends KILLED at once;
- only the owner ends its run; `finish` refuses a run that is no longer RUNNING (a KILLED or FAILED run never
  becomes FINISHED), that is not its key's holder in the claims table, or whose key already has a FINISHED
  run; it checks again right before the end and settles a race after it (the earliest FINISHED run keeps
  the key);
- a RUNNING run counts as abandoned only when its owner is provably gone (`owner_alive`): no owner tag
  (runs logged outside a sweep), the claiming worker's own earlier attempt, a driver or worker pid that no
  longer exists on this host, a heartbeat older than `stale_s()`, or (`close_orphans(owner)`) the ending
  driver's own runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import run_end, runs
from .claims import ClaimTable
from .owner import HEARTBEAT_S, HEARTBEAT_TAG, OWNER_TAG, Owner, RunClosed, owner_alive  # noqa: F401


DEFAULT_CLAIM_SETTLE_S = 2.0        # server stores: the second read-back of a claim waits this long


def claim_settle_s() -> float:
    with contextlib.suppress(ValueError):
        return float(os.environ.get("PERMSYM_CLAIM_SETTLE_S", DEFAULT_CLAIM_SETTLE_S))
    return DEFAULT_CLAIM_SETTLE_S


@dataclass(frozen=True)
class Claim:
    """The outcome of `SweepStore.claim`: run_id is set only when `status == "claimed"`."""

    status: Literal["claimed", "finished", "elsewhere", "failed"]
    run_id: str | None = None
    attempt: int = 1
    holder: str | None = None                         # the run that holds the key when it is not ours
    reason: str = ""                                  # "failed": why this driver launch's earlier run failed


@dataclass(frozen=True)
class SweepStore:
    tracking_uri: str
    experiment_id: str
    sweep: str

    # ---- reading ---------------------------------------------------------------------------------------
    def guard(self):
        """A dead server raises TrackingUnavailable (one line in the CLI)."""
        return runs.guard(self.tracking_uri)

    def _search(self, extra: str = "") -> list:
        with self.guard():
            return runs.search_all(self.tracking_uri, [self.experiment_id], runs.trial_filter(self.sweep, extra))

    def key_runs(self, key: str, extra: str = "") -> list:
        f = f"tags.trial_key = {runs.quote(key)}"
        return self._search(f"{f} and {extra}" if extra else f)

    def finished_keys(self) -> set[str]:
        return runs.finished_keys(self.tracking_uri, self.experiment_id, self.sweep)

    def running(self) -> list:
        """The sweep's RUNNING trial runs (MLflow Run objects), for progress lines."""
        return self._search("attributes.status = 'RUNNING'")

    def finished_record(self, key: str) -> dict | None:
        """The logged record of a key that has a FINISHED run (None if there is none or it cannot be read)."""
        with contextlib.suppress(Exception):
            found = self.key_runs(key, "attributes.status = 'FINISHED'")
            if found:
                with self.guard():
                    path = runs.client(self.tracking_uri).download_artifacts(found[0].info.run_id,
                                                                              runs.RECORD_ARTIFACT)
                return json.loads(Path(path).read_text())
        return None

    # ---- writing ---------------------------------------------------------------------------------------
    def claim(self, key: str, config: dict, parent_run_id: str, owner: Owner, tags: dict | None = None) -> Claim:
        """Open a RUNNING run of `key` owned by `owner`, unless the key is FINISHED, a live run holds it, or this
        same driver launch already ended it FAILED for a reason other than a crash ("failed")."""
        before = self.key_runs(key)
        if any(r.info.status == "FINISHED" for r in before):
            return Claim("finished")
        # this very driver launch already ran the key to an outcome that was not a crash (a failed minimum, the
        # time limit): a retried chunk (Tune retries a chunk when one of its trials crashed) does not pay again
        mine = owner.tag()
        for r in before:
            why = r.data.tags.get("failure_reason", "")
            if (r.info.status == "FAILED" and r.data.tags.get(OWNER_TAG) == mine and why
                    and not why.startswith("crashed")):
                return Claim("failed", run_id=r.info.run_id, attempt=len(before), reason=why)
        attempt = len(before) + 1
        all_tags = {OWNER_TAG: owner.tag(), HEARTBEAT_TAG: f"{time.time():.0f}", **(tags or {})}
        run_id = runs.start_trial_run(self.tracking_uri, self.experiment_id, parent_run_id, self.sweep, key,
                                      config, attempt, tags=all_tags, kill_dead=False)
        table = ClaimTable.for_uri(self.tracking_uri)
        if table is not None:
            return self._claim_in_table(table, key, run_id, owner, attempt, before)
        got = self._read_back(key, run_id, owner, attempt)
        if got.status == "claimed":
            # a server store: a slower insert with an earlier start_time may not have been visible yet
            time.sleep(claim_settle_s())
            got = self._read_back(key, run_id, owner, attempt)
        return got

    def _claim_in_table(self, table: ClaimTable, key: str, run_id: str, owner: Owner, attempt: int,
                        before: list) -> Claim:
        """SQLite stores: the claims table says who holds the key, read and written in one transaction."""
        with self.guard(), table.locked() as t:
            held = t.holder(self.sweep, key)
            h = None
            if held is not None and held != run_id:
                from mlflow.exceptions import MlflowException

                with contextlib.suppress(MlflowException):               # a holder no longer in the store
                    h = runs.client(self.tracking_uri).get_run(held)
            if h is not None:
                if h.info.status == "FINISHED":
                    self._end(run_id, "KILLED", f"duplicate: key already FINISHED in run {held}")
                    return Claim("finished", attempt=attempt, holder=held)
                if h.info.status == "RUNNING":
                    if owner_alive(h.data.tags, owner):
                        self._end(run_id, "KILLED", f"duplicate: key held by run {held} "
                                                    f"({h.data.tags.get(OWNER_TAG, '')})")
                        return Claim("elsewhere", attempt=attempt, holder=held)
                    self._end(held, "KILLED", "attempt abandoned (its owner is gone); marked KILLED")
            done = self.key_runs(key, "attributes.status = 'FINISHED'")  # e.g. logged by `log_trial`
            if done:
                self._end(run_id, "KILLED", f"duplicate: key already FINISHED in run {done[0].info.run_id}")
                return Claim("finished", attempt=attempt, holder=done[0].info.run_id)
            t.hold(self.sweep, key, run_id)
        for r in before:              # housekeeping: the key's RUNNING runs nobody owns (as read before ours)
            if r.info.status == "RUNNING" and r.info.run_id != held and not owner_alive(r.data.tags, owner):
                self._end(r.info.run_id, "KILLED", "attempt abandoned (its owner is gone); marked KILLED")
        return Claim("claimed", run_id, attempt)

    def _read_back(self, key: str, run_id: str, owner: Owner, attempt: int) -> Claim:
        """Server stores: read the key's runs back; a FINISHED run, or the earliest live RUNNING run (start
        time, then run id), holds the key; our run ends KILLED when it is not the holder."""
        mine = None
        contenders = []
        for r in self.key_runs(key):
            if r.info.run_id == run_id:
                mine = r
            elif r.info.status == "FINISHED":
                self._end(run_id, "KILLED", f"duplicate: key already FINISHED in run {r.info.run_id}")
                return Claim("finished", attempt=attempt, holder=r.info.run_id)
            elif r.info.status == "RUNNING":
                if owner_alive(r.data.tags, owner):
                    contenders.append(r)
                else:
                    self._end(r.info.run_id, "KILLED", "attempt abandoned (its owner is gone); marked KILLED")
        if mine is not None and mine.info.status != "RUNNING":
            return Claim("elsewhere", attempt=attempt)                   # another claimer took it over
        order = sorted(contenders + ([mine] if mine is not None else []), key=run_end._order)
        if mine is not None and order[0].info.run_id != run_id:
            holder = order[0]
            self._end(run_id, "KILLED", f"duplicate: key held by run {holder.info.run_id} "
                                        f"({holder.data.tags.get(OWNER_TAG, '')})")
            return Claim("elsewhere", attempt=attempt, holder=holder.info.run_id)
        return Claim("claimed", run_id, attempt)

    def _end(self, run_id: str, status: str, reason: str) -> None:
        from mlflow.entities import RunTag

        with self.guard():
            c = runs.client(self.tracking_uri)
            c.log_batch(run_id, tags=[RunTag("failure_reason", reason), RunTag("phase", status.lower())])
            c.set_terminated(run_id, status)

    def finish(self, run_id: str, record: Any, *, figures: bool = True) -> None:
        """Log the record and end the run FINISHED; RunClosed if it is not RUNNING any more or its key is
        FINISHED elsewhere. With a claims table the key's checks run once, after the upload, in the table's
        lock: a run that loses there keeps the uploaded record but ends KILLED, never FINISHED."""
        runs.finish_trial_run(self.tracking_uri, run_id, record, figures=figures,
                              claims=ClaimTable.for_uri(self.tracking_uri))

    def fail(self, run_id: str, reason: str) -> None:
        runs.fail_trial_run(self.tracking_uri, run_id, reason)

    def tag(self, run_id: str | None, tags: dict) -> None:
        """Best-effort tags on an open run (where it runs, its phase, its heartbeat)."""
        if run_id is None:
            return
        with contextlib.suppress(Exception):
            from mlflow.entities import RunTag

            with self.guard():
                runs.client(self.tracking_uri).log_batch(
                    run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v != ""])

    def heartbeat(self, run_id: str | None) -> None:
        self.tag(run_id, {HEARTBEAT_TAG: f"{time.time():.0f}"})

    def close_orphans(self, owner: Owner | None = None) -> list[str]:
        """KILL this sweep's RUNNING runs whose owner is gone (see `owner_alive`); `owner`'s own runs count as
        gone (its driver is ending). Another live driver's runs are left alone."""
        return runs.close_orphans(self.tracking_uri, self.experiment_id, self.sweep, owner=owner)
