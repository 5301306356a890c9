"""Dispatcher: run the benchmark modules listed in benchmarks.MODULES and write BENCHMARKS.md.

Each module gets its own section between markers, so `--only NAME` refreshes one section and keeps the rest.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import re
from pathlib import Path

import torch

from . import MODULES

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("# BENCHMARKS\n\nEvery figure comes from `python -m benchmarks` (sections refreshed one by one with "
          "`--only NAME`); each row names its baseline, timed in the same run on the same machine.\n")
COLUMNS = ["case", "P", "method", "threads", "seconds", "ratio", "baseline", "agreement", "note"]


def machine() -> str:
    """One line: cores, CPU model, GPU, torch, memory, load average (the box may be shared)."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    mem = "?"
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2 ** 20:.0f} GiB"
    return (f"{os.cpu_count()} cores, {cpu}, GPU: {gpu}, RAM {mem}, torch {torch.__version__}, "
            f"Python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def section(name: str, module, rows: list[dict], quick: bool, load_before: str) -> str:
    lines = [f"<!-- bench:{name} -->", f"## {module.TITLE}", "",
             f"- Date: {datetime.datetime.now().isoformat(timespec='seconds')}; mode: {'quick' if quick else 'full'}",
             f"- Machine: {machine()}",
             f"- Load average (1/5/15 min) before: {load_before}; after: {loadavg()} (the benchmark's own threads "
             f"count: up to the number of cores is this run alone)"
             + (" — the machine was shared with other jobs; timings carry that noise." if
                max(float(load_before.split()[0]), float(loadavg().split()[0])) > (os.cpu_count() or 1) + 0.5
                else ""),
             "", "Targets:", ""]
    lines += [f"- {t}" for t in module.targets(rows)]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    notes = getattr(module, "NOTES", "")
    lines += (["", notes.strip()] if notes else []) + [f"<!-- /bench:{name} -->"]
    return "\n".join(lines) + "\n"


def write_report(path: Path, sections: dict[str, str]) -> None:
    text = path.read_text() if path.exists() else HEADER
    for name, body in sections.items():
        pat = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->\n", re.S)
        text = pat.sub(lambda _m: body, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + body
    path.write_text(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes only (a few minutes)")
    ap.add_argument("--only", choices=MODULES, help="run one benchmark module")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="report file (default: %(default)s)")
    args = ap.parse_args(argv)
    sections = {}
    for name in [args.only] if args.only else MODULES:
        module = importlib.import_module(f"benchmarks.{name}")
        load_before = loadavg()
        rows = module.run(quick=args.quick)
        sections[name] = section(name, module, rows, args.quick, load_before)
        print(sections[name], flush=True)
    write_report(args.out, sections)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
