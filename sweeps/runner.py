"""Run a sweep on Ray Tune: embedded local Ray by default, a cluster when asked; MLflow as the system of record.

Driver order (DESIGN.md section 3): prepare the store and the experiment -> the sweep's parent run -> the
keys that already have a FINISHED run -> plan only the missing trials -> Ray Tune (grid, or Optuna with a
study persisted beside the MLflow store). Each trial runs `permsym_core.study.run_trial` in a child process
of the Tune worker (so a time limit can stop it), logs one MLflow child run, and reports its scalars.
"""
from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from ._child import child_main
from .plan import PlannedTrial, optuna_space, plan
from .spec import SweepSpec, load_spec

DEFAULT_RESULTS = "./permsym-results"


# ---- per-trial scalars -------------------------------------------------------------------------------

def trial_metrics(record: dict) -> dict[str, float]:
    """The scalars a trial reports to Tune (and that an Optuna search may optimise), summed over layers and
    orders. Non-converged trials count nothing (counts 0, fractions NaN)."""
    mini = record.get("minimum") or {}
    conv = bool(mini.get("converged")) and not record.get("failure")
    rows = (record.get("counts") or []) if conv else []
    tot = {f: sum(int(r.get(f) or 0) for r in rows) for f in ("n_found", "n_critical", "n_saddle", "n_first_order")}

    def log10_sum(field):
        vals = [r.get(field) for r in rows if r.get(field) is not None]
        if not vals:
            return math.nan
        m = max(vals)
        return m + math.log10(sum(10 ** (v - m) for v in vals))

    def num(x):
        return float(x) if isinstance(x, (int, float)) and x is not None else math.nan

    return {
        "converged": 1.0 if conv else 0.0,
        "min_loss": num(mini.get("loss")),
        "min_grad_inf": num(mini.get("grad_inf")),
        "n_points": float(tot["n_found"]),
        "n_critical": float(tot["n_critical"]),
        "n_saddle": float(tot["n_saddle"]),
        "n_first_order": float(tot["n_first_order"]),
        "frac_first_order": tot["n_first_order"] / tot["n_found"] if tot["n_found"] else math.nan,
        "frac_saddle": tot["n_saddle"] / tot["n_found"] if tot["n_found"] else math.nan,
        "log10_critical": log10_sum("log10_critical"),
        "log10_first_order": log10_sum("log10_first_order"),
        "trial_time_s": num((record.get("timings") or {}).get("total")),
    }


# ---- running run_trial in a child process with a deadline ----------------------------------------------

class TrialCrashed(RuntimeError):
    """The trial's process died without a result (killed, out of memory, segfault): Tune retries it."""


_MP = None
_MP_LOCK = threading.Lock()


def _mp_context():
    """A forkserver context that has torch and permsym_core preloaded: each trial forks from a clean,
    single-threaded server (cheap, and safe inside a multi-threaded Ray worker).

    torch._dynamo is preloaded too: torch.func's transforms (the paths' batched gradients) import it, with
    sympy, on first use, ~870 modules and 1.0-1.6 s that every fresh trial process paid again (measured on the
    toy task: first trial in a forked child 5.15 s, later ones 3.5 s; with the preload the first is 3.54 s)."""
    global _MP
    with _MP_LOCK:
        if _MP is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["torch", "torch._dynamo", "permsym_core.study", "permsym_core.hessian",
                                        "sweeps._child"])
            _MP = ctx
        return _MP


@contextlib.contextmanager
def _without_main_module():
    """Children need nothing from __main__ (in a Ray worker it is Ray's worker script); do not re-import it."""
    import multiprocessing.spawn as mps

    orig = mps.get_preparation_data

    def prep(name):
        d = orig(name)
        d.pop("init_main_from_path", None)
        d.pop("init_main_from_name", None)
        return d

    mps.get_preparation_data = prep
    try:
        yield
    finally:
        mps.get_preparation_data = orig


