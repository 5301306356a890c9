"""Memory: peak resident memory of a trial-like workload (landscape, structured Hessian, `analyse`: all
eigenvalues plus the spectrum-slicing counts) in a fresh process, against 8 P^2 bytes for one dense Hessian.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TITLE = "Memory: peak resident memory against one dense Hessian (8 P^2 bytes)"
NOTES = """\
Each row is a fresh Python process (`python -c`, 2 torch threads) that imports torch and permsym_core,
builds the data and the landscape of a 10-h-1 softplus net with biases on N = 1000 Gaussian inputs (the
Hessian benchmark's 1-hidden-layer scaling case), then runs what a trial runs at each point:
spectra.analyse_landscape (the structured Hessian, all its eigenvalues, tau, and the counts by spectrum
slicing: two LDL^T factorisations). Peak resident memory is the process's own VmHWM (/proc/self/status),
read after the imports and data (`import + data` rows) and at the end (`trial-like workload` rows);
the process's ru_maxrss (getrusage) is given in `note` as a cross-check. `ratio` = peak / (8 P^2),
the baseline being one dense float64 Hessian; `note` also gives (peak - import + data peak) / (8 P^2): the
workload's own footprint in dense Hessians. The P = 19,993 row (issue 12: exact counts at P = 20,000) builds the
structured Hessian and counts it by spectrum slicing only (two LDL^T of H -/+ tau I, tau = 10 P eps |lambda|_max with
|lambda|_max from ARPACK on the dense matrix), without the eigenvalues. On CUDA the matrices live in GPU memory: the peak allocated
there (torch.cuda.max_memory_allocated) is given in `note` and the host RSS says little."""

CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(2)
from permsym_core.landscape import Landscape
from permsym_core.mlp import DTYPE, MLPSpec, default_device
from permsym_core import spectra

def hwm():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None

h, N = int(sys.argv[1]), 1000
spec = MLPSpec((10, h, 1), "softplus", True, "regression")
gen = torch.Generator().manual_seed(0)
X = torch.randn(N, 10, generator=gen, dtype=DTYPE)
Y = torch.tanh(X @ torch.randn(10, 1, generator=gen, dtype=DTYPE))
L = Landscape(spec, X, Y, device=default_device())
theta = L.as_theta(spec.init(0) + 0.1 * torch.randn(spec.n_params, generator=gen, dtype=DTYPE))
base = hwm()
t0 = time.perf_counter()
g = L.grad(theta)
if sys.argv[2] == "analyse":
    rep = spectra.analyse_landscape(L, theta, float(g.abs().max()))
    method, counts, agree, parts = rep.method, [rep.index, rep.n_zero, rep.n_pos], rep.counts_agree, {}
else:   # "counts": the structured Hessian and its exact counts by two LDL^T (no eigenvalues)
    import numpy as np
    from scipy.sparse.linalg import eigsh
    from permsym_core.hessian import structured_hessian
    H = structured_hessian(L, theta)
    t_build = time.perf_counter() - t0
    lam_max = float(abs(eigsh(H.numpy(), k=1, which="LM", return_eigenvectors=False)[0]))
    tau = 10 * spec.n_params * np.finfo(np.float64).eps * lam_max
    t1 = time.perf_counter()
    counts = list(spectra.count(H, tau))
    method, agree = "LDL^T slicing", None
    parts = {"build_s": t_build, "count_s": time.perf_counter() - t1, "tau": tau}
out = {"P": spec.n_params, "device": str(L.device), "base": base, "peak": hwm(), "seconds": time.perf_counter() - t0,
       "method": method, "counts": counts, "counts_agree": agree, **parts,
       "cuda_peak": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
       "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
print(json.dumps(out))
"""

HIDDEN = {1000: 83, 10000: 833, 20000: 1666}   # 10-h-1 with biases: P = 12 h + 1 = 997, 9997 and 19993


def sizes(quick: bool) -> list[int]:
    return [1000] if quick else [1000, 10000, 20000]


def measure(h: int, mode: str = "analyse", timeout_s: float = 2400) -> dict:
    """Run the workload for hidden width h in a fresh process; its JSON line."""
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(h), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=root)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"memory workload (h={h}) failed ({proc.returncode}): {err.strip()[-500:]}")
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    rows = []
    for target in sizes(quick):
        if target == 20000:       # exact counts only: all 20,000 eigenvalues would take ~10 min more here
            rec = measure(HIDDEN[target], "counts")
            P = rec["P"]
            rows.append(dict(benchmark="memory", case=f"10-{HIDDEN[target]}-1 softplus, N=1000 ({rec['device']})",
                             P=P, threads=2, method="exact counts (structured H + two LDL^T)",
                             seconds=rec["seconds"], ratio=rec["peak"] / (8.0 * P ** 2),
                             baseline=f"8 P^2 = {8.0 * P ** 2 / 2**20:.0f} MiB (one dense Hessian)",
                             note=f"peak RSS {rec['peak'] / 2**20:.0f} MiB; build {rec['build_s']:.0f} s, counts "
                                  f"{rec['count_s']:.0f} s; (index, n_zero, n_pos) = {tuple(rec['counts'])} at "
                                  f"tau = {rec['tau']:.2g}", peak=rec["peak"], extra_dense=(rec["peak"] - rec["base"]) / (8.0 * P ** 2)))
            continue
        rec = measure(HIDDEN[target])
        P, dense = rec["P"], 8.0 * rec["P"] ** 2
        base = dict(benchmark="memory", case=f"10-{HIDDEN[target]}-1 softplus, N=1000 ({rec['device']})", P=P,
                    threads=2)
        bl = f"8 P^2 = {dense / 2**20:.0f} MiB (one dense Hessian)"
        rows.append(dict(base, method="import + data (no Hessian)", seconds=None, ratio=rec["base"] / dense,
                         baseline=bl, note=f"peak RSS {rec['base'] / 2**20:.0f} MiB", peak=rec["base"]))
        cuda = f"; CUDA peak allocated {rec['cuda_peak'] / 2**20:.0f} MiB" if rec.get("cuda_peak") else ""
        rss = f"; ru_maxrss {rec['ru_maxrss'] / 2**20:.0f} MiB" if rec.get("ru_maxrss") else ""
        rows.append(dict(base, method="trial-like workload (Hessian + analyse)", seconds=rec["seconds"],
                         ratio=rec["peak"] / dense, baseline=bl,
                         agreement=("counts agree (eigenvalues = slicing)" if rec["counts_agree"] else
                                    f"counts {rec['method']}: agree={rec['counts_agree']}"),
                         note=f"peak RSS {rec['peak'] / 2**20:.0f} MiB; (peak - import + data) / 8P^2 = "
                              f"{(rec['peak'] - rec['base']) / dense:.2f}; spectrum {rec['method']}" + rss + cuda,
                         peak=rec["peak"], extra_dense=(rec["peak"] - rec["base"]) / dense))
    return rows


def targets(rows: list[dict]) -> list[str]:
    work = [r for r in rows if r["method"].startswith(("trial-like", "exact counts"))]
    return ["no numeric target (issue 6 asks for the comparison): " + "; ".join(
        f"P = {r['P']}: peak {r['peak'] / 2**20:.0f} MiB = {r['ratio']:.1f} x 8P^2, of which the workload's own "
        f"{r['extra_dense']:.1f} x 8P^2" for r in work) + "."]
