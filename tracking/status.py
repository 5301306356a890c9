"""What the sweeps in a store are doing, read from the store alone (so it works from another terminal, another
machine, and against a tracking server): the `permsym sweeps` and `permsym status` commands.

A sweep is its parent run (tag `permsym.role=parent`) and its trial runs (tag `sweep`). The driver tags the
parent with `planned`, `driver_host` and `driver_pid` and keeps it RUNNING while it runs; each trial run
carries `hostname`, `worker_pid`, `trial_pid` and, while RUNNING, `phase`.
"""
from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass, field

from . import runs as _runs
from .owner import pid_alive


@dataclass
class RunningTrial:
    run_name: str
    trial_key: str
    hostname: str
    worker_pid: str
    trial_pid: str
    phase: str
    running_s: float


@dataclass
class FailedTrial:
    run_name: str
    trial_key: str
    status: str            # FAILED or KILLED
    reason: str


@dataclass
class SweepStatus:
    sweep: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    state: str             # the parent's status; "RUNNING (driver gone)" when its driver is known dead
    planned: int | None
    finished: int          # distinct keys with a FINISHED run
    converged: int
    running: list[RunningTrial] = field(default_factory=list)
    failed: list[FailedTrial] = field(default_factory=list)
    killed: int = 0
    spooled: int | None = None
    mean_trial_s: float | None = None
    eta_s: float | None = None

    @property
    def pending(self) -> int | None:
        return None if self.planned is None else max(0, self.planned - self.finished - len(self.running))


def _state(parent) -> str:
    st = parent.info.status
    tags = parent.data.tags
    if st == "RUNNING" and tags.get("driver_host") == socket.gethostname():
        pid = tags.get("driver_pid", "")
        if pid.isdigit() and not pid_alive(int(pid)):
            return "RUNNING (driver gone)"
    return st


def _parents(uri: str, sweep: str | None = None) -> list:
    from mlflow import MlflowClient

    exps = {e.experiment_id: e.name for e in MlflowClient(uri).search_experiments()}
    f = _runs._role_filter(_runs.PARENT_ROLE) + (f" and tags.sweep = {_runs._q(sweep)}" if sweep else "")
    found = _runs.search_all(uri, list(exps), f, order_by=["attributes.start_time DESC"])
    return [(p, exps.get(p.info.experiment_id, p.info.experiment_id)) for p in found]


def _one(uri: str, parent, exp_name: str, results_dir=None, now: float | None = None) -> SweepStatus:
    now = time.time() if now is None else now
    sweep = parent.data.tags.get("sweep", parent.info.run_name)
    kids = _runs.search_all(uri, [parent.info.experiment_id], _runs._trial_filter(sweep))
    finished = {}
    running, failed, killed = [], [], 0
    for r in kids:
        t, st = r.data.tags, r.info.status
        key = t.get("trial_key", "")
        if st == "FINISHED":
            finished.setdefault(key, r)
        elif st == "RUNNING":
            running.append(RunningTrial(r.info.run_name or "", key, t.get("hostname", ""), t.get("worker_pid", ""),
                                        t.get("trial_pid", ""), t.get("phase", "starting"),
                                        max(0.0, now - r.info.start_time / 1000)))
        elif st in ("FAILED", "KILLED"):
            killed += st == "KILLED"
            failed.append(FailedTrial(r.info.run_name or "", key, st, t.get("failure_reason", "")))
    # a key that FINISHED on a later attempt is not failed
    failed = [f for f in failed if f.trial_key not in finished]
    times = []
    for r in finished.values():
        m = r.data.metrics
        t = m.get("time_total")
        if t is None and r.info.end_time:
            t = (r.info.end_time - r.info.start_time) / 1000
        if t is not None and math.isfinite(t):
            times.append(float(t))
    planned = parent.data.tags.get("planned", "")
    s = SweepStatus(sweep=sweep, experiment=exp_name, experiment_id=parent.info.experiment_id,
                    parent_run_id=parent.info.run_id, state=_state(parent),
                    planned=int(planned) if planned.isdigit() else None, finished=len(finished),
                    converged=sum(r.data.tags.get("converged") == "true" for r in finished.values()),
                    running=sorted(running, key=lambda x: x.run_name), failed=failed, killed=killed)
    if results_dir is not None:
        from . import spool

        s.spooled = len(spool.spooled(results_dir))
    if times:
        s.mean_trial_s = sum(times) / len(times)
        if s.pending is not None and s.state.startswith("RUNNING"):
            conc = max(1, len(running))
            left_running = sum(max(0.0, s.mean_trial_s - x.running_s) for x in running) / conc
            s.eta_s = math.ceil(s.pending / conc) * s.mean_trial_s + left_running
    return s


def sweeps(tracking_uri: str, results_dir=None) -> list[SweepStatus]:
    """Every sweep in the store, newest first."""
    with _runs._guard(tracking_uri):
        return [_one(tracking_uri, p, name, results_dir) for p, name in _parents(tracking_uri)]


def status(tracking_uri: str, sweep: str | None = None, results_dir=None) -> list[SweepStatus]:
    """The named sweep (one entry per experiment that has it), or the newest sweep when `sweep` is None."""
    with _runs._guard(tracking_uri):
        found = _parents(tracking_uri, sweep)
        if sweep is None:
            found = found[:1]
        return [_one(tracking_uri, p, name, results_dir) for p, name in found]


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def format_sweeps(rows: list[SweepStatus]) -> str:
    if not rows:
        return "no sweeps in this store"
    lines = [f"{'sweep':24} {'experiment':20} {'state':22} {'planned':>7} {'finished':>8} {'running':>7} "
             f"{'failed':>6}"]
    for s in rows:
        lines.append(f"{s.sweep[:24]:24} {s.experiment[:20]:20} {s.state:22} "
                     f"{'-' if s.planned is None else s.planned:>7} {s.finished:>8} {len(s.running):>7} "
                     f"{len(s.failed):>6}")
    return "\n".join(lines)


def format_status(s: SweepStatus) -> str:
    lines = [f"sweep {s.sweep} (experiment {s.experiment}, parent run {s.parent_run_id}): {s.state}",
             f"  planned {'-' if s.planned is None else s.planned}, finished {s.finished} ({s.converged} "
             f"converged), running {len(s.running)}, failed {len(s.failed)}, pending "
             f"{'-' if s.pending is None else s.pending}"
             + ("" if s.spooled is None else f", spooled {s.spooled}" + (" (run `permsym sync`)" if s.spooled else ""))]
    lines.append(f"  mean trial time {_dur(s.mean_trial_s)}; estimated time left {_dur(s.eta_s)}"
                 + (" (mean trial time x pending trials / trials running now)" if s.eta_s is not None else ""))
    for r in s.running:
        lines.append(f"  running  {r.run_name:28} {r.trial_key[:12]}  host {r.hostname} worker pid {r.worker_pid} "
                     f"trial pid {r.trial_pid or '-'}  {_dur(r.running_s)}  phase: {r.phase}")
    for f in s.failed:
        lines.append(f"  {f.status.lower():8} {f.run_name:28} {f.trial_key[:12]}  {f.reason[:120]}")
    return "\n".join(lines)
