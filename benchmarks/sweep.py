"""Sweep overhead and scaling: the same toy trials (a) in a plain loop of run_trial in this process, (b) through
`permsym sweep` (sweeps.runner.run_sweep: embedded Ray Tune + MLflow on SQLite) with 1 concurrent trial,
(c) with 2, and (d) on a two-node ray.cluster_utils.Cluster (1 CPU each), counting the nodes that ran trials.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TITLE = "Sweep: overhead of Ray and MLflow, scaling to 2 workers and 2 nodes"
LOOP = "plain loop of run_trial (1 thread)"
CEILING = "two plain loops at once, one per core (ceiling)"
NOTES = """\
Trials: the toy task, widths [4] and [5], activations sigmoid and g, seeds 0 and 1 (8 trials of ~5 s or more;
quick mode: width [4] only, 4 trials), first-order points of every pair, every other option at its default (as in
sweeps/toy.yaml). All rows run the same trials (sweeps.plan.plan of one spec), each on 1 thread (the sweep's
`resources: {cpus: 1}` gives a trial's process 1 torch thread; the loop sets the same).
(a) `plain loop`: run_trial for each trial in turn, in this process, no Ray, no MLflow. (b) and (c):
sweeps.runner.run_sweep (what `permsym sweep` calls, minus the CLI's imports) into a fresh temporary results
folder, 1 or 2 concurrent trials, embedded local Ray (`address="local"`, num_cpus = cores), every trial in its
own child process, one MLflow child run each on SQLite; the time is the whole call: Ray start and stop, the
store's creation, Tune, logging. (d) the 4 width-4 trials with 2 concurrent trials on a ray.cluster_utils.Cluster of
two nodes with 1 CPU each on this machine (the cluster's start is not timed; its baseline is the loop's time
for those 4 trials, the sum of their run_trial totals); `note` counts the distinct Ray
node ids that ran trials (each trial reports the node id of its Tune worker; the trial record logged to
MLflow carries it too, as worker.node_id). Overhead per trial = ((b) - (a)) / n; its share = overhead / mean
trial time of (a). (e) 1,000 trivial trials (toy width [1]: no pair to merge, ~0.1 s each) in the loop and
through the sweep at its default concurrency (2 trials at once on this machine; the grid is cut into chunks of
trials per Tune trial, sweeps.chunks): overhead per trial = (sweep - loop) / 1,000, and trials per second.
(f) 24 toy width-5 sigmoid trials (seeds 0-23, 4-10 s each on 1 thread): in (c) one of the 8 trials takes ~4x
the others and holds the 2-worker makespan whatever the runner does, so the 2-worker target is measured
again here on trials of even cost, the loop against the sweep with 2 workers, with each run's figures drawn (the
default) and with `figures: false` (full mode only). The 1-worker row's `note` splits each trial's time as the runner logs it (MLflow metrics
time_total and time_trial_wall, and the wall time reported to Tune): run_trial in the child process, the
trainable's work before it, and the logging after it. The `fixed start-up` row times alone what every sweep pays once (creating the SQLite
store and experiment, starting and stopping embedded Ray) to split that overhead into fixed and per-trial. Speed-up = (a) / (c). On a shared machine both are differences and ratios of noisy
wall times: read them with the load average above. The `ceiling` row runs the loop's trials in two plain
processes at once, split into halves of equal measured time (no Ray, no MLflow, no child processes, imports
not timed): the most any 2-worker runner can get from this machine's cores; (c) is compared with it too. The grid
is scheduled longest first by the cost model of sweeps.cost (LPT), so a long trial does not start last."""


def spec_dict(name: str, quick: bool) -> dict:
    return {"name": name, "task": "toy",
            "grid": {"widths": [[4]] if quick else [[4], [5]], "activations": ["sigmoid", "g"], "seeds": [0, 1],
                     "orders": [1], "pairs": "all"},
            "search": {"kind": "grid"}, "resources": {"cpus": 1, "gpus": 0}, "max_failures": 0,
            "trial_time_limit_s": 1200}


def planned(quick: bool) -> list:
    from sweeps.plan import plan
    from sweeps.spec import load_spec

    return plan(load_spec(spec_dict("bench-loop", quick)))


def plain_loop(trials: list) -> tuple[float, list[dict]]:
    """(wall seconds, records): run_trial for every planned trial, 1 torch thread, in this process."""
    from permsym_core.study import run_trial
    from permsym_core.threads import torch_threads

    with torch_threads(1):
        t0 = time.perf_counter()
        records = [run_trial(t.config) for t in trials]
        return time.perf_counter() - t0, records


def sweep(name: str | dict, quick: bool, max_concurrent: int, address: str | None = None) -> tuple[float, dict]:
    """(wall seconds of run_sweep, its summary) into a fresh temporary results folder; `name` may be a spec."""
    from sweeps.runner import run_sweep

    spec = name if isinstance(name, dict) else spec_dict(name, quick)
    with tempfile.TemporaryDirectory(prefix=f"permsym-bench-{spec['name']}-") as tmp:
        t0, c0 = time.perf_counter(), os.times()
        summary = run_sweep(spec, address=address, results_dir=tmp, progress=False,
                            max_concurrent=max_concurrent, stream=io.StringIO())
        wall, c1 = time.perf_counter() - t0, os.times()
        summary["breakdown"] = breakdown(summary)
        summary["driver_cpu_s"] = (c1.user - c0.user) + (c1.system - c0.system)
        return wall, summary


def breakdown(summary: dict) -> dict | None:
    """Where a sweep's trial time goes, summed over its FINISHED runs, from what the runner logs: run_trial
    inside the trial's child process (metric time_total), the trainable up to the child's answer (time_trial_wall:
    idempotency check, MLflow run start, child process start), and the whole trainable (the trial's wall_s
    reported to Tune, after logging). None when the store cannot be read."""
    try:
        from tracking import runs

        uri, exp = summary["tracking_uri"], summary["experiment_id"]
        found = runs.search_all(uri, [exp], runs.trial_filter(summary["sweep"], "attributes.status = 'FINISHED'"))
        walls = {t["trial_key"]: t.get("wall_s") for t in summary.get("trials") or []}
        total = before = after = 0.0
        for r in found:
            m, key = r.data.metrics, r.data.tags.get("trial_key")
            if key not in walls or "time_total" not in m or "time_trial_wall" not in m or walls[key] is None:
                continue
            total += m["time_total"]
            before += m["time_trial_wall"] - m["time_total"]
            after += walls[key] - m["time_trial_wall"]
        return {"run_trial": total, "before": before, "logging": after, "n": len(found)}
    except Exception:  # noqa: BLE001 - the breakdown is extra information, never a reason to fail the benchmark
        return None


def breakdown_note(summary: dict, wall: float) -> str:
    b = summary.get("breakdown")
    if not b or not b["n"]:
        return "breakdown unavailable"
    rest = wall - b["run_trial"] - b["before"] - b["logging"]
    n = b["n"]
    return (f"per trial: run_trial {b['run_trial'] / n:.2f} s, before it (idempotency check, MLflow run start, "
            f"child process) {b['before'] / n:.2f} s, logging {b['logging'] / n:.2f} s; outside the trials "
            f"(Ray, Tune, store; overlapped trials make this negative) {rest:.1f} s")


def cluster_sweep(spec: dict) -> tuple[float, dict, int]:
    """(wall seconds, summary, nodes) of a 2-concurrent sweep of `spec` on a 2-node Cluster (1 CPU per node)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        wall, summary = sweep(spec, True, 2, address=cluster.address)
        return wall, summary, len(cluster.list_all_nodes())
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()


