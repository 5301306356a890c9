"""The Ray Tune trainable of a sweep: claim each trial's key, run it isolated, log it, report its scalars.

A Tune trial carries one trial or a chunk of them (`sweeps.chunks`: several short trials per Tune trial),
run in turn, each reported to Tune as it ends. Per trial: the key is claimed in the store (`SweepStore.claim`: skipped when the key is FINISHED or held by
another live driver's run), the trial runs in a child process under the time limit (`sweeps.isolation`),
its run is tagged with where it runs and, throttled, its phase, a heartbeat thread keeps the run's
`permsym.heartbeat` fresh, and the outcome is logged by the run's owner (spooled when the server is down). The trial's figures are not drawn
here: the driver draws them beside the sweep (`sweeps.figure_writer`), off the trial's critical path.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

from tracking.metrics import nan_metrics, trial_metrics
from tracking.owner import HEARTBEAT_S, RunClosed, set_node_liveness

from .context import SweepContext, trials_of
from .isolation import TrialCrashed, run_isolated, warm

PHASE_EVERY_S = 5.0      # a RUNNING run's `phase` tag is rewritten at most this often (and on a new phase name)
PHASE_GRACE_S = 1.0      # and first written once the trial has run this long


def worker_info() -> dict:
    info = {"hostname": socket.gethostname(), "pid": os.getpid()}
    with contextlib.suppress(Exception):
        import ray

        rc = ray.get_runtime_context()
        info["node_id"] = rc.get_node_id()
        info["worker_id"] = rc.get_worker_id()
    return info


def phase_text(phase: str, k: int, n: int) -> str:
    """run_trial's (phase, k, n) as the `phase` tag shows it: "minimum", "reduced L1K1 3/6", "logging"."""
    if phase == "done":
        return "logging"
    if phase == "minimum":
        return "minimum"
    return f"{phase} {int(k) + 1}/{int(n)}"


class PhaseTagger:
    """on_phase for run_isolated: the `phase` tag of the trial's run, throttled (one store write per
    PHASE_EVERY_S, or when the phase's name changes; none in the trial's first PHASE_GRACE_S)."""

    def __init__(self, ctx: SweepContext, run_id: str | None):
        self.ctx, self.run_id = ctx, run_id
        self.name: str | None = None
        self.t = 0.0
        self.t0 = time.monotonic()

    def __call__(self, phase: str, k: int, n: int) -> None:
        now = time.monotonic()
        if now - self.t0 < PHASE_GRACE_S:            # a short trial writes no phase tags (2 store calls saved)
            return
        if phase == self.name and now - self.t < PHASE_EVERY_S:
            return
        self.name, self.t = phase, now
        self.ctx.store.tag(self.run_id, {"phase": phase_text(phase, k, n)})


@contextlib.contextmanager
def heartbeat(ctx: SweepContext, run_id: str | None):
    """Refresh the run's heartbeat every HEARTBEAT_S while the trial runs (its liveness for other drivers)."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            ctx.store.heartbeat(run_id)

    th = threading.Thread(target=beat, daemon=True, name="permsym-heartbeat")
    if run_id is not None:
        th.start()
    try:
        yield
    finally:
        stop.set()


def _report(metrics: dict, status: str, key: str, t0: float, extra: dict | None = None) -> None:
    from ray import tune

    out = dict(metrics)
    out.update(status=status, trial_key=key, wall_s=time.time() - t0)
    out.update(extra or {})
    tune.report(out)


def _node_alive(node_id: str) -> bool | None:
    """Whether Ray's cluster still has the node `node_id` alive (None: not a node of this cluster)."""
    import ray

    for n in ray.nodes():
        if n.get("NodeID") == node_id:
            return bool(n.get("Alive"))
    return None


def sweep_trainable(config: dict, ctx: SweepContext) -> None:
    """The trials of one Tune trial (one, or a chunk), in turn: see `run_one`. A trial whose process crashed
    (TrialCrashed) does not stop the chunk: its other trials run first, then the first crash ends the Tune
    trial, Tune retries it (FailureConfig.max_failures) and the retry skips the trials already FINISHED."""
    with contextlib.suppress(Exception):
        warm()          # the trials' forkserver preloads while this worker talks to the store
    threads = max(1, int(ctx.cpus))    # the trial's torch threads, set in its child (this worker runs no torch)
    worker = worker_info()
    set_node_liveness(_node_alive)
    crash: TrialCrashed | None = None
    for key, options in trials_of(config, ctx):
        try:
            run_one(key, options, ctx, threads, worker)
        except TrialCrashed as e:
            crash = crash or e
    if crash is not None:
        raise crash


