"""One trial end to end, pure (no Ray, no MLflow): train a network to a certified minimum, build its
permutation points in every hidden layer and order, measure the Hessian at each, check plateaus, scan the
gamma-line, trace the equal-loss paths, and count against the lower bound. `run_trial` returns the trial
record, a JSON-able dict whose keys are documented in the README ("The trial record").
"""
from __future__ import annotations

import math
import time
from itertools import combinations
from typing import Any, Callable

import numpy as np
import torch

from . import surgery, theory
from .config import SCHEMA_VERSION, TrialConfig
from .landscape import LOSS_CONVENTION, Landscape
from .minimize import minimise
from .mlp import MLPSpec, params_to_json
from .paths import permutation_path
from .permutation import GAMMA_GRID, fa_matrix, fa_prediction, plateau_check
from .spectra import analyse_landscape
from .tasks import make_task

PhaseCallback = Callable[[str, int, int], None]   # on_phase(phase, k, n): see run_trial
DEDUP_LOSS_RTOL = 1e-9       # reduced critical points closer than this in loss ...
DEDUP_PARAM_ATOL = 1e-6      # ... and in parameters (max abs, after the best neuron permutation) are one point


def _minimise(landscape: Landscape, theta0: torch.Tensor, cfg: TrialConfig, warmup: bool = True):
    return minimise(landscape, theta0, grad_tol=cfg.grad_tol, max_iter=cfg.max_iter,
                    adam_steps=cfg.adam_steps if warmup else 0, lr=cfg.lr,
                    time_limit_s=cfg.time_limit_s, seed=cfg.seed)