def run_isolated(options: dict, threads: int = 1, time_limit_s: float | None = None, on_start=None,
                 on_phase=None) -> tuple:
    """Run `run_trial(options)` in a child process. Returns ("ok", record), ("error", reason, traceback) or
    ("time_limit", reason). Raises TrialCrashed if the child died without an answer. `on_start(pid)` is
    called with the child's process id once it is started, `on_phase(phase, k, n)` as the trial reports its
    phases (run_trial's on_phase, relayed through the pipe)."""
    ctx = _mp_context()
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, args=(w, options, threads), daemon=True, name="permsym-trial")
    with _without_main_module():
        proc.start()
    w.close()
    if on_start is not None:
        with contextlib.suppress(Exception):
            on_start(proc.pid)
    msg = None
    try:
        # the forkserver's first start (torch import) does not count against the trial's limit
        started = r.poll(300)
        if started:
            try:
                r.recv()
            except EOFError:
                started = False
        deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        while started:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not r.poll(left):
                msg = ("time_limit", f"time_limit: trial exceeded trial_time_limit_s={time_limit_s:g}")
                break
            try:
                got = r.recv()
            except EOFError:
                break
            if got[0] == "phase":
                if on_phase is not None:
                    with contextlib.suppress(Exception):
                        on_phase(*got[1:])
                continue
            msg = got
            break
    finally:
        if msg is not None and msg[0] != "time_limit":
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=30)
        r.close()
    if msg is None:
        code = proc.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise TrialCrashed(f"trial process died without a result ({how})")
    return msg


# ---- the Tune trainable ------------------------------------------------------------------------------------

def _worker_info() -> dict:
    info = {"hostname": socket.gethostname(), "pid": os.getpid()}
    with contextlib.suppress(Exception):
        import ray

        rc = ray.get_runtime_context()
        info["node_id"] = rc.get_node_id()
        info["worker_id"] = rc.get_worker_id()
    return info


def _tag_run(uri: str, run_id: str | None, tags: dict) -> None:
    """Best-effort tags on an open trial run (where it runs: worker_pid, trial_pid, hostname, node_id), so
    that an operator can find the process of a RUNNING trial from the store."""
    if run_id is None:
        return
    with contextlib.suppress(Exception):
        from mlflow.entities import RunTag

        from tracking import runs

        with runs._guard(uri):
            runs.client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v != ""])


PHASE_EVERY_S = 5.0      # a RUNNING run's `phase` tag is rewritten at most this often (and on a new phase name)


def phase_text(phase: str, k: int, n: int) -> str:
    """run_trial's (phase, k, n) as the `phase` tag shows it: "minimum", "reduced L1K1 3/6", "logging"."""
    if phase == "done":
        return "logging"
    if phase == "minimum":
        return "minimum"
    return f"{phase} {int(k) + 1}/{int(n)}"


def _phase_tagger(uri: str, run_id: str | None):
    """on_phase for run_isolated: the `phase` tag of the trial's run, throttled (one store write per
    PHASE_EVERY_S, or when the phase's name changes)."""
    last = {"name": None, "t": 0.0}

    def on_phase(phase: str, k: int, n: int) -> None:
        now = time.monotonic()
        if phase == last["name"] and now - last["t"] < PHASE_EVERY_S:
            return
        last.update(name=phase, t=now)
        _tag_run(uri, run_id, {"phase": phase_text(phase, k, n)})

    return on_phase


def _trial_of(config: dict, ctx: dict) -> tuple[str, dict]:
    from permsym_core.config import TrialConfig

    if "trial" in config:
        return config["trial"]["key"], config["trial"]["config"]
    d = {"task": ctx["task"], "task_options": dict(ctx["task_options"])}
    for name, values in ctx["dims"].items():
        d[name] = values[int(config[name])] if name in config else values[0]
    cfg = TrialConfig.from_dict(d)
    return cfg.trial_key(), cfg.to_dict()


def _finished_record(ctx: dict, key: str) -> dict | None:
    """The logged record of a key that already has a FINISHED run (None if it cannot be read)."""
    from tracking import runs

    with contextlib.suppress(Exception):
        found = runs.search_all(ctx["tracking_uri"], [ctx["experiment_id"]],
                                runs._trial_filter(ctx["sweep"], f"attributes.status = 'FINISHED' and "
                                                   f"tags.trial_key = {runs._q(key)}"))
        if found:
            path = runs.client(ctx["tracking_uri"]).download_artifacts(found[0].info.run_id, runs.RECORD_ARTIFACT)
            return json.loads(Path(path).read_text())
    return None


