"""One trial end to end: `permsym trial` (run_trial: toy task, widths 4 and 6, sigmoid, seed 0, default options)
split by phase from the record's `timings`. No honest baseline exists for a whole trial (nothing else computes
the same record), so each phase's `ratio` is its share of the trial's total, and the process row gives
run_trial's share of the command's wall time (the rest is start-up: imports, JSON).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TITLE = "One trial end to end, by phase"
WIDTHS = (4, 6)
SHARE = "share of total (no baseline exists)"
NOTES = """\
Each case (quick mode: width 4 only) is one `permsym trial --task toy --widths W --json` command (sigmoid, seed 0, default options:
3000 Adam steps, grad_tol 1e-10, first-order points of every pair, gamma scan, relaxed paths), run in a fresh
process started with torch's default threads (the machine's cores; `threads` is the count the trial ran on,
its record's `threads`: 1 for these small landscapes, whose batched strings go back to the cores, see
permsym_core.threads). Phase rows come from the record's `timings`:
task (data), minimum (train to a certified minimum and its spectrum), reduced (merged networks trained to
critical points), points (permutation points and their Hessian spectra, plateaus, FA prediction),
gamma_scan (the gamma-line), paths (the equal-loss paths, relaxed), other (the rest of run_trial: counts,
the record). The record's `points` timing includes the gamma scan (run_trial times the scan inside the points
loop); the `points` row here is points minus gamma_scan, so that the phase rows add up to the total.
No baseline exists (no other tool computes the same record), so the `ratio` of a phase row = phase seconds /
run_trial total (its share; not a speed-up). `permsym trial (process)` is the command's wall time; its
`ratio` is run_trial's total over that wall time (the rest is Python start-up, imports and printing).
`agreement`: the trial's own verdict (converged, points found / certified critical / first-order saddles)."""


def command(width: int) -> list[str]:
    exe = Path(sys.executable).with_name("permsym")
    head = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from sweeps.cli import main; "
                                            "sys.argv[0] = 'permsym'; main()"]
    return head + ["trial", "--task", "toy", "--widths", str(width), "--activation", "sigmoid", "--seed", "0",
                   "--json"]


def run_cli(width: int, timeout_s: float = 1800) -> tuple[float, dict]:
    """(wall seconds of the command, its trial record)."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    t0 = time.perf_counter()
    out = subprocess.run(command(width), capture_output=True, text=True, timeout=timeout_s, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"permsym trial --widths {width} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


def verdict(record: dict) -> str:
    mini = record.get("minimum") or {}
    if not mini.get("converged"):
        return f"NOT converged: {record.get('failure', '?')}"
    c = record.get("counts") or []
    tot = {f: sum(int(r.get(f) or 0) for r in c) for f in ("n_found", "n_critical", "n_first_order")}
    return (f"converged (|g| {mini.get('grad_inf', float('nan')):.1e}); {tot['n_found']} points, "
            f"{tot['n_critical']} critical, {tot['n_first_order']} first-order")


def rows_for(width: int, wall: float, record: dict) -> list[dict]:
    t = dict(record.get("timings") or {})
    total = t.pop("total")
    t["other"] = max(0.0, total - sum(t.values()))
    P = (record.get("minimum") or {}).get("n_params")
    base = dict(benchmark="trial", case=f"toy 2-{width}-1 sigmoid seed 0", P=P,
                threads=record.get("threads", "-"))
    rows = [dict(base, method=f"phase: {name}", seconds=s, ratio=s / total, baseline=SHARE)
            for name, s in sorted(t.items(), key=lambda kv: -kv[1])]
    rows.append(dict(base, method="run_trial total", seconds=total, agreement=verdict(record)))
    rows.append(dict(base, method="permsym trial (process)", seconds=wall, ratio=total / wall,
                     baseline="run_trial's share of the command's wall time",
                     note=f"start-up and output: {wall - total:.2f} s"))
    return rows


def run(quick: bool = False) -> list[dict]:
    rows = []
    for w in WIDTHS[:1] if quick else WIDTHS:     # quick: width 4 only (a trial cannot be made smaller honestly)
        wall, record = run_cli(w)
        rows += rows_for(w, wall, record)
    return rows


def targets(rows: list[dict]) -> list[str]:
    out = []
    for r in [r for r in rows if r["method"] == "run_trial total"]:
        phases = [p for p in rows if p["case"] == r["case"] and p["method"].startswith("phase")]
        top = max(phases, key=lambda p: p["seconds"])
        out.append(f"no target (issue 6 asks for the split): {r['case']}: {r['seconds']:.1f} s, "
                   f"{top['method'][7:]} takes {100 * top['ratio']:.0f}%; {r['agreement']}.")
    return out