def _clean(x: Any) -> Any:
    """JSON-able copy: tensors and numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    return x


def _log10_times(count: int, log10_mult: float) -> float | None:
    return math.log10(count) + log10_mult if count > 0 else None


class _Trial:
    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg
        self.timings: dict[str, float] = {}
        self.task = make_task(cfg.task, seed=cfg.seed, activation=cfg.activation, **cfg.task_options)
        bias = self.task.default_bias if cfg.bias is None else cfg.bias
        self.spec = MLPSpec((self.task.n_in, *cfg.widths, self.task.n_out), cfg.activation, bias,
                            self.task.output)
        self.landscape = Landscape(self.spec, self.task.X, self.task.Y)
        self.reduced: list[dict] = []
        self.reduced_theta: list[tuple[MLPSpec, torch.Tensor, Landscape]] = []
        self.pair_points: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}
        self.points: list[dict] = []
        self.gamma_scan: list[dict] = []
        self.paths: list[dict] = []
        self.phase: PhaseCallback = lambda _p, _k, _n: None

    def _tick(self, phase: str, t0: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0

    # 1. the minimum -------------------------------------------------------------------------------
    def train_minimum(self) -> dict:
        t0 = time.perf_counter()
        res = _minimise(self.landscape, self.spec.init(self.cfg.seed, self.cfg.init_scale).to(self.landscape.device),
                        self.cfg)
        self.theta_star = res.theta
        minimum = {"loss": res.loss, "grad_inf": res.grad_inf, "converged": res.converged,
                   "stop_reason": res.stop_reason, "iterations": res.iterations, "n_params": self.spec.n_params,
                   "index": None, "n_zero": None}
        if res.converged:
            rep = analyse_landscape(self.landscape, res.theta, res.grad_inf)
            self.minimum_spectrum = rep
            minimum.update(index=rep.index, n_zero=rep.n_zero, tau=rep.tau, gap=rep.gap_ratio,
                           ambiguous=rep.ambiguous, lowest_eigenvalues=rep.lowest_eigenvalues,
                           spectrum_method=rep.method)
            if self.cfg.save_params:
                minimum["params"] = params_to_json(self.spec, res.theta)
        self._tick("minimum", t0)
        return minimum

    # 2. reduced networks ---------------------------------------------------------------------------
    def reduce(self, layer: int, order: int) -> None:
        t0 = time.perf_counter()
        pairs = surgery.neuron_pairs(self.spec, self.theta_star, layer, self.cfg.pairs, seed=self.cfg.seed)
        first = len(self.reduced)
        pair_sets = surgery.disjoint_pair_sets(pairs, order)
        for n_done, pair_set in enumerate(pair_sets):
            self.phase(f"reduced L{layer}K{order}", n_done, len(pair_sets))
            red_spec, red0, _ = surgery.merge(self.spec, self.theta_star, layer, pair_set)
            red_land = Landscape(red_spec, self.task.X, self.task.Y, device=self.landscape.device)
            res = _minimise(red_land, red0, self.cfg)
            if order == 1 and res.converged:
                self.pair_points[(layer, pair_set[0])] = surgery.unmerge(red_spec, res.theta, layer, pair_set[0])[1]
            rid = self._find_same(layer, order, red_spec, res) if res.converged else None
            if rid is not None:
                self.reduced[rid]["from_pairs"].append([list(p) for p in pair_set])
                continue
            self.reduced.append({"layer": layer, "order": order, "loss": res.loss, "grad_inf": res.grad_inf,
                                 "converged": res.converged, "stop_reason": res.stop_reason,
                                 "from_pairs": [[list(p) for p in pair_set]], "index": None, "n_zero": None})
            self.reduced_theta.append((red_spec, res.theta, red_land))
        for rid in range(first, len(self.reduced)):
            item = self.reduced[rid]
            if item["converged"]:
                red_spec, red_theta, red_land = self.reduced_theta[rid]
                rep = analyse_landscape(red_land, red_theta, item["grad_inf"])
                item.update(index=rep.index, n_zero=rep.n_zero, tau=rep.tau)
        self._tick("reduced", t0)

    def _find_same(self, layer: int, order: int, red_spec: MLPSpec, res) -> int | None:
        for rid, item in enumerate(self.reduced):
            if item["layer"] != layer or item["order"] != order or not item["converged"]:
                continue
            if abs(item["loss"] - res.loss) > DEDUP_LOSS_RTOL * max(1.0, abs(res.loss)):
                continue
            other = self.reduced_theta[rid][1]
            if surgery.distance_up_to_permutation(red_spec, other, res.theta) <= DEDUP_PARAM_ATOL:
                return rid
        return None

    # 3-6. permutation points ------------------------------------------------------------------------
    def build_points(self, layer: int, order: int) -> None:
        t0 = time.perf_counter()
        scan_before = self.timings.get("gamma_scan", 0.0)
        widths = self.spec.widths
        plateau_unit = widths[layer + 1]
        log10_mult = theory.log10_point_multiplicity(self.spec.hidden, layer, order)
        scan = self.cfg.gamma_scan if self.cfg.gamma_scan is not None else plateau_unit == 1
        todo = [rid for rid, item in enumerate(self.reduced)
                if item["layer"] == layer and item["order"] == order and item["converged"]]
        for n_done, rid in enumerate(todo):
            item = self.reduced[rid]
            self.phase(f"points L{layer}K{order}", n_done, len(todo))
            red_spec, red_theta, red_land = self.reduced_theta[rid]
            B_eigs = {m: np.linalg.eigvalsh(fa_matrix(red_land, red_theta, layer, m))
                      for m in range(red_spec.widths[layer])}
            for neurons in combinations(range(red_spec.widths[layer]), order):
                _, theta_p = surgery.duplicate(red_spec, red_theta, layer, neurons, 0.5)
                loss_p, grad_p = self.landscape.loss_grad(theta_p)
                grad_inf = float(grad_p.abs().max())
                rep = analyse_landscape(self.landscape, theta_p, grad_inf)
                critical = bool(item["converged"] and grad_inf <= self.cfg.grad_tol)
                plateau_dim = order * plateau_unit
                fa_index = (fa_prediction([B_eigs[m] for m in neurons], 0.5, item["index"], rep.tau)
                            if plateau_unit == 1 else None)
                plateau = plateau_check(self.landscape, red_spec, red_theta, layer, neurons, seed=self.cfg.seed)
                point = {
                    "layer": layer, "order": order, "reduced_id": rid, "neurons": list(neurons), "gamma": 0.5,
                    "loss": loss_p, "loss_rel_diff": abs(loss_p - item["loss"]) / max(abs(item["loss"]), 1e-300),
                    "grad_inf": grad_inf, "reduced_grad_inf": item["grad_inf"], "critical": critical,
                    "index": rep.index, "n_zero": rep.n_zero, "n_pos": rep.n_pos, "tau": rep.tau, "gap": rep.gap_ratio,
                    "ambiguous": rep.ambiguous, "lowest_eigenvalues": rep.lowest_eigenvalues,
                    "counts_agree": rep.counts_agree, "spectrum_method": rep.method, "exact": rep.exact,
                    "plateau_dim": plateau_dim,
                    "claim_zero_holds": rep.n_zero >= plateau_dim,
                    "claim_guaranteed_holds": rep.index + rep.n_zero >= plateau_dim,
                    "fa_index": fa_index,
                    "fa_eigenvalues": [B_eigs[m].tolist() for m in neurons],
                    "plateau": plateau,
                    "log10_multiplicity": log10_mult,
                }
                if self.cfg.save_params:
                    point["params"] = params_to_json(self.spec, theta_p)
                self.points.append(point)
                if scan and order == 1:
                    self._scan(layer, rid, neurons[0], red_spec, red_theta, B_eigs[neurons[0]], item)
        # the scan is timed on its own: the phases add up to the total
        self.timings["points"] = (self.timings.get("points", 0.0) + time.perf_counter() - t0
                                  - (self.timings.get("gamma_scan", 0.0) - scan_before))

    def _scan(self, layer, rid, neuron, red_spec, red_theta, B_eig, item) -> None:
        t0 = time.perf_counter()
        idx, zeros, pred = [], [], []
        for gamma in GAMMA_GRID:
            _, th = surgery.duplicate(red_spec, red_theta, layer, [neuron], gamma)
            rep = analyse_landscape(self.landscape, th, float(self.landscape.grad(th).abs().max()))
            idx.append(rep.index)
            zeros.append(rep.n_zero)
            pred.append(fa_prediction([B_eig], gamma, item["index"], rep.tau))
        self.gamma_scan.append({"layer": layer, "reduced_id": rid, "neuron": neuron, "gammas": list(GAMMA_GRID),
                                "index": idx, "n_zero": zeros, "fa_index": pred})
        self.timings["gamma_scan"] = self.timings.get("gamma_scan", 0.0) + time.perf_counter() - t0

    # 7. paths ---------------------------------------------------------------------------------------
    def trace_paths(self) -> None:
        t0 = time.perf_counter()
        items = sorted(self.pair_points.items())
        for n_done, ((layer, pair), theta_p) in enumerate(items):
            self.phase("paths", n_done, len(items))
            self.paths.append(permutation_path(self.landscape, self.theta_star, theta_p, layer, pair,
                                               n_points=self.cfg.path_points, relax=self.cfg.path_relax))
        self._tick("paths", t0)

    # 8. counts --------------------------------------------------------------------------------------
    def counts(self) -> list[dict]:
        rows = []
        for layer in range(1, self.spec.depth):
            for order in self.cfg.orders:
                pts = [p for p in self.points if p["layer"] == layer and p["order"] == order]
                mult = theory.log10_point_multiplicity(self.spec.hidden, layer, order)
                n_crit = sum(p["critical"] for p in pts)
                n_sad = sum(p["critical"] and p["index"] >= 1 for p in pts)
                n_first = sum(p["critical"] and p["index"] == 1 for p in pts)
                rows.append({
                    "layer": layer, "order": order,
                    "log10_bound": theory.log10_permutation_points_layer(self.spec.hidden, layer, order),
                    "n_reduced": sum(1 for r in self.reduced if r["layer"] == layer and r["order"] == order
                                     and r["converged"]),
                    "n_found": len(pts), "n_critical": n_crit, "n_saddle": n_sad, "n_first_order": n_first,
                    "log10_critical": _log10_times(n_crit, mult), "log10_saddle": _log10_times(n_sad, mult),
                    "log10_first_order": _log10_times(n_first, mult),
                })
        return rows


def run_trial(config: TrialConfig | dict, on_phase: PhaseCallback | None = None) -> dict:
    """Run one trial and return its record. A network that does not reach a certified minimum gives a
    record with minimum.converged False and a `failure` reason (and no points), never an exception.

    on_phase(phase, k, n), when given, is called as the trial goes: ("minimum", 0, 1), then for each
    (layer, order) ("reduced L<layer>K<order>", k, n) before the k-th of n reduced trainings,
    ("points L<layer>K<order>", k, n) before the k-th of n reduced points' analyses, ("paths", k, n)
    before the k-th of n paths, and ("done", 1, 1). It must be cheap and must not raise."""
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    phase = on_phase or (lambda _p, _k, _n: None)
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    trial = _Trial(cfg)
    trial.timings["task"] = time.perf_counter() - t0
    spec = trial.spec
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "trial_key": cfg.trial_key(),
        "config": cfg.to_dict(),
        "architecture": spec.to_dict(),
        "loss_convention": LOSS_CONVENTION[spec.output],
        "tolerances": {"grad_tol": cfg.grad_tol, "dedup_loss_rtol": DEDUP_LOSS_RTOL,
                       "dedup_param_atol": DEDUP_PARAM_ATOL},
        "task_info": trial.task.info,
        "device": str(trial.landscape.device),
        "log10_minima": theory.log10_minima(spec.hidden),
    }
    trial.phase = phase
    phase("minimum", 0, 1)
    minimum = trial.train_minimum()
    record["minimum"] = minimum
    if minimum["converged"]:
        for layer in range(1, spec.depth):
            for order in cfg.orders:
                if 2 * order > spec.widths[layer]:
                    continue                # C(n_k - K, K) = 0: no K-th order point in this layer
                trial.reduce(layer, order)
                trial.build_points(layer, order)
        trial.trace_paths()
        record["counts"] = trial.counts()
    else:
        record["failure"] = (f"minimum not converged: {minimum['stop_reason']} "
                             f"(grad_inf={minimum['grad_inf']:.3g} > grad_tol={cfg.grad_tol:g})")
        record["counts"] = []
    record.update(reduced=trial.reduced, points=trial.points, paths=trial.paths)
    if trial.gamma_scan:
        record["gamma_scan"] = trial.gamma_scan
    phase("done", 1, 1)
    trial.timings["total"] = time.perf_counter() - t_start
    record["timings"] = trial.timings
    return _clean(record)
