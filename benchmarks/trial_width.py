"""Trial cost against width (issue 12): run_trial on the toy task, sigmoid, seed 1, every pair, first order,
one and two hidden layers, each in a fresh process, against earlier code (the commits of BASELINES, each
checked out into a temporary git worktree) at the widths where those baselines are affordable.
Writes docs/trial_cost_vs_width.png. $PERMSYM_BENCH_WIDTHS_ONE / _TWO (comma lists) run fewer widths and
PERMSYM_BENCH_DEEP=0 leaves out the three-hidden-layer case; the first target line lists the cases run.
$PERMSYM_BENCH_TRIAL_TIMEOUT_S (default 900) bounds each trial's process (a wide trial can need more).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TITLE = "Trial cost against width"
ROOT = Path(__file__).resolve().parents[1]
BASELINE = "a7b8af4"            # main before issue 12's work: the sequential code
PREVIOUS = "9474a8d"            # main before permsym_core.threads: every trial on torch's default threads
BASELINES = ((BASELINE, "the sequential engine"), (PREVIOUS, "default threads"))


def _widths(env: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """The widths of one depth: `default`, or the comma list in $env (a shorter run; '' runs none)."""
    text = os.environ.get(env)
    return default if text is None else tuple(int(w) for w in text.split(",") if w.strip())


ONE = _widths("PERMSYM_BENCH_WIDTHS_ONE", (3, 4, 6, 8, 10, 14, 20))
TWO = _widths("PERMSYM_BENCH_WIDTHS_TWO", (3, 4, 5, 6, 8))
BASELINE_WIDTHS = {1: (4, 6), 2: (3,)}
DEEP_WEIGHT_DECAY = 1e-5      # the penalised run of the deep case (sweeps/teacher_depth.yaml's value)
TIMEOUT_S = int(os.environ.get("PERMSYM_BENCH_TRIAL_TIMEOUT_S", "900"))   # per trial process
NOTES = f"""\
Each row is one `run_trial` in a fresh Python process started with torch's default threads (both cores;
`threads` is the count the trial ran on, its record's `threads`: 1 for these small landscapes, whose batched
strings go back to both cores; the baselines ran on both), toy task
(teacher 2-4-1 sigmoid, 1,681 inputs), student sigmoid, seed 1, first-order points of every pair, every
other option at its default (relaxed paths, gamma scan, valleys). `seconds` is run_trial's own total
(record timings; imports excluded). Two baselines run from temporary git worktrees at the widths where they
are affordable: commit {BASELINE} (the sequential engine, before issue 12's work) and commit {PREVIOUS} (today's
code before permsym_core.threads, which runs small landscapes on one thread and the batched strings on the
cores: {PREVIOUS} ran every trial on torch's default threads, both cores). On a baseline's row `ratio` =
its seconds / this code's seconds at the same width (the speed-up of this code over it) and `agreement`
compares the two records' counts table (points found, critical, first-order saddles, per layer and order).
The three-hidden-layer rows are the teacher task with teacher widths [5, 5, 5] learned by a [5, 5, 5] student
(softplus, seed 0, every pair, 500 samples), twice: on the plain loss, where this student reaches no certified
minimum from its start (docs/finite_minima.md: the loss still falls at the iteration limit), so the time is that
of a trial that stops before building any point; and with the weight decay of sweeps/teacher_depth.yaml
(lambda = {DEEP_WEIGHT_DECAY:g}, permsym_core.penalty), whose penalised loss is coercive and has a certified minimum:
everything a penalised trial does (every merged network, its canonical form, one permutation point per merged
network: the split of its merged neurons), which is less than a plain trial does (no gamma scan, relaxed paths
or valleys: the penalty lifts them). The target is read on the first deep row whose minimum is certified, and
says when that is the penalised one. The plot is docs/trial_cost_vs_width.png."""

CHILD = r"""
import json, sys, time
from permsym_core.study import run_trial
cfg = json.loads(sys.argv[1])
t = time.perf_counter()
rec = run_trial(cfg)
print(json.dumps({"seconds": rec["timings"]["total"], "wall": time.perf_counter() - t, "timings": rec["timings"],
                  "counts": rec.get("counts"), "converged": (rec.get("minimum") or {}).get("converged"),
                  "stop_reason": (rec.get("minimum") or {}).get("stop_reason"),
                  "n_points": len(rec.get("points") or []), "threads": rec.get("threads"),
                  "P": (rec.get("minimum") or {}).get("n_params")}))
"""


def config(widths: tuple[int, ...]) -> dict:
    return {"task": "toy", "widths": list(widths), "activation": "sigmoid", "seed": 1, "pairs": "all"}


def deep_config(weight_decay: float) -> dict:
    """The three-hidden-layer case: a [5, 5, 5] softplus student of a [5, 5, 5] teacher, every pair."""
    return {"task": "teacher", "widths": [5, 5, 5], "activation": "softplus", "seed": 0, "pairs": "all",
            "task_options": {"teacher_widths": [5, 5, 5], "n_samples": 500}, "weight_decay": weight_decay}


DEEP = () if os.environ.get("PERMSYM_BENCH_DEEP") == "0" else (0.0, DEEP_WEIGHT_DECAY)


def run_one(cfg: dict, root: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True,
                             timeout=TIMEOUT_S, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {TIMEOUT_S} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def outcome(res: dict) -> str | None:
    """The row's note: the error, or what the trial did (a trial whose minimum is not certified builds no points,
    so its time is not the cost of a trial's work)."""
    if res.get("error"):
        return res["error"]
    if not res.get("converged"):
        return f"minimum not certified ({res.get('stop_reason')}): no points, not a trial's full cost"
    return f"{res.get('n_points', 0)} points"


def counts_key(res: dict) -> list:
    return sorted((c.get("layer"), c.get("order"), c.get("n_found"), c.get("n_critical"), c.get("n_first_order"))
                  for c in res.get("counts") or [])


def baseline_tree(commit: str):
    """A temporary detached worktree at `commit` (None when git or the commit is not there)."""
    tmp = tempfile.mkdtemp(prefix="permsym-baseline-")
    ok = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, commit],
                        capture_output=True, text=True)
    return Path(tmp) if ok.returncode == 0 else None