def _attempt(ctx: dict, key: str) -> int:
    from tracking import runs

    with contextlib.suppress(Exception):
        found = runs.search_all(ctx["tracking_uri"], [ctx["experiment_id"]],
                                runs._trial_filter(ctx["sweep"], f"tags.trial_key = {runs._q(key)}"))
        return len(found) + 1
    return 1


def _report(metrics: dict, status: str, key: str, t0: float, extra: dict | None = None) -> None:
    from ray import tune

    out = dict(metrics)
    out.update(status=status, trial_key=key, wall_s=time.time() - t0)
    out.update(extra or {})
    tune.report(out)


def _nan_metrics() -> dict:
    return {k: math.nan for k in trial_metrics({"minimum": {}})}


def sweep_trainable(config: dict, ctx: dict) -> None:
    """One trial: skip it if its key is FINISHED, else open its MLflow run, run it in a child process under
    the time limit, log the outcome, report the scalars."""
    from tracking import runs, spool

    t0 = time.time()
    key, options = _trial_of(config, ctx)
    uri = ctx["tracking_uri"]
    threads = max(1, int(ctx["cpus"]))
    with contextlib.suppress(Exception):
        import torch

        torch.set_num_threads(threads)
    worker = _worker_info()
    extra = {"node_id": worker.get("node_id", ""), "label": ctx.get("labels", {}).get(key, "")}

    # Idempotency: a key never gets a second FINISHED run (a restored Tune trial, an Optuna repeat).
    try:
        done = key in runs.finished_keys(uri, ctx["experiment_id"], ctx["sweep"])
    except runs.TrackingUnavailable:
        done = False
    if done:
        rec = _finished_record(ctx, key)
        _report(trial_metrics(rec) if rec else _nan_metrics(), "skipped", key, t0, extra)
        return

    meta = {"experiment_id": ctx["experiment_id"], "parent_run_id": ctx["parent_run_id"], "sweep": ctx["sweep"],
            "config": options, "tracking_uri": uri}
    attempt = _attempt(ctx, key)
    meta["attempt"] = attempt
    try:
        run_id = runs.start_trial_run(uri, ctx["experiment_id"], ctx["parent_run_id"], ctx["sweep"], key,
                                      options, attempt)
    except runs.TrackingUnavailable:
        run_id = None
    meta["run_id"] = run_id
    _tag_run(uri, run_id, {"worker_pid": worker.get("pid", ""), "hostname": worker.get("hostname", ""),
                           "node_id": worker.get("node_id", "")})

    def fail(reason: str) -> None:
        try:
            if run_id is None:
                raise runs.TrackingUnavailable("no run")
            runs.fail_trial_run(uri, run_id, reason)
        except runs.TrackingUnavailable:
            spool.spool_record(ctx["results_dir"], key, None, {**meta, "fail_reason": reason})

    try:
        outcome = run_isolated(options, threads, ctx.get("time_limit_s"),
                               on_start=lambda pid: _tag_run(uri, run_id, {"trial_pid": pid}),
                               on_phase=_phase_tagger(uri, run_id))
    except TrialCrashed as e:
        fail(f"crashed: {e} (attempt {attempt})")
        raise                                        # Tune retries it (FailureConfig.max_failures)

    if outcome[0] == "ok":
        record = outcome[1]
        record["worker"] = worker
        record.setdefault("timings", {})["trial_wall"] = time.time() - t0
        try:
            if run_id is None:
                raise runs.TrackingUnavailable("no run")
            runs.finish_trial_run(uri, run_id, record)
            status = "finished"
        except runs.TrackingUnavailable:
            spool.spool_record(ctx["results_dir"], key, record, meta)
            status = "spooled"
        _report(trial_metrics(record), status, key, t0,
                {**extra, "failure": record.get("failure") or ""})
    else:
        reason = outcome[1]
        fail(reason)
        _report(_nan_metrics(), "failed", key, t0, {**extra, "failure": reason})


# ---- progress ---------------------------------------------------------------------------------------------

_STREAMS: dict[int, Any] = {}     # progress streams by id: Tune pickles its callbacks with the run config


