"""permsym benchmarks: `python -m benchmarks [--quick] [--only NAME]` runs them and rewrites BENCHMARKS.md.

A benchmark module exposes ``TITLE`` (a heading), ``run(quick: bool) -> list[dict]`` (table rows),
``targets(rows) -> list[str]`` (one line per performance target: met or not, and why) and optionally
``NOTES`` (text under its table). Register a new module by adding its name to MODULES; the dispatcher in
__main__ does the rest.
"""
import os

# Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads slow every small op
# by orders of magnitude (see research/hessian.md §3). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODULES = ["hessian", "counting", "minimise", "batched", "batched_chunk", "trial", "trial_width", "sweep", "memory", "results"]
