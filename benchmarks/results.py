"""`permsym results` on a store of N FINISHED trial runs: today's cached query (cold: empty cache; warm: the
same command again) against the uncached query of commit BASELINE, on SQLite and through a `mlflow server`.

N is PERMSYM_BENCH_RESULTS_N (default 10,000; quick mode 300). The stores are made by benchmarks.bigstore.
Every timing is the whole command in a fresh process (`python -m benchmarks._results_cli`, i.e. `permsym
results --sweep big --format csv` with imports), and the three CSV outputs are compared byte for byte.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import bigstore

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "a7b8af4"          # main before the cache (tracking/query.py of that commit, run unchanged)
BASELINE_NAME = f"uncached query of {BASELINE}"
TITLE = "Results at scale: `permsym results` on N finished runs, cached vs uncached"
NOTES = f"""\
Store: benchmarks/bigstore.py (a few runs logged through tracking.runs from the real toy records, then copied
inside the SQLite database with fresh run ids and trial keys, ended 1 s apart; artifacts hard-linked; no
figures). `baseline`: `permsym results` with tracking/query.py of {BASELINE} (one search of every run with all
its data, then one artifact download per converged run: a get_run and a copy each); it is stopped after
PERMSYM_BENCH_BASELINE_LIMIT_S (default 600 s) and then shown as `> limit`. `cold`: today's code with an empty
cache (one full listing, artifacts read by their URI, all kept); `warm`: the same command again (a listing of
the runs ended in the last 5 minutes before the newest one, the deleted and the not-FINISHED runs; everything else
from the cache). `agreement`: the CSV output of cold and warm against the baseline's, byte for byte."""


def _baseline_source(tmp: Path) -> Path | None:
    p = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE}:tracking/query.py"], capture_output=True,
                       text=True)
    if p.returncode != 0:
        return None
    out = tmp / f"query_{BASELINE}.py"
    out.write_text(p.stdout)
    return out


def _cli(mode: str, src: Path | None, uri: str, cache_dir: Path, limit: float) -> tuple[float | None, str]:
    env = dict(os.environ, PERMSYM_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT),
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "benchmarks._results_cli", mode, str(src or "-"), "--", "results", "--sweep",
           bigstore.SWEEP, "--tracking-uri", uri, "--format", "csv"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, ""
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"permsym results ({mode}) exited {proc.returncode}: {err[-2000:]}")
    return wall, out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(folder: Path) -> tuple[subprocess.Popen, str]:
    from tracking.store import server_env

    port = _free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--serve-artifacts",
           "--artifacts-destination", str(folder / "artifacts"), "--workers", "2"]
    env = server_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    _stop(proc)
    raise RuntimeError(f"mlflow server did not start; see {folder / 'server.log'}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _rows(backend: str, n: int, uri: str, src: Path | None, tmp: Path, make_s: float, limit: float) -> list[dict]:
    base_s, base_out = _cli("baseline", src, uri, tmp / f"cache-none-{backend}", limit) if src else (None, "")
    cache_dir = tmp / f"cache-{backend}"
    cold_s, cold_out = _cli("current", None, uri, cache_dir, 1800)
    warm_s, warm_out = _cli("current", None, uri, cache_dir, 1800)
    n_rows = max(len(cold_out.strip().splitlines()) - 1, 0)
    case = f"{n} finished runs, {backend}"
    rows = [dict(case=case, method=f"baseline: {BASELINE_NAME}", seconds=base_s if base_s is not None else None,
                 note=(f"stopped at the {limit:.0f} s limit" if src and base_s is None else
                       "no git history: baseline not run" if not src else f"{n_rows} summary rows")
                 + f"; store made in {make_s:.0f} s")]
    for name, s, out in (("cold: cached query, empty cache", cold_s, cold_out),
                         ("warm: cached query, second call", warm_s, warm_out)):
        if base_s is not None:
            agree = "same CSV as baseline" if out == base_out else "DIFFERS from baseline"
            ratio = base_s / s
        else:
            agree = ("cold = warm (baseline unfinished)" if cold_out == warm_out else "cold != warm")
            ratio = None
        rows.append(dict(case=case, method=name, seconds=s, ratio=ratio,
                         baseline=BASELINE_NAME if ratio is not None else (f"> {limit:.0f} s" if src else None),
                         agreement=agree, note=f"{n_rows} summary rows"))
    if base_s is None and src:
        for r in rows[1:]:
            r["ratio_lower_bound"] = limit / r["seconds"]
            r["note"] += f"; >= {limit / r['seconds']:.0f}x the baseline (which did not finish)"
    return rows


def run(quick: bool = False) -> list[dict]:
    n = int(os.environ.get("PERMSYM_BENCH_RESULTS_N", 300 if quick else 10_000))
    limit = float(os.environ.get("PERMSYM_BENCH_BASELINE_LIMIT_S", 600))
    rows = []
    with tempfile.TemporaryDirectory(prefix="permsym-bench-results-") as tmp:
        tmp = Path(tmp)
        src = _baseline_source(tmp)
        t0 = time.perf_counter()
        uri = bigstore.make_sqlite_store(tmp / "sqlite", n)
        rows += _rows("SQLite", n, uri, src, tmp, time.perf_counter() - t0, limit)
        (tmp / "served").mkdir()
        proc, srv = _server(tmp / "served")
        try:
            t0 = time.perf_counter()
            bigstore.make_served_store(srv, tmp / "served" / "mlflow.db", tmp / "served" / "artifacts", n)
            rows += _rows("mlflow server (--serve-artifacts, SQLite)", n, srv, src, tmp, time.perf_counter() - t0,
                          limit)
        finally:
            _stop(proc)
    for r in rows:
        r["threads"] = "-"
    return rows


def targets(rows: list[dict]) -> list[str]:
    out = []
    for backend, limit in (("SQLite", 10.0), ("mlflow server", 30.0)):
        warm = [r for r in rows if r["case"].split(", ", 1)[1].startswith(backend) and r["method"].startswith("warm")]
        if not warm:
            continue
        w = warm[0]
        n = int(w["case"].split()[0])
        scale = "" if n >= 10_000 else f" (measured at N = {n}, not 10,000)"
        out.append(f"{'MET' if w['seconds'] <= limit and n >= 10_000 else 'NOT MET' if n >= 10_000 else 'NOT SHOWN'}"
                   f": `permsym results` on 10,000 finished runs <= {limit:.0f} s ({backend}) — warm "
                   f"{w['seconds']:.1f} s{scale}.")
    bad = [r for r in rows if "DIFFER" in str(r.get("agreement", "")) or "!=" in str(r.get("agreement", ""))]
    out.append(("MET" if not bad else "NOT MET") + ": the cached results equal the baseline's"
               + (f" (differ: {', '.join(r['case'] + ' ' + r['method'] for r in bad)})" if bad else "") + ".")
    return out