def remove_tree(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


def plot(rows: list[dict]) -> None:
    from tracking.figures import new_figure

    fig = new_figure(6, 3.8)
    ax = fig.subplots()
    for depth, marker in ((1, "o"), (2, "s")):
        for method, ls in (("permsym (this code)", "-"), *((f"baseline {c}", st) for (c, _), st
                                                            in zip(BASELINES, ("--", ":")))):
            pts = sorted((r["width"], r["seconds"]) for r in rows
                         if r.get("depth") == depth and r["method"] == method and r.get("seconds")
                         and r.get("converged"))      # an uncertified minimum: no trial's cost
            if pts:
                ax.plot(*zip(*pts), marker=marker, ls=ls, label=f"{depth} hidden layer{'s' * (depth > 1)}, {method}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("hidden width (every layer)")
    ax.set_ylabel("run_trial seconds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title("Trial cost against width (toy task, sigmoid, every pair, K = 1)", fontsize=9)
    fig.savefig(ROOT / "docs" / "trial_cost_vs_width.png", dpi=120)


def run(quick: bool = False) -> list[dict]:
    cases = [(1, w) for w in (ONE[:3] if quick else ONE)] + [(2, w) for w in (TWO[:2] if quick else TWO)]
    rows, trees = [], {} if quick else {c: baseline_tree(c) for c, _ in BASELINES}
    try:
        for depth, w in cases:
            cfg = config((w,) * depth)
            res = run_one(cfg, ROOT)
            row = dict(benchmark="trial_width", case=f"toy {'x'.join([str(w)] * depth)} sigmoid seed 1",
                       P=res.get("P"), threads=res.get("threads", "-"), method="permsym (this code)",
                       depth=depth, width=w,
                       seconds=res.get("seconds"), note=outcome(res), converged=res.get("converged"),
                       stop_reason=res.get("stop_reason"))
            rows.append(row)
            for commit, what in BASELINES:
                if trees.get(commit) is None or w not in BASELINE_WIDTHS[depth]:
                    continue
                b = run_one(cfg, trees[commit])
                brow = dict(row, method=f"baseline {commit}", seconds=b.get("seconds"), note=outcome(b),
                            threads="-" if b.get("error") else b.get("threads") or os.cpu_count(),
                            converged=b.get("converged"), stop_reason=b.get("stop_reason"))
                if b.get("seconds") and res.get("seconds") and b.get("converged") and res.get("converged"):
                    brow.update(ratio=b["seconds"] / res["seconds"],
                                baseline=f"this code over {commit} ({what})",
                                agreement="counts equal" if counts_key(b) == counts_key(res) else
                                f"counts differ: {counts_key(res)} vs {counts_key(b)}")
                rows.append(brow)
        for wd in () if quick else DEEP:
            res = run_one(deep_config(wd), ROOT)
            rows.append(dict(benchmark="trial_width",
                             case=f"teacher [5, 5, 5] softplus, every pair, {_loss_name(dict(weight_decay=wd))}",
                             P=res.get("P"), threads=res.get("threads", "-"), method="permsym (this code)", depth=3,
                             width=5, weight_decay=wd, seconds=res.get("seconds"), note=outcome(res),
                             converged=res.get("converged"), stop_reason=res.get("stop_reason")))
    finally:
        for tree in trees.values():
            if tree is not None:
                remove_tree(tree)
    plot(rows)
    return rows


def _loss_name(row: dict) -> str:
    wd = row.get("weight_decay") or 0.0
    return f"weight decay {wd:g}" if wd else "plain loss"


def targets(rows: list[dict]) -> list[str]:
    def timed(depth, w):
        """This code's timed row at (depth, width), or None."""
        return next((r for r in rows if r.get("depth") == depth and r.get("width") == w
                     and r["method"].startswith("permsym") and r.get("seconds")), None)

    def sec(depth, w):                    # seconds of a certified trial: what the targets are about
        r = timed(depth, w)
        return r["seconds"] if r and r.get("converged") else None

    def unconverged(depth, w):            # a timed row whose minimum is not certified (no trial's cost)
        r = timed(depth, w)
        return r if r and not r.get("converged") else None

    run = {d: sorted({r["width"] for r in rows if r.get("depth") == d and r["method"].startswith("permsym")})
           for d in (1, 2, 3)}
    out = [f"cases run: one hidden layer, widths {run[1] or 'none'}; two, widths {run[2] or 'none'}; "
           f"the three-hidden-layer teacher {'yes' if run[3] else 'no'}"]
    for w, limit in ((4, 1.5), (6, 4.0), (10, 15.0), (20, 120.0)):
        s, bad = sec(1, w), unconverged(1, w)
        out.append(f"NOT MET: toy width {w} <= {limit:g} s: the minimum is not certified ({bad.get('stop_reason')})"
                   if bad is not None else
                   f"not measured: width {w} <= {limit:g} s" if s is None else
                   f"{'MET' if s <= limit else 'NOT MET'}: toy width {w} <= {limit:g} s: {s:.1f} s")
    a, b = sec(1, 4), sec(1, 10)
    if a and b:
        out.append(f"{'MET' if b / a <= 10 else 'NOT MET'}: cost from width 4 to 10 grows at most 10x: {b / a:.1f}x")
    deep = [r for r in rows if r.get("depth") == 3 and r["method"].startswith("permsym")]
    timed_deep = [r for r in deep if r.get("seconds")]
    done = next((r for r in timed_deep if r.get("converged")), None)
    failed = "; ".join(
        [f"{_loss_name(r)}: the student's minimum is not certified ({r.get('stop_reason')}), the "
         f"{r['seconds']:.1f} s it took built no points (issue 11)" for r in timed_deep if not r.get("converged")]
        + [f"{_loss_name(r)}: not measured ({r.get('note')})" for r in deep if not r.get("seconds")])
    name = "three-hidden-layer teacher [5, 5, 5], every pair, <= 60 s"
    if done is not None:
        scope = (f" on the penalised loss only ({_loss_name(done)}: a penalised trial has no gamma scan, relaxed "
                 "paths or valleys, and one point per merged network)" if done.get("weight_decay") else "")
        out.append(f"{'MET' if done['seconds'] <= 60 else 'NOT MET'}{scope}: {name}: {done['seconds']:.1f} s"
                   f"{'; ' + failed if failed else ''}")
    elif timed_deep:
        out.append(f"NOT MET: {name}: {failed}")
    elif deep:
        out.append(f"not measured: {name}: {failed}")
    return out