def status_note(summary: dict, n: int) -> str:
    cpu = summary.get("driver_cpu_s")
    return (f"{summary['finished']}/{n} finished, {summary['failed']} failed, {summary['errored']} errored; "
            f"run_sweep's own wall {summary.get('wall_s', 0):.1f} s"
            + (f", the driver process's own CPU {cpu:.1f} s" if cpu is not None else ""))


def trial_agreement(summary: dict, records: list[dict]) -> str:
    """Same trials, same science: converged flags and minimum losses by key against the loop's records."""
    loop = {r["trial_key"]: r for r in records}
    bad = []
    for t in summary.get("trials") or []:
        r = loop.get(t.get("trial_key"))
        if r is None or t.get("status") != "finished":
            bad.append(f"{(t.get('trial_key') or '?')[:8]} {t.get('status')}")
            continue
        a, b = r["minimum"]["loss"], t.get("min_loss")
        if b is None or abs(a - b) > 1e-9 * max(abs(a), 1e-300):
            bad.append(f"{t['trial_key'][:8]} loss {a:.6g} vs {b}")
    missing = summary.get("planned", 0) - len(summary.get("trials") or [])
    if missing > 0:
        bad.append(f"{missing} trials missing")
    return "same minima as the loop" if not bad else "DIFFER: " + "; ".join(bad[:4])


