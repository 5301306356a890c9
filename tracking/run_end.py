"""Ending a trial run FINISHED so that each trial key keeps exactly one FINISHED run.

The checks before the end (`_check_open`), the end itself inside a claims table's lock where there is one
(`_end_finished`) and the settling of a race that slipped between the check and the end (`_settle_finished`,
ordered by `_order`). A run that loses ends KILLED `duplicate: ...` and RunClosed (tracking.owner) is raised.
"""
from __future__ import annotations

from .filters import _q, _trial_filter
from .owner import RunClosed


def _finished_of_key(c, run, max_results: int = 1000) -> list | None:
    """The FINISHED trial runs of `run`'s key (the run itself included once it ended FINISHED); None when the
    run carries no key."""
    key, sweep = run.data.tags.get("trial_key"), run.data.tags.get("sweep")
    if key is None or sweep is None:
        return None
    return c.search_runs([run.info.experiment_id], _trial_filter(
        sweep, f"tags.trial_key = {_q(key)} and attributes.status = 'FINISHED'"), max_results=max_results)


def _kill_duplicate(c, run_id: str, why: str) -> None:
    c.set_tag(run_id, "failure_reason", f"duplicate: {why}")
    c.set_terminated(run_id, "KILLED")


def _check_open(c, run_id: str, run=None) -> None:
    """RunClosed unless the run is RUNNING and its key has no other FINISHED run (one FINISHED run per key).
    `run`: the run as just read, in the same claims-table transaction (saves reading it again)."""
    run = run if run is not None else c.get_run(run_id)
    if run.info.status != "RUNNING":
        raise RunClosed(f"run {run_id} is {run.info.status}: not ending it FINISHED")
    done = _finished_of_key(c, run, max_results=1)
    if done:
        _kill_duplicate(c, run_id, f"key already FINISHED in run {done[0].info.run_id}")
        raise RunClosed(f"run {run_id}: key {run.data.tags['trial_key']} already FINISHED in run "
                        f"{done[0].info.run_id}")


def _end_finished(c, run_id: str, claims=None) -> None:
    """End a logged run FINISHED: check it again (another driver may have closed it, or FINISHED its key, while
    the artifacts uploaded), end it, then settle a race that slipped between the check and the end. With a
    claims table (tracking.claims, SQLite stores) all of it runs in the table's transaction, and the run must
    still be its key's holder there."""
    if claims is not None:
        with claims.locked() as t:
            run = c.get_run(run_id)
            tags = run.data.tags
            held = t.holder(tags.get("sweep", ""), tags.get("trial_key", ""))
            if held is not None and held != run_id:
                if run.info.status == "RUNNING":
                    _kill_duplicate(c, run_id, f"key held by run {held}")
                raise RunClosed(f"run {run_id}: its key is held by run {held}")
            _check_open(c, run_id, run)
            c.set_terminated(run_id, "FINISHED")
            _settle_finished(c, run_id, run)
        return
    _check_open(c, run_id)
    c.set_terminated(run_id, "FINISHED")
    _settle_finished(c, run_id)


def _order(r) -> tuple:
    """The order that decides which run holds a key (tracking.sweepstore.SweepStore.claim uses it too)."""
    return (r.info.start_time or 0, r.info.run_id)


def _settle_finished(c, run_id: str, run=None) -> None:
    """After ending `run_id` FINISHED: if the key has another FINISHED run (a race between the last check
    and the end), the earliest in `_order` keeps the key and every later one ends KILLED 'duplicate: ...'.
    Whichever of two racing runs reads second sees both, so the key keeps exactly one FINISHED run; RunClosed
    when this run is the one that gives way."""
    run = run if run is not None else c.get_run(run_id)     # its tags and experiment: they do not change
    done = sorted(_finished_of_key(c, run) or [], key=_order)
    if len(done) < 2:
        return
    first = done[0]
    for r in done[1:]:
        _kill_duplicate(c, r.info.run_id, f"key already FINISHED in run {first.info.run_id}")
    if first.info.run_id != run_id:
        raise RunClosed(f"run {run_id}: key {run.data.tags['trial_key']} already FINISHED in run "
                        f"{first.info.run_id}")
