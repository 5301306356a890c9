"""Run a sweep on Ray Tune: embedded local Ray by default, a cluster when asked; MLflow as the system of record.

Driver order (DESIGN.md section 3): check what can be checked before anything starts (resources on this
machine, an MNIST data_root, an existing Optuna study against the spec) -> prepare the store and the
experiment -> the keys that already have a FINISHED run -> start or join Ray and check that a trial fits
on some node -> the sweep's parent run -> close the runs whose owner is gone -> Ray Tune (grid, or Optuna
with a study persisted beside the MLflow store). The pieces live apart: `sweeps.trainable` (one trial),
`sweeps.isolation` (its child process), `sweeps.progress` (progress lines), `sweeps.ray_start`,
`sweeps.optuna_search`, `sweeps.summary`; the store is a `tracking.sweepstore.SweepStore`.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from tracking.metrics import trial_metrics  # noqa: F401  (re-exported: sweeps.runner.trial_metrics)
from tracking.owner import Owner
from tracking.sweepstore import SweepStore

from .chunks import cost_chunks
from .cost import schedule_costs
from .context import SweepContext, trial_of
from .figure_writer import FigureWriter
from .isolation import TrialCrashed, run_isolated  # noqa: F401  (re-exported)
from .plan import PlannedTrial, plan
from .progress import Progress, make_progress  # noqa: F401  (re-exported)
from .spec import SpecError, SweepSpec, load_spec
from .summary import SweepSummary, TrialRow, format_summary, ui_command  # noqa: F401  (re-exported)
from .trainable import phase_text, sweep_trainable  # noqa: F401  (re-exported)

DEFAULT_RESULTS = "./permsym-results"


def check_before_start(spec: SweepSpec, address: str | None) -> None:
    """What can fail before Ray starts: Ray's token turned off, a trial larger than this machine, an MNIST
    data_root without the MNIST files (local sweeps: a cluster's workers may see other disks)."""
    from .ray_start import check_auth_local, check_fits_local

    if address:
        return
    check_auth_local()
    check_fits_local(spec.resources.cpus)
    root = spec.task_options.get("data_root") if spec.task == "mnist" else None
    if root is not None:
        from permsym_core.tasks import MNIST_RAW_FILES

        raw = Path(root) / "MNIST" / "raw"
        missing = [f for f in MNIST_RAW_FILES if not (raw / f).is_file()]
        if missing:
            raise SpecError(f"task_options.data_root: expected a folder with MNIST/raw/{MNIST_RAW_FILES[0]} and "
                            f"the other MNIST idx files, got {str(root)!r} (missing {', '.join(missing)})")


def _collect(summary: SweepSummary, results_grid, outcomes: dict, elsewhere: set[str],
             done_before: frozenset[str] = frozenset()) -> None:
    """Count the trials' outcomes: every report the driver saw (`outcomes`, one per trial, a chunk's trials
    included), then what only the result grid knows: the Tune trials that errored (each of their trials with
    no outcome counts as errored) and the trials of a restored experiment that ended before this run. A
    restored Tune trial's metrics are its last report only, and a restored chunk re-reports its trials that had
    ended before the kill as skipped: a key FINISHED before this launch (`done_before`) is counted in
    `already_finished` and nowhere else."""
    from tracking import spool

    seen = {key for _, key in outcomes}
    rows = list(outcomes.values())
    for r in results_grid:
        m = r.metrics or {}
        cfg = r.config or {}
        keys = [t["key"] for t in cfg["trials"]] if "trials" in cfg else \
            [cfg["trial"]["key"]] if "trial" in cfg else [m.get("trial_key")]
        if r.error is not None:
            summary.errored += sum(1 for k in keys if k is None or k not in seen)
        elif m.get("status") and m.get("trial_key") not in seen and m.get("trial_key") not in done_before:
            rows.append(m)
    for m in rows:
        st = m.get("status")
        if st == "skipped" and m.get("trial_key") in done_before:
            continue                        # a restored chunk passing over a key counted in already_finished
        if m.get("spool_payload"):          # a record the worker could not log: kept by the driver
            with contextlib.suppress(Exception):
                spool.write_payload(summary.results_dir, json.loads(m["spool_payload"]))
        if st in ("finished", "spooled"):
            summary.finished += 1
            summary.spooled += st == "spooled"
        elif st == "failed":
            summary.failed += 1
        elif st == "skipped":
            summary.skipped += 1
        elif st == "elsewhere":
            summary.elsewhere += 1
            elsewhere.add(m.get("trial_key"))
        if st:
            summary.trials.append(TrialRow.from_result(m))
    summary.ran = summary.finished + summary.failed


def run_sweep(spec, *, address: str | None = None, tracking_uri: str | None = None,
              results_dir: str | os.PathLike = DEFAULT_RESULTS, resume: bool = False, progress: bool = True,
              max_concurrent: int | None = None, stream=None) -> SweepSummary:
    """Run (or continue) a sweep; return its summary (see `format_summary`)."""
    from tracking import runs
    from tracking.store import prepare_store, redact_uri, results_uri, split_credentials

    from . import optuna_search as osearch

    spec = load_spec(spec)
    out = stream or sys.stdout
    t_start = time.time()
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_before_start(spec, address)
    results = Path(results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or results_uri(results)
    # user:password@ in the URI: MLflow reads them from the environment instead, so the URI that is printed,
    # handed to Ray and logged never carries them (local workers inherit this process's environment).
    tracking_uri, creds = split_credentials(tracking_uri)
    os.environ.update(creds)
    if creds and "MLFLOW_TRACKING_URI" in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri

    planned = plan(spec)
    study = storage = None
    space = osearch.search_space(spec) if spec.search.kind == "optuna" else {}
    if spec.search.kind == "optuna":                  # a SpecError here comes before any store is written
        osearch.make_sampler(spec, space)
        storage = osearch.storage_for(results, tracking_uri, spec.max_failures)
        already, study = osearch.open_study(spec, storage, space)
    with runs.guard(tracking_uri):                   # a dead server: TrackingUnavailable, one line in the CLI
        exp_id = prepare_store(tracking_uri, spec.experiment_name)
    store = SweepStore(tracking_uri, exp_id, spec.name)
    owner = Owner.this_process()
    done_before = store.finished_keys()

    if spec.search.kind == "grid":
        pending = [t for t in planned if t.key not in done_before]
        n_planned, already = len(planned), len(planned) - len(pending)
    else:
        n_planned = spec.search.n_trials or osearch.space_size(space)
        pending = []
    n_to_run = len(pending) if spec.search.kind == "grid" else max(0, n_planned - already)

    ctx = SweepContext(store=store, parent_run_id="", owner=owner, results_dir=str(results),
                       cpus=spec.resources.cpus, time_limit_s=spec.trial_time_limit_s, task=spec.task,
                       task_options=dict(spec.task_options), dims=spec.grid.dimensions(),
                       labels={t.key: t.label() for t in planned}, figures=spec.figures)
    summary = SweepSummary(sweep=spec.name, experiment=spec.experiment_name, experiment_id=exp_id,
                           parent_run_id="", tracking_uri=tracking_uri, results_dir=str(results),
                           search=spec.search.kind, planned=n_planned, already_finished=already)
    parent_tags = {"planned": n_planned, "driver_host": owner.host, "driver_pid": owner.pid,
                   "permsym.owner": owner.tag()}
    if progress:
        print(f"sweep {spec.name}: {n_planned} trials planned, {already} already finished, {n_to_run} to run; "
              f"store {redact_uri(tracking_uri)}", file=out, flush=True)
    if n_to_run == 0:
        summary.parent_run_id = runs.get_or_create_parent(tracking_uri, exp_id, spec.name, spec.to_dict(),
                                                          running=True, tags=parent_tags)
        runs.end_parent(tracking_uri, summary.parent_run_id, "FINISHED")
        summary.wall_s = time.time() - t_start
        if progress:
            print(format_summary(summary), file=out, flush=True)
        return summary

    from .ray_start import check_fits, init_ray, node_capacity

    env_vars = {"MLFLOW_TRACKING_URI": tracking_uri, "RAY_USAGE_STATS_ENABLED":
                os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    owns_ray = init_ray(address, env_vars)
    try:
        check_fits(spec.resources.cpus, spec.resources.gpus, node_capacity())
    except SpecError:
        if owns_ray:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
        raise
    parent = runs.get_or_create_parent(tracking_uri, exp_id, spec.name, spec.to_dict(), running=True,
                                       tags=parent_tags)
    summary.parent_run_id = parent
    ctx = SweepContext(**{**ctx.__dict__, "parent_run_id": parent})
    store.close_orphans(owner)                        # runs a dead driver or worker left RUNNING
    interrupted = False
    elsewhere: set[str] = set()
    figures = FigureWriter(tracking_uri)
    # a grid's keys FINISHED before this launch are its already_finished and nothing else; an Optuna repeat of
    # a finished key is a trial of this launch (it uses one of n_trials) and counts as skipped
    counted_before = frozenset(done_before) if spec.search.kind == "grid" else frozenset()
    try:
        results_grid, outcomes = _fit(spec, ctx, pending, n_to_run, results, resume, max_concurrent, progress,
                                      out, storage, space, figures.submit if spec.figures else None,
                                      counted_before)
        _collect(summary, results_grid, outcomes, elsewhere, counted_before)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if progress and figures.queued and not interrupted:
            print(f"drawing the figures of {figures.queued} more runs", file=out, flush=True)
        with contextlib.suppress(Exception):
            figures.close(wait=not interrupted)
        if progress and figures.failed and not interrupted:
            print(f"{figures.failed} runs have no figures (their drawing failed; records and metrics are "
                  "complete, `permsym report` draws from the records)", file=out, flush=True)
        with contextlib.suppress(Exception):
            store.close_orphans(owner)
        if owns_ray:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
            with contextlib.suppress(Exception):          # what a worker opened while Ray was going down
                store.close_orphans(owner)
        _sync_spool(summary, results)
        summary.wall_s = time.time() - t_start
        if spec.search.kind == "grid":
            with contextlib.suppress(Exception):
                left = {t.key for t in planned} - store.finished_keys()
                summary.missing = len(left)
                lost = left - elsewhere - set(summary.pending_keys)
                summary.interrupted = interrupted or (bool(lost) and summary.errored == 0
                                                      and summary.failed < len(lost))
        else:
            summary.interrupted = interrupted
        with contextlib.suppress(Exception):
            runs.end_parent(tracking_uri, parent, "KILLED" if summary.interrupted else
                            "FAILED" if summary.failed or summary.errored else "FINISHED")
        if progress:
            print(format_summary(summary), file=out, flush=True)
    return summary


def _sync_spool(summary: SweepSummary, results: Path) -> None:
    """Log what was spooled during the sweep if the server is back; say what is still pending."""
    from tracking import spool

    if not spool.spooled(results):
        return
    with contextlib.suppress(Exception):
        summary.synced = spool.sync(results)
    left = spool.spooled(results)
    summary.pending_keys = sorted(p.stem for p in left)
    summary.pending = len(left)


def _slots(spec: SweepSpec, conc: int | None) -> int:
    """How many trials can run at once: the cluster's CPUs (and GPUs) over a trial's, at most max_concurrent."""
    import ray

    have = ray.cluster_resources()
    n = int(have.get("CPU", 1) // spec.resources.cpus) if spec.resources.cpus else 1
    if spec.resources.gpus:
        n = min(n, int(have.get("GPU", 0) // spec.resources.gpus))
    return max(1, min(n, conc) if conc else n)


def _fit(spec: SweepSpec, ctx: SweepContext, pending: list[PlannedTrial], n_to_run: int, results: Path,
         resume: bool, max_concurrent: int | None, progress: bool, out, storage, space, on_outcome=None,
         done_before: frozenset[str] = frozenset()):
    """Run the Tune experiment; (its result grid, every trial outcome the driver saw: Progress.outcomes).
    `done_before`: a grid's keys FINISHED before this launch (counted in already_finished, not in the progress)."""
    from ray import tune

    from . import optuna_search as osearch

    # Ctrl-C must reach us as KeyboardInterrupt (exit 130, runs KILLED): Tune's own SIGINT handler ends fit()
    # quietly with the trials half done, indistinguishable from a sweep that lost trials. Tune still
    # checkpoints its experiment state periodically, so --resume keeps working.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    trainable = tune.with_resources(tune.with_parameters(sweep_trainable, ctx=ctx),
                                    {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
    storage_path = str(results / "ray")
    exp_dir = Path(storage_path) / spec.name
    cb = make_progress(n_to_run, progress, out, ctx.store, on_outcome, before=done_before)
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
        still = ctx.store.finished_keys()
        rest = [t for t in pending if t.key not in still]
        if not rest:
            return grid, cb.outcomes
        pending = rest
    if spec.search.kind == "grid":
        fixed = spec.trials_per_task if isinstance(spec.trials_per_task, int) else None
        # longest first, cut into chunks of about equal modelled work (sweeps.cost, sweeps.chunks)
        chunks = cost_chunks(pending, schedule_costs([t.config for t in pending]), _slots(spec, conc), fixed)
        param_space = {"trials": tune.grid_search([[{"key": t.key, "config": t.config} for t in c]
                                                   for c in chunks])}
        tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=conc,
                                      trial_name_creator=lambda t: f"t_{t.config['trials'][0]['key'][:10]}",
                                      trial_dirname_creator=lambda t: f"t_{t.config['trials'][0]['key']}_{t.trial_id}")
    else:
        search = osearch.dedup_optuna_search(
            lambda params: trial_of(params, ctx)[0], space,
            space={k: p.distribution() for k, p in space.items()}, metric=spec.search.metric,
            mode=spec.search.mode, sampler=osearch.make_sampler(spec, space), study_name=spec.name,
            storage=storage)
        param_space = None
        tune_config = tune.TuneConfig(reuse_actors=True, max_concurrent_trials=conc, search_alg=search,
                                      num_samples=n_to_run, trial_dirname_creator=lambda t: f"t_{t.trial_id}")
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    return tuner.fit(), cb.outcomes