def fixed_costs() -> tuple[float, float]:
    """(seconds to create a fresh MLflow SQLite store and experiment, seconds to start and stop embedded Ray):
    the per-sweep start-up inside (b) and (c), timed alone to split their overhead into fixed and per-trial."""
    import ray

    from tracking.store import prepare_store, results_uri

    with tempfile.TemporaryDirectory(prefix="permsym-bench-store-") as tmp:
        t0 = time.perf_counter()
        prepare_store(results_uri(tmp), "bench-store")
        t_store = time.perf_counter() - t0
    if ray.is_initialized():
        return t_store, float("nan")
    from sweeps.ray_start import init_ray

    t0 = time.perf_counter()
    init_ray(None, {"RAY_USAGE_STATS_ENABLED": "0"})         # as run_sweep starts it
    ray.shutdown()
    return t_store, time.perf_counter() - t0


_HALF = """\
import sys, time, torch
torch.set_num_threads(1)
from benchmarks.sweep import planned
from permsym_core.study import run_trial
trials = planned(sys.argv[1] == "quick")
print("ready", flush=True)
sys.stdin.readline()
for i in sys.argv[2:]:
    run_trial(trials[int(i)].config)
print("done", flush=True)
"""


def parallel_loops(quick: bool, records: list[dict]) -> float:
    """The machine's own ceiling for 2 workers: the loop's trials split in two halves of about equal measured
    time (greedy, longest first), each run by a plain loop in its own process, both at once. Wall seconds from
    the moment both processes have imported everything until both are done."""
    import subprocess
    import sys
    from pathlib import Path

    times = [r["timings"]["total"] for r in records]
    halves: list[list[int]] = [[], []]
    load = [0.0, 0.0]
    for i in sorted(range(len(times)), key=lambda i: -times[i]):
        k = load.index(min(load))
        halves[k].append(i)
        load[k] += times[i]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", _HALF, "quick" if quick else "full", *map(str, h)],
                              cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for h in halves]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("parallel loop: a half did not start")
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            if p.stdout.readline().strip() != "done":
                raise RuntimeError("parallel loop: a half did not finish")
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.wait(timeout=60)


EVEN_SEEDS = 24       # (f): many trials of even cost, so that 2 workers' makespan is the runner's, not one trial's


def even_spec(n: int, figures: bool = True) -> dict:
    return {"name": "bench-even", "task": "toy", "figures": figures,
            "grid": {"widths": [[5]], "activations": ["sigmoid"], "seeds": list(range(n)), "orders": [1],
                     "pairs": "all"},
            "search": {"kind": "grid"}, "resources": {"cpus": 1, "gpus": 0}, "max_failures": 0,
            "trial_time_limit_s": 1200}