class Progress(tune.Callback):
    """Progress lines on the driver: trials done, failed, running, time per trial. Defined at module level so
    that Tune pickles it by reference (its stream stays in _STREAMS, never pickled)."""

    POLL_S = 5.0         # how often the driver reads the running trials' `phase` tags from the store
    REPEAT_S = 30.0      # a trial still in the same phase is shown again after this long

    def __init__(self, total: int, enabled: bool, stream_id: int = 0, watch: tuple | None = None):
        self.total, self.enabled, self.stream_id = total, enabled, stream_id
        self.watch = watch                   # (tracking_uri, experiment_id, sweep): where phases are read
        self._polled, self._shown = 0.0, {}
        self.t0 = time.time()
        self.running, self.done, self.failed, self.errored, self.skipped = 0, 0, 0, 0, 0
        self.results: dict[str, dict] = {}
        self.times: list[float] = []

    def _line(self, msg: str) -> None:
        if self.enabled:
            el = time.time() - self.t0
            mean = f", {sum(self.times) / len(self.times):.1f} s/trial" if self.times else ""
            out = _STREAMS.get(self.stream_id) or sys.stdout
            print(f"[{el:7.1f}s] {self.done + self.failed + self.skipped}/{self.total} done "
                  f"({self.failed} failed, {self.running} running{mean}) {msg}", file=out, flush=True)

    def on_step_end(self, iteration, trials, **info):
        """Every POLL_S: one line per running trial whose phase changed (or every REPEAT_S)."""
        now = time.monotonic()
        if not (self.enabled and self.watch) or now - self._polled < self.POLL_S:
            return
        self._polled = now
        from tracking import runs

        uri, exp, sweep = self.watch
        try:
            with runs._guard(uri):
                found = runs.search_all(uri, [exp], runs._trial_filter(sweep, "attributes.status = 'RUNNING'"))
        except Exception:
            return
        for r in found:
            phase = r.data.tags.get("phase")
            if not phase:
                continue
            name = phase.rsplit(" ", 1)[0] if phase[-1].isdigit() else phase
            seen = self._shown.get(r.info.run_id)
            if seen is None or seen[0] != name or now - seen[1] >= self.REPEAT_S:
                self._shown[r.info.run_id] = (name, now)
                self._line(f"{(r.data.tags.get('trial_key') or '')[:8]} {r.info.run_name}: {phase}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running += 1
        self._line(f"start {_trial_label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results[trial.trial_id] = dict(result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running = max(0, self.running - 1)
        res = self.results.get(trial.trial_id, {})
        status = res.get("status", "?")
        if status == "failed":
            self.failed += 1
            what = f"FAILED ({res.get('failure', '')})"
        elif status == "skipped":
            self.skipped += 1
            what = "already finished, skipped"
        else:
            self.done += 1
            self.times.append(float(res.get("wall_s", 0.0)))
            loss = res.get("min_loss")
            what = (f"{status} in {res.get('wall_s', 0):.1f} s: loss {loss:.3g}, {int(res.get('n_points', 0))} "
                    f"points, {int(res.get('n_first_order', 0))} first-order"
                    if isinstance(loss, float) and math.isfinite(loss) else
                    f"{status} in {res.get('wall_s', 0):.1f} s: {res.get('failure') or 'not converged'}")
        self._line(f"{_trial_label(trial)} {what}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running = max(0, self.running - 1)
        self.errored += 1
        self._line(f"{_trial_label(trial)} ERROR after retries (see the Ray logs)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.running = max(0, self.running - 1)
        self._line(f"{_trial_label(trial)} crashed, retrying")


def _make_progress(total: int, enabled: bool, stream=None, watch: tuple | None = None) -> Progress:
    stream_id = id(stream) if stream is not None else 0
    if stream is not None:
        _STREAMS[stream_id] = stream
    return Progress(total, enabled, stream_id, watch)


def _trial_label(trial) -> str:
    cfg = trial.config or {}
    if "trial" in cfg:
        c = cfg["trial"]["config"]
        return f"{cfg['trial']['key'][:8]} widths={c['widths']} {c['activation']} seed={c['seed']}"
    return f"{trial.trial_id} {json.dumps({k: v for k, v in cfg.items()})}"


# ---- Ray ---------------------------------------------------------------------------------------------------

def _init_ray(address: str | None, env_vars: dict) -> bool:
    """Start or join Ray unless this process already has it. Returns True when we must shut it down."""
    import ray

    if ray.is_initialized():
        return False
    common = dict(runtime_env={"env_vars": env_vars}, log_to_driver=False, configure_logging=True,
                  logging_level="WARNING")
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **common)
    return True


def _optuna_storage(results_dir: Path, tracking_uri: str):
    import optuna
    from tracking.store import sqlite_path

    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else results_dir
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def _optuna_sampler(spec: SweepSpec, space: dict):
    import optuna

    s, seed = spec.search.sampler, spec.search.seed
    if s == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler({k: list(range(len(v))) for k, v in space.items()}, seed=seed)


def _optuna_study_state(spec: SweepSpec, storage) -> tuple[int, Any]:
    """Open (or create) the sweep's study; mark trials a dead driver left RUNNING as FAIL; count COMPLETE."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                direction="maximize" if spec.search.mode == "max" else "minimize")
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        with contextlib.suppress(Exception):
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return n_complete, study


def _dedup_optuna_search(ctx: dict, **kwargs):
    """OptunaSearch that never has two trials of one key in flight (that would log two FINISHED runs)."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class DedupOptunaSearch(OptunaSearch):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._inflight: dict[str, str] = {}

        def suggest(self, trial_id):
            for _ in range(20):
                params = super().suggest(trial_id)
                if params is None or not isinstance(params, dict):
                    return params
                key, _opts = _trial_of(params, ctx)
                if key not in self._inflight.values():
                    self._inflight[trial_id] = key
                    return params
                ot_trial = self._ot_trials.pop(trial_id)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            return None                                  # wait for the running duplicate to finish

        def on_trial_complete(self, trial_id, result=None, error=False):
            self._inflight.pop(trial_id, None)
            return super().on_trial_complete(trial_id, result=result, error=error)

    return DedupOptunaSearch(**kwargs)


# ---- the sweep -------------------------------------------------------------------------------------------

def run_sweep(spec, *, address: str | None = None, tracking_uri: str | None = None,
              results_dir: str | os.PathLike = DEFAULT_RESULTS, resume: bool = False, progress: bool = True,
              max_concurrent: int | None = None, stream=None) -> dict:
    """Run (or continue) a sweep; return its summary (see `format_summary`)."""
    from tracking import runs
    from tracking.store import prepare_store, redact_uri, results_uri, split_credentials

    spec = load_spec(spec)
    out = stream or sys.stdout
    t_start = time.time()
    results = Path(results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    address = address or os.environ.get("RAY_ADDRESS") or None
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or results_uri(results)
    # user:password@ in the URI: MLflow reads them from the environment instead, so the URI that is printed,
    # handed to Ray and logged never carries them (local workers inherit this process's environment).
    tracking_uri, creds = split_credentials(tracking_uri)
    os.environ.update(creds)
    if creds and "MLFLOW_TRACKING_URI" in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri

    planned = plan(spec)
    with runs._guard(tracking_uri):                  # a dead server: TrackingUnavailable, one line in the CLI
        exp_id = prepare_store(tracking_uri, spec.experiment_name)
    n_planned = len(planned) if spec.search.kind == "grid" else (
        spec.search.n_trials or math.prod(len(v) for v in optuna_space(spec).values()))
    parent = runs.get_or_create_parent(tracking_uri, exp_id, spec.name, spec.to_dict(), running=True,
                                       tags={"planned": n_planned, "driver_host": socket.gethostname(),
                                             "driver_pid": os.getpid()})
    done_before = runs.finished_keys(tracking_uri, exp_id, spec.name)
    # Runs a dead driver or worker left RUNNING: nothing is running them now.
    runs.close_orphans(tracking_uri, exp_id, spec.name)

    summary: dict[str, Any] = {
        "sweep": spec.name, "experiment": spec.experiment_name, "experiment_id": exp_id, "parent_run_id": parent,
        "tracking_uri": tracking_uri, "results_dir": str(results), "search": spec.search.kind,
        "planned": len(planned), "already_finished": 0, "ran": 0, "finished": 0, "failed": 0, "errored": 0,
        "skipped": 0, "spooled": 0, "interrupted": False, "trials": [],
    }
    ctx = {"tracking_uri": tracking_uri, "experiment_id": exp_id, "parent_run_id": parent, "sweep": spec.name,
           "results_dir": str(results), "cpus": spec.resources.cpus, "time_limit_s": spec.trial_time_limit_s,
           "task": spec.task, "task_options": dict(spec.task_options), "dims": spec.grid.dimensions(),
           "labels": {t.key: t.label() for t in planned}}

    study = storage = None
    if spec.search.kind == "grid":
        pending = [t for t in planned if t.key not in done_before]
        summary["already_finished"] = len(planned) - len(pending)
        n_to_run = len(pending)
    else:
        storage = _optuna_storage(results, tracking_uri)
        n_complete, study = _optuna_study_state(spec, storage)
        total = spec.search.n_trials or math.prod(len(v) for v in optuna_space(spec).values())
        summary["already_finished"] = n_complete
        summary["planned"] = total
        n_to_run = max(0, total - n_complete)
        pending = []

    if progress:
        print(f"sweep {spec.name}: {summary['planned']} trials planned, {summary['already_finished']} already "
              f"finished, {n_to_run} to run; store {redact_uri(tracking_uri)}", file=out, flush=True)
    if n_to_run == 0:
        runs.end_parent(tracking_uri, parent, "FINISHED")
        summary["wall_s"] = time.time() - t_start
        if progress:
            print(format_summary(summary), file=out, flush=True)
        return summary

    env_vars = {"MLFLOW_TRACKING_URI": tracking_uri, "RAY_USAGE_STATS_ENABLED":
                os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    owns_ray = _init_ray(address, env_vars)
    interrupted = False
    try:
        results_grid, cb = _fit(spec, ctx, pending, n_to_run, results, resume, max_concurrent, progress, out, storage)
        for r in results_grid:
            m = r.metrics or {}
            if r.error is not None and not m.get("status"):
                summary["errored"] += 1
                continue
            st = m.get("status")
            if st in ("finished", "spooled"):
                summary["finished"] += 1
                summary["spooled"] += st == "spooled"
            elif st == "failed":
                summary["failed"] += 1
            elif st == "skipped":
                summary["skipped"] += 1
            if st:
                summary["trials"].append({k: m.get(k) for k in (
                    "trial_key", "label", "status", "wall_s", "min_loss", "n_points", "n_saddle",
                    "n_first_order", "frac_first_order", "failure", "node_id")})
        summary["ran"] = summary["finished"] + summary["failed"]
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        with contextlib.suppress(Exception):
            runs.close_orphans(tracking_uri, exp_id, spec.name)
        if owns_ray:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
            with contextlib.suppress(Exception):          # what a worker opened while Ray was going down
                runs.close_orphans(tracking_uri, exp_id, spec.name)
        summary["wall_s"] = time.time() - t_start
        if spec.search.kind == "grid":
            with contextlib.suppress(Exception):
                left = {t.key for t in planned} - runs.finished_keys(tracking_uri, exp_id, spec.name)
                summary["missing"] = len(left)
                summary["interrupted"] = interrupted or (bool(left) and summary["errored"] == 0
                                                         and summary["failed"] < len(left))
        else:
            summary["interrupted"] = interrupted
        with contextlib.suppress(Exception):
            runs.end_parent(tracking_uri, parent, "KILLED" if summary["interrupted"] else
                            "FAILED" if summary["failed"] or summary["errored"] else "FINISHED")
        if progress:
            print(format_summary(summary), file=out, flush=True)
    return summary


def _fit(spec, ctx, pending: list[PlannedTrial], n_to_run: int, results: Path, resume: bool,
         max_concurrent: int | None, progress: bool, out, storage):
    from ray import tune

    # Ctrl-C must reach us as KeyboardInterrupt (exit 130, runs KILLED): Tune's own SIGINT handler ends fit()
    # quietly with the trials half done, indistinguishable from a sweep that lost trials. Tune still
    # checkpoints its experiment state periodically, so --resume keeps working.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    trainable = tune.with_resources(tune.with_parameters(sweep_trainable, ctx=ctx),
                                    {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
    storage_path = str(results / "ray")
    exp_dir = Path(storage_path) / spec.name
    cb = _make_progress(n_to_run, progress, out, (ctx["tracking_uri"], ctx["experiment_id"], ctx["sweep"]))
    run_config = tune.RunConfig(
        name=spec.name, storage_path=storage_path, verbose=0, callbacks=[cb],
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
    )
    conc = max_concurrent or spec.max_concurrent
    if spec.search.kind == "grid" and resume and tune.Tuner.can_restore(str(exp_dir)):
        if progress:
            print(f"resuming the Tune experiment in {exp_dir}", file=out, flush=True)
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, restart_errored=False)
        # Tune keeps its own callbacks out of the saved state: give the restored run the progress printer.
        with contextlib.suppress(Exception):
            tuner._local_tuner._run_config.callbacks = [cb]
        grid = tuner.fit()
        # A changed spec (new keys) or trials Tune had given up on: run what is still missing.
        from tracking import runs

        still = runs.finished_keys(ctx["tracking_uri"], ctx["experiment_id"], ctx["sweep"])
        rest = [t for t in pending if t.key not in still]
        if not rest:
            return grid, cb
        pending = rest
    if spec.search.kind == "grid":
        param_space = {"trial": tune.grid_search([{"key": t.key, "config": t.config} for t in pending])}
        tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=conc,
                                      trial_name_creator=lambda t: f"t_{t.config['trial']['key'][:10]}",
                                      trial_dirname_creator=lambda t: f"t_{t.config['trial']['key']}_{t.trial_id}")
    else:
        import optuna

        space = optuna_space(spec)
        dists = {k: optuna.distributions.CategoricalDistribution(list(range(len(v)))) for k, v in space.items()}
        search = _dedup_optuna_search(ctx, space=dists, metric=spec.search.metric, mode=spec.search.mode,
                                      sampler=_optuna_sampler(spec, space), study_name=spec.name, storage=storage)
        param_space = None
        tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=conc, search_alg=search,
                                      num_samples=n_to_run, trial_dirname_creator=lambda t: f"t_{t.trial_id}")
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    return tuner.fit(), cb


# ---- the summary -----------------------------------------------------------------------------------------

def ui_command(summary: dict) -> str:
    uri = summary.get("tracking_uri", "")
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"permsym ui --results {summary['results_dir']}"


def format_summary(summary: dict) -> str:
    lines = []
    trials = summary.get("trials") or []
    if trials:
        lines.append(f"{'key':16}  {'trial':36} {'status':9} {'time s':>7} {'loss':>10} {'points':>6} "
                     f"{'saddles':>7} {'1st-ord':>7}")
        for t in sorted(trials, key=lambda t: t.get("label") or ""):
            loss = t.get("min_loss")
            loss_s = f"{loss:10.3g}" if isinstance(loss, float) and math.isfinite(loss) else f"{'-':>10}"

            def n(x):
                return f"{int(x)}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"

            lines.append(f"{(t.get('trial_key') or '')[:16]:16}  {(t.get('label') or '')[:36]:36} "
                         f"{t.get('status') or '':9} {t.get('wall_s') or 0:7.1f} {loss_s} {n(t.get('n_points')):>6} "
                         f"{n(t.get('n_saddle')):>7} {n(t.get('n_first_order')):>7}")
            if t.get("failure"):
                lines.append(f"{'':18}{t['failure'][:100]}")
    times = [t["wall_s"] for t in trials if t.get("status") == "finished" and t.get("wall_s")]
    per = f"; {sum(times) / len(times):.1f} s per trial" if times else ""
    lines.append(
        f"sweep {summary['sweep']}: {summary['planned']} planned, {summary['already_finished']} already finished, "
        f"{summary['finished']} finished now, {summary['failed']} failed, {summary['errored']} errored"
        + (f", {summary['spooled']} spooled (run `permsym sync`)" if summary.get("spooled") else "")
        + (f", {summary['missing']} still missing" if summary.get("missing") else "")
        + f"; {summary.get('wall_s', 0):.1f} s{per}")
    if summary.get("interrupted"):
        lines.append("interrupted: relaunch with --resume to finish the missing trials")
    lines.append(f"browse the runs: {ui_command(summary)}")
    return "\n".join(lines)