def run_one(key: str, options: dict, ctx: SweepContext, threads: int, worker: dict) -> None:
    """One trial: skip it if its key is FINISHED or held by a live run of another driver, else claim its
    MLflow run, run it in a child process under the time limit, log the outcome, report the scalars."""
    from tracking import runs, spool

    t0 = time.time()
    store = ctx.store
    extra = {"node_id": worker.get("node_id", ""), "label": ctx.labels.get(key, "")}
    where = {"worker_pid": worker.get("pid", ""), "hostname": worker.get("hostname", ""),
             "node_id": worker.get("node_id", "")}

    try:
        claim = store.claim(key, options, ctx.parent_run_id, ctx.owner, where)
    except runs.TrackingUnavailable:
        claim = None
    if claim is not None and claim.status == "failed":
        # this driver already ran the key to a failure that was not a crash (a retried chunk): report it again
        _report(nan_metrics(), "failed", key, t0, {**extra, "failure": claim.reason})
        return
    if claim is not None and claim.status != "claimed":
        # a key never gets a second FINISHED run (a restored Tune trial, an Optuna repeat, another driver)
        rec = store.finished_record(key) if claim.status == "finished" else None
        _report(trial_metrics(rec) if rec else nan_metrics(), "skipped" if claim.status == "finished"
                else "elsewhere", key, t0, extra)
        return
    run_id = claim.run_id if claim is not None else None
    attempt = claim.attempt if claim is not None else 1
    meta = {"experiment_id": store.experiment_id, "parent_run_id": ctx.parent_run_id, "sweep": store.sweep,
            "config": options, "tracking_uri": store.tracking_uri, "attempt": attempt, "run_id": run_id,
            "figures": ctx.figures}

    def keep(record, meta_: dict) -> dict:
        """Spool: on this worker's disk (best effort) and back to the driver in the Tune result, which
        writes it under the sweep's results folder (a remote node's disk is not where `sync` looks)."""
        payload = spool.payload_of(key, record, meta_)
        with contextlib.suppress(OSError):
            spool.write_payload(ctx.results_dir, payload)
        return {"spool_payload": json.dumps(payload, default=str)}

    spooled: dict = {}

    def fail(reason: str) -> None:
        try:
            if run_id is None:
                raise runs.TrackingUnavailable("no run")
            store.fail(run_id, reason)
        except runs.TrackingUnavailable:
            spooled.update(keep(None, {**meta, "fail_reason": reason}))

    with heartbeat(ctx, run_id):                         # alive until the run has ended, logging included
        try:
            outcome = run_isolated(options, threads, ctx.time_limit_s,
                                   on_start=lambda pid: store.tag(run_id, {"trial_pid": pid}),
                                   on_phase=PhaseTagger(ctx, run_id))
        except TrialCrashed as e:
            fail(f"crashed: {e} (attempt {attempt})")
            raise                                        # Tune retries it (FailureConfig.max_failures)

        if outcome[0] != "ok":
            reason = outcome[1]
            fail(reason)
            _report(nan_metrics(), "failed", key, t0, {**extra, "failure": reason, **spooled})
            return
        record = outcome[1]
        record["worker"] = worker
        record.setdefault("timings", {})["trial_wall"] = time.time() - t0
        try:
            if run_id is None:
                raise runs.TrackingUnavailable("no run")
            store.finish(run_id, record, figures=False)
            status = "finished"
        except RunClosed:
            # our run was closed meanwhile (judged abandoned by another driver) or the key FINISHED elsewhere:
            # the record goes into a fresh claimed run, or nowhere if another run holds the key
            status = "elsewhere"
            with contextlib.suppress(RunClosed, runs.TrackingUnavailable):
                again = store.claim(key, options, ctx.parent_run_id, ctx.owner, where)
                if again.status == "claimed":
                    with heartbeat(ctx, again.run_id):
                        store.finish(again.run_id, record, figures=False)
                    run_id = again.run_id
                    status = "finished"
        except runs.TrackingUnavailable:
            spooled.update(keep(record, meta))
            status = "spooled"
    _report(trial_metrics(record), status, key, t0, {**extra, "failure": record.get("failure") or "", **spooled,
                                                     "run_id": run_id if status == "finished" else ""})