def even_rows(n: int) -> list[dict]:
    """(f): n toy width-5 sigmoid trials (seeds 0..n-1, 4-10 s each on 1 thread, none far longer than the
    rest), the loop against the sweep with 2 workers: the 2-worker target on trials of at least ~5 s, where
    no single trial holds the makespan."""
    from sweeps.plan import plan
    from sweeps.spec import load_spec

    trials = plan(load_spec(even_spec(n)))
    t_loop, records = plain_loop(trials)
    times = sorted(r["timings"]["total"] for r in records)
    base = dict(benchmark="sweep", case=f"{n} even toy trials (width 5 sigmoid)", threads=1)
    rows = [dict(base, method=LOOP, seconds=t_loop,
                 note=f"{t_loop / n:.1f} s per trial (shortest {times[0]:.1f} s, median {times[n // 2]:.1f} s, "
                      f"longest {times[-1]:.1f} s)")]
    for figures, method in ((True, "permsym sweep, 2 workers"), (False, "permsym sweep, 2 workers, figures: false")):
        wall, summary = sweep(even_spec(n, figures), False, 2)
        rows.append(dict(base, method=method, seconds=wall, ratio=t_loop / wall, baseline=LOOP,
                         agreement=trial_agreement(summary, records), speedup=t_loop / wall,
                         note=f"speed-up {t_loop / wall:.2f}x over the loop; the fixed start-up is in it; "
                              + ("each run's 5 PNGs drawn beside the trials (the default); " if figures else
                                 "no per-run PNGs (a large sweep's choice); ") + status_note(summary, n)))
    return rows


def trivial_spec(n: int) -> dict:
    return {"name": "bench-trivial", "task": "toy",
            "grid": {"widths": [[1]], "activations": ["sigmoid"], "seeds": list(range(n))},
            "search": {"kind": "grid"}, "resources": {"cpus": 1, "gpus": 0}, "max_failures": 0}


def trivial_rows(n: int) -> list[dict]:
    """(e): n trivial trials, the loop against the sweep at its default concurrency."""
    from sweeps.plan import plan
    from sweeps.spec import load_spec

    trials = plan(load_spec(trivial_spec(n)))
    t_loop, records = plain_loop(trials)
    wall, summary = sweep(trivial_spec(n), False, None)
    over = (wall - t_loop) / n
    base = dict(benchmark="sweep", case=f"{n} trivial trials (toy width 1)", threads=1)
    return [dict(base, method=LOOP, seconds=t_loop, note=f"{t_loop / n:.3f} s per trial, {n / t_loop:.1f} trials/s"),
            dict(base, method="permsym sweep, default concurrency", seconds=wall, ratio=t_loop / wall, baseline=LOOP,
                 agreement=trial_agreement(summary, records), overhead=over,
                 note=f"overhead {over:.3f} s per trial; {n / wall:.1f} trials/s; " + status_note(summary, n))]


def run(quick: bool = False) -> list[dict]:
    trials = planned(quick)
    n = len(trials)
    from permsym_core.study import run_trial

    run_trial({"task": "toy", "widths": [2], "adam_steps": 50, "max_iter": 5, "path_relax": False})  # warm-up
    t_loop, records = plain_loop(trials)
    conv = sum(bool(r["minimum"]["converged"]) for r in records)
    mean = t_loop / n
    base = dict(benchmark="sweep", case=f"{n} toy trials", threads=1)
    rows = [dict(base, method=LOOP, seconds=t_loop, agreement=f"{conv}/{n} converged",
                 note=f"{mean:.1f} s per trial")]
    t_store, t_ray = fixed_costs()
    fixed = t_store + t_ray
    t1, s1 = sweep("bench-1w", quick, 1)
    over = (t1 - t_loop) / n
    rows.append(dict(base, method="permsym sweep, 1 worker", seconds=t1, ratio=t_loop / t1, baseline=LOOP,
                     agreement=trial_agreement(s1, records), overhead=over, share=over / mean,
                     note=f"overhead {over:.2f} s per trial = {100 * over / mean:.1f}% of a trial "
                          f"({fixed / n:.2f} s of it the fixed start-up below, spread over {n} trials); "
                          + breakdown_note(s1, t1) + "; " + status_note(s1, n)))
    t_par = parallel_loops(quick, records)
    rows.append(dict(base, method=CEILING, seconds=t_par, ratio=t_loop / t_par, baseline=LOOP,
                     note=f"{t_loop / t_par:.2f}x over the loop: what 2 processes on this machine's {os.cpu_count()} "
                          "cores give with no Ray, no MLflow and the trials split evenly by their measured times"))
    t2, s2 = sweep("bench-2w", quick, 2)
    rows.append(dict(base, method="permsym sweep, 2 workers", seconds=t2, ratio=t_loop / t2, baseline=LOOP,
                     agreement=trial_agreement(s2, records), speedup=t_loop / t2, ceiling=t_loop / t_par,
                     note=f"speed-up {t_loop / t2:.2f}x over the loop, {t_par / t2:.2f} of the two-loop ceiling "
                          f"above; " + status_note(s2, n)))
    rows.append(dict(base, case="per sweep, timed alone", method="fixed start-up: MLflow store + Ray start/stop",
                     seconds=fixed, ratio=fixed / t1, baseline="share of (b), the 1-worker sweep",
                     note=f"fresh SQLite store and experiment {t_store:.1f} s; embedded Ray init + shutdown "
                          f"{t_ray:.1f} s; per-trial overhead without them {(t1 - t_loop - fixed) / n:.2f} s "
                          f"= {100 * (t1 - t_loop - fixed) / n / mean:.1f}% of a trial"))
    if not quick:
        small = [t for t in trials if t.config["widths"] == [4]]     # 4 trials: enough to show the spread
        loop_small = sum(r["timings"]["total"] for r in records if r["config"]["widths"] == [4])
        tc, sc, n_nodes = cluster_sweep(spec_dict("bench-2node", True))
        nodes = {t.get("node_id") for t in sc.get("trials") or [] if t.get("node_id")}
        rows.append(dict(base, case=f"{len(small)} toy trials (width 4)",
                         method="permsym sweep, 2-node Cluster (1 CPU each)", seconds=tc, ratio=loop_small / tc,
                         baseline="the loop's time for these trials", agreement=trial_agreement(sc, records),
                         nodes_used=len(nodes),
                         note=f"trials ran on {len(nodes)} distinct nodes of {n_nodes}; "
                              + status_note(sc, len(small))))
        rows += even_rows(EVEN_SEEDS)
    rows += trivial_rows(100 if quick else 1000)
    return rows


