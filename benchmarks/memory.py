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
workload's own footprint in dense Hessians. On CUDA the matrices live in GPU memory: the peak allocated
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
rep = spectra.analyse_landscape(L, theta, float(g.abs().max()))
out = {"P": spec.n_params, "device": str(L.device), "base": base, "peak": hwm(), "seconds": time.perf_counter() - t0,
       "method": rep.method, "counts": [rep.index, rep.n_zero, rep.n_pos], "counts_agree": rep.counts_agree,
       "cuda_peak": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
       "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
print(json.dumps(out))
"""

HIDDEN = {1000: 83, 10000: 833}          # 10-h-1 with biases: P = 12 h + 1 = 997 and 9997


def sizes(quick: bool) -> list[int]:
    return [1000] if quick else [1000, 10000]


def measure(h: int, timeout_s: float = 1200) -> dict:
    """Run the workload for hidden width h in a fresh process; its JSON line."""
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(h)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
    work = [r for r in rows if r["method"].startswith("trial-like")]
    return ["no numeric target (issue 6 asks for the comparison): " + "; ".join(
        f"P = {r['P']}: peak {r['peak'] / 2**20:.0f} MiB = {r['ratio']:.1f} x 8P^2, of which the workload's own "
        f"{r['extra_dense']:.1f} x 8P^2" for r in work) + "."]