def targets(rows: list[dict]) -> list[str]:
    out = []
    one = next((r for r in rows if r["method"] == "permsym sweep, 1 worker"), None)
    two = next((r for r in rows if r["method"] == "permsym sweep, 2 workers"), None)
    even = [r for r in rows if r["method"].startswith("permsym sweep, 2 workers") and "even" in r["case"]]
    if one:
        out.append(f"{'MET' if one['share'] <= 0.05 else 'NOT MET'}: overhead of the whole stack <= 5% of trial "
                   f"time — {one['overhead']:.2f} s per trial, {100 * one['share']:.1f}% ({one['case']}, 1 worker "
                   f"against the plain loop).")
    if two:
        out.append(f"{'MET' if two['speedup'] >= 1.8 else 'NOT MET'}: speed-up >= 1.8 at 2 workers on "
                   f"{os.cpu_count()} cores — {two['speedup']:.2f}x (this machine's own ceiling, two plain loops "
                   f"at once: {two['ceiling']:.2f}x; {two['case']}, one of them ~4x the others).")
    for r in even:
        out.append(f"{'MET' if r['speedup'] >= 1.8 else 'NOT MET'}: speed-up >= 1.8 at 2 workers on "
                   f"{os.cpu_count()} cores, trials of ~5 s and even cost — {r['speedup']:.2f}x ({r['case']}"
                   + (", figures: false" if "figures: false" in r["method"] else ", figures drawn (default)") + ").")
    triv = next((r for r in rows if r["method"] == "permsym sweep, default concurrency"), None)
    if triv:
        out.append(f"{'MET' if triv['overhead'] <= 0.1 else 'NOT MET'}: overhead <= 0.1 s per trial on "
                   f"{triv['case']} — {triv['overhead']:.3f} s.")
    cl = next((r for r in rows if "Cluster" in r["method"]), None)
    if cl:
        out.append(f"{'MET' if cl['nodes_used'] == 2 else 'NOT MET'}: trials spread over both nodes of a two-node "
                   f"Cluster — {cl['nodes_used']} distinct node ids.")
    else:
        out.append("not measured: the two-node Cluster run (quick mode skips it).")
    bad = [r for r in rows if str(r.get("agreement", "")).startswith("DIFFER")]
    out.append(("MET" if not bad else "NOT MET") + ": every sweep found the same minima as the loop"
               + (f" (differs: {', '.join(r['method'] for r in bad)})" if bad else "") + ".")
    return out
