"""One trial end to end, pure (no Ray, no MLflow): train a network to a certified minimum, build its
permutation points in every hidden layer and order, measure the Hessian at each, check plateaus, scan the
gamma-line, trace the equal-loss paths, and count against the lower bound. `run_trial` returns the trial
record, a JSON-able dict whose keys are documented in the README ("The trial record").
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import combinations
from typing import Callable

import numpy as np
import torch

from . import surgery, theory, trial_paths
from .canonical import (DEDUP_PARAM_RTOL, Canonical, canonicalise, orient, same_loss, same_point,
                        zero_loss_scale)
from .certify import polish
from .config import TrialConfig
from .counting import count_rows
from .landscape import Landscape
from .minimize import dense_second_order, minimise
from .minimise_batched import minimise_many
from .batched import batched_loss_grad
from .mlp import MLPSpec, params_to_json
from .penalty import merged_multiplicities
from .permutation import (GAMMA_GRID, c_spectrum, fa_matrix, fa_prediction, negative_lower_bound, plateau_check,
                          predicted_index, split_eigenvalues)
from .points import analyse_point
from .point_batch import analyse_points, gamma_line
from .tasks import make_task
from .threads import landscape_threads
from .trial_record import clean, failure_reason, record_header


PhaseCallback = Callable[[str, int, int], None]   # on_phase(phase, k, n): see run_trial


def _minimise_options(cfg: TrialConfig, warmup: bool = True) -> dict:
    return dict(grad_tol=cfg.grad_tol, max_iter=cfg.max_iter, adam_steps=cfg.adam_steps if warmup else 0,
                lr=cfg.lr, time_limit_s=cfg.time_limit_s, seed=cfg.seed, dense_max_params=cfg.dense_max_params)


def _minimise(landscape: Landscape, theta0: torch.Tensor, cfg: TrialConfig, warmup: bool = True):
    return minimise(landscape, theta0, **_minimise_options(cfg, warmup))


@dataclass
class _Reduced:
    """A distinct reduced critical point (or an unconverged reduced training) and what it needs later."""

    spec: MLPSpec
    theta: torch.Tensor
    landscape: Landscape
    newton_step: torch.Tensor | None = None      # the Newton correction left at theta (see certify.polish)
    canonical: Canonical | None = None
    split: tuple[int, ...] = ()                  # under a weight decay: the merged neurons, the only ones to split


class _Trial:
    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg
        self.timings: dict[str, float] = {}
        self.task = make_task(cfg.task, seed=cfg.seed, activation=cfg.activation, student_widths=cfg.widths,
                              **cfg.task_options)
        bias = self.task.default_bias if cfg.bias is None else cfg.bias
        self.spec = MLPSpec((self.task.n_in, *cfg.widths, self.task.n_out), cfg.activation, bias,
                            self.task.output)
        self.landscape = Landscape(self.spec, self.task.X, self.task.Y, device=cfg.torch_device(),
                                   weight_decay=cfg.weight_decay)
        self.penalised = cfg.weight_decay > 0
        self.loss_scale = zero_loss_scale(self.landscape)
        self.reduced: list[dict] = []
        self.state: list[_Reduced] = []
        self.n_pair_sets: dict[tuple[int, int], int] = {}
        self.pair_points: dict[tuple[int, tuple[int, int]], torch.Tensor] = {}
        self.points: list[dict] = []
        self.gamma_scan: list[dict] = []
        self.paths: list[dict] = []
        self.halves: dict = {}
        self.valleys: list[dict] = []
        self.valley_groups: list[dict] = []
        self.permuted_paths: list[dict] = []
        self.phase: PhaseCallback = lambda _p, _k, _n: None

    def _tick(self, phase: str, t0: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0

    def _polished(self, landscape: Landscape, theta: torch.Tensor):
        """Newton-polish a certified point; the Hessian at the result comes with it."""
        return polish(landscape, theta)

    # 1. the minimum -------------------------------------------------------------------------------
    def train_minimum(self) -> dict:
        t0 = time.perf_counter()
        res = _minimise(self.landscape, self.spec.init(self.cfg.seed, self.cfg.init_scale).to(self.landscape.device),
                        self.cfg)
        self.theta_star = res.theta
        minimum = {"loss": res.loss, "grad_inf": res.grad_inf, "converged": res.converged,
                   "stop_reason": res.stop_reason, "iterations": res.iterations, "n_params": self.spec.n_params,
                   "index": None, "n_zero": None, "is_minimum": None, "channel": res.info.get("channel")}
        if res.converged:
            pol = self._polished(self.landscape, res.theta)
            self.theta_star = pol.theta
            ana = analyse_point(self.landscape, pol.theta, pol.grad_inf, pol.hessian,
                                theta_next=pol.theta + pol.newton_step)
            minimum.update(loss=pol.loss, grad_inf=pol.grad_inf, polish=pol.info(), **ana.fields())
            if self.penalised:
                minimum["data_loss"] = self.landscape.data_loss(pol.theta)
            minimum["is_minimum"] = ana.report.index == 0
            if self.cfg.save_params:
                minimum["params"] = params_to_json(self.spec, pol.theta)
        self._tick("minimum", t0)
        return minimum

    def pair_sets(self, layer: int, order: int) -> list[tuple[tuple[int, int], ...]]:
        """The pair sets of (layer, order) to merge: cfg.pairs, at most cfg.max_pair_sets (surgery.pair_sets)."""
        return surgery.pair_sets(self.spec, self.theta_star, layer, self.cfg.pairs, order,
                                 limit=self.cfg.max_pair_sets, seed=self.cfg.seed)

    # 2. reduced networks ---------------------------------------------------------------------------
    def merged(self, layer: int, pair_sets) -> tuple[MLPSpec | None, Landscape | None, list[torch.Tensor]]:
        """theta* merged along each pair set of one order in `layer`: the one architecture they leave, its
        landscape on the task's data (shared by all), and each merged network's start (None, None, [] if none).
        Under a weight decay the shared landscape carries lambda on every parameter, which is not the restricted
        problem: minimise each merged network on `member`'s landscape, never on this one."""
        merged = [surgery.merge(self.spec, self.theta_star, layer, pair_set)[:2] for pair_set in pair_sets]
        if not merged:
            return None, None, []
        red_spec = merged[0][0]
        return red_spec, self.landscape.smaller(red_spec), [red0 for _spec, red0 in merged]

    def member(self, red_land: Landscape, layer: int, pair_set) -> tuple[Landscape, tuple[int, ...]]:
        """The landscape one merged network is minimised on, and its merged neurons: the shared one without a
        weight decay; with one, the penalty whose coefficients make the pair set's split exact
        (permsym_core.penalty: a merged neuron stands for 2 copies)."""
        if not self.penalised:
            return red_land, ()
        mult = merged_multiplicities(self.spec, layer, pair_set)
        return (self.landscape.smaller(red_land.spec, mult),
                tuple(p for p, m in enumerate(mult[layer]) if m > 1))

    def reduce(self, layer: int, order: int) -> None:
        t0 = time.perf_counter()
        pair_sets = self.pair_sets(layer, order)
        self.n_pair_sets[(layer, order)] = len(pair_sets)
        first = len(self.reduced)
        red_spec, red_land, starts = self.merged(layer, pair_sets)
        batched = None
        if (len(starts) > 1 and self.cfg.batches_reduced()          # lock step: the dense trust region's
                and dense_second_order(red_spec.n_params, self.cfg.dense_max_params)):   # requests batch
            self.phase(f"reduced L{layer}K{order}", 0, len(pair_sets))
            batched = minimise_many(red_land, starts, **_minimise_options(self.cfg))
        for n_done, pair_set in enumerate(pair_sets):
            self.phase(f"reduced L{layer}K{order}", n_done, len(pair_sets))
            land, split = self.member(red_land, layer, pair_set)
            res = _minimise(land, starts[n_done], self.cfg) if batched is None else batched[n_done]
            theta, loss, grad_inf, pol = res.theta, res.loss, res.grad_inf, None
            if res.converged:
                pol = self._polished(land, res.theta)
                theta, loss, grad_inf = pol.theta, pol.loss, pol.grad_inf
                if order == 1 and not self.penalised:
                    self.pair_points[(layer, pair_set[0])] = surgery.unmerge(red_spec, theta, layer, pair_set[0])[1]
            rid = self._find_same_raw(layer, order, red_spec, theta, loss) if res.converged else None
            if rid is not None:
                self.reduced[rid]["from_pairs"].append([list(p) for p in pair_set])
                continue
            item = {"id": len(self.reduced), "layer": layer, "order": order, "loss": loss, "grad_inf": grad_inf,
                    "converged": res.converged, "stop_reason": res.stop_reason,
                    "from_pairs": [[list(p) for p in pair_set]], "index": None, "n_zero": None,
                    "reducible": None, "reduced_by": None, "reducibility_undetermined": None, "undetermined_by": None,
                    "canonical_widths": None, "same_canonical_as": [],
                    "channel": res.info.get("channel")}
            if pol is not None:
                item["polish"] = pol.info()
            if self.penalised:
                item.update(data_loss=land.data_loss(theta), split_neurons=list(split))
            if self.cfg.save_params:
                item["params"] = params_to_json(red_spec, theta)
            self.reduced.append(item)
            self.state.append(_Reduced(red_spec, theta, land, newton_step=None if pol is None else pol.newton_step,
                                       split=split))
            if pol is not None:
                item.update(analyse_point(land, theta, grad_inf, pol.hessian, check_escape=False,
                                          theta_next=theta + pol.newton_step).fields())
        self._tick("reduced", t0)
        t0 = time.perf_counter()
        self._canonicalise(first)
        self._tick("canonical", t0)

    def _find_same_raw(self, layer: int, order: int, red_spec: MLPSpec, theta, loss: float) -> int | None:
        for rid, item in enumerate(self.reduced):
            if item["layer"] != layer or item["order"] != order or not item["converged"]:
                continue
            if not same_loss(item["loss"], loss, self.loss_scale):
                continue
            other = orient(red_spec, self.state[rid].theta, self.penalised)
            tol = DEDUP_PARAM_RTOL * max(1.0, float(theta.abs().max()))
            if surgery.distance_up_to_permutation(red_spec, other, orient(red_spec, theta, self.penalised)) <= tol:
                return rid
        return None

    def _canonicalise(self, first: int) -> None:
        """Canonical form of each new distinct reduced point; a point whose canonical form equals an earlier
        one's (up to permutation) is folded into it: one reduced point per canonical form."""
        def reminimise(land, start):
            return minimise(land, start, grad_tol=self.cfg.grad_tol, max_iter=min(self.cfg.max_iter, 500),
                            adam_steps=0, time_limit_s=self.cfg.time_limit_s, seed=self.cfg.seed,
                            dense_max_params=self.cfg.dense_max_params)

        keep = list(range(first))
        for rid in range(first, len(self.reduced)):
            item, st = self.reduced[rid], self.state[rid]
            if not item["converged"]:
                keep.append(rid)
                continue
            st.canonical = canonicalise(st.landscape, st.theta, item["loss"], reminimise)
            item.update(st.canonical.summary())
            same = next((k for k in keep if k >= first and self.reduced[k]["converged"]
                         and self.reduced[k]["layer"] == item["layer"] and self.reduced[k]["order"] == item["order"]
                         and same_point(self.state[k].canonical, st.canonical, self.loss_scale)), None)
            if same is None:
                keep.append(rid)
            else:
                target = self.reduced[same]
                target["from_pairs"] += item["from_pairs"]
                target["same_canonical_as"].append({"loss": item["loss"], "index": item["index"]})
        self.reduced[first:] = [self.reduced[k] for k in keep if k >= first]
        self.state[first:] = [self.state[k] for k in keep if k >= first]
        for new_id, item in enumerate(self.reduced):
            item["id"] = new_id

    # 3-6. permutation points ------------------------------------------------------------------------
    def build_points(self, layer: int, order: int) -> None:
        t0 = time.perf_counter()
        scan_before = self.timings.get("gamma_scan", 0.0)
        plateau_unit = self.spec.widths[layer + 1]
        log10_mult = theory.log10_point_multiplicity(self.spec.hidden, layer, order)
        scan = (self.cfg.gamma_scan if self.cfg.gamma_scan is not None else True) and not self.penalised
        todo = [rid for rid, item in enumerate(self.reduced)
                if item["layer"] == layer and item["order"] == order and item["converged"]]
        for n_done, rid in enumerate(todo):
            item, st = self.reduced[rid], self.state[rid]
            self.phase(f"points L{layer}K{order}", n_done, len(todo))
            n_red = st.spec.widths[layer]
            # under a weight decay only the merged neurons split into a critical point, and the split block
            # gains the penalty's Hessian, lambda I on its orthonormal antisymmetric directions (shift)
            split = st.split if self.penalised else range(n_red)
            block_eigs = {m: split_eigenvalues(st.landscape, st.theta, layer, m) + self.cfg.weight_decay
                          for m in split}
            B_eigs = ({m: np.linalg.eigvalsh(fa_matrix(st.landscape, st.theta, layer, m)) for m in range(n_red)}
                      if plateau_unit == 1 and not self.penalised else {})
            ranks = {m: c_spectrum(st.landscape, st.theta, layer, m) for m in split}
            combos = [st.split] if self.penalised else list(combinations(range(n_red), order))
            for neurons, measured in zip(combos, self._measure_points(layer, st, combos)):
                self.points.append(self._point(layer, order, rid, item, st, neurons, plateau_unit, log10_mult,
                                               block_eigs, B_eigs, ranks, measured))
                if scan and order == 1 and not item["reducible"]:
                    self._scan(layer, rid, neurons[0], st, item)
        self.timings["points"] = (self.timings.get("points", 0.0) + time.perf_counter() - t0
                                  - (self.timings.get("gamma_scan", 0.0) - scan_before))

    def _measure_points(self, layer, st, combos):
        """(theta_p, loss, grad_inf, PointAnalysis) of the permutation points duplicating each combination of
        the reduced point's neurons: losses and gradients in one batched call, the analyses batched
        (point_batch.analyse_points; points.analyse_point one at a time is its reference)."""
        thetas = torch.stack([surgery.duplicate(st.spec, st.theta, layer, nn, 0.5)[1] for nn in combos])
        losses, grads = batched_loss_grad(self.landscape, thetas)
        grad_infs = grads.abs().amax(1).tolist()
        # the point's Newton correction is the reduced one's, duplicated (the gradient lies in the symmetric
        # subspace, on which the Hessian is congruent to the reduced one)
        nxt = (torch.stack([surgery.duplicate(st.spec, st.theta + st.newton_step, layer, nn, 0.5)[1] for nn in combos])
               if st.newton_step is not None else None)
        anas = analyse_points(self.landscape, thetas, grad_infs, nxt, max_dense_P=self.cfg_max_dense())
        return list(zip(thetas, losses.tolist(), grad_infs, anas))

    def _point(self, layer, order, rid, item, st, neurons, plateau_unit, log10_mult, block_eigs, B_eigs, ranks,
               measured):
        theta_p, loss_p, grad_inf, ana = measured
        rep = ana.report
        plateau_dim = order * plateau_unit
        shift = self.cfg.weight_decay       # see build_points
        point = {
            "layer": layer, "order": order, "reduced_id": rid, "neurons": list(neurons), "gamma": 0.5,
            "n_next": plateau_unit,     # n_{k+1}: the units this layer feeds
            "reducible": bool(item["reducible"]),
            "reducibility_undetermined": bool(item.get("reducibility_undetermined")),
            "loss": loss_p, "loss_rel_diff": abs(loss_p - item["loss"]) / max(abs(item["loss"]), 1e-300),
            "grad_inf": grad_inf, "reduced_grad_inf": item["grad_inf"],
            "critical": bool(item["converged"] and grad_inf <= self.cfg.grad_tol),
            **ana.fields(),
            "reduced_index": item["index"],
            "index_predicted": predicted_index([block_eigs[m] for m in neurons], item["index"], rep.tau),
            # S + lambda I has an eigenvalue below -tau where S has one below -(tau + lambda)
            "index_lower_bound": int(item["index"] + sum(negative_lower_bound(*ranks[m], rep.tau + shift)
                                                         for m in neurons)),
            "block_eigenvalues": [block_eigs[m].tolist() for m in neurons],
            "embedding_ok": bool(rep.index >= item["index"] and rep.n_pos >= item["n_pos"]),
            "plateau_dim": plateau_dim,
            "claim_zero_holds": rep.n_zero >= plateau_dim,
            "claim_guaranteed_holds": rep.index + rep.n_zero >= plateau_dim,
            "fa_index": (fa_prediction([B_eigs[m] for m in neurons], 0.5, item["index"], rep.tau)
                         if plateau_unit == 1 and B_eigs else None),
            "fa_eigenvalues": [B_eigs[m].tolist() for m in neurons] if B_eigs else None,
            "plateau": (plateau_check(self.landscape, st.spec, st.theta, layer, neurons, seed=self.cfg.seed)
                        if not self.penalised else None),
            "log10_multiplicity": log10_mult,
        }
        if self.penalised:
            point.update(data_loss=self.landscape.data_loss(theta_p), plateau_dim=None, claim_zero_holds=None,
                         claim_guaranteed_holds=None)
        if self.cfg.save_params:
            point["params"] = params_to_json(self.spec, theta_p)
        return point

    def cfg_max_dense(self) -> int | None:
        return self.cfg.dense_max_params

    def _scan(self, layer, rid, neuron, st, item) -> None:
        """Index and n_zero along the gamma-line of one duplicated neuron, beside the index predicted by the
        split block M_gamma (permsym_core.permutation) for any number of next-layer units."""
        t0 = time.perf_counter()
        line = gamma_line(self.landscape, st.landscape, st.theta, layer, neuron, item["index"], GAMMA_GRID)
        self.gamma_scan.append({"layer": layer, "reduced_id": rid, "neuron": neuron, **line})
        self.timings["gamma_scan"] = self.timings.get("gamma_scan", 0.0) + time.perf_counter() - t0

    # 7. paths and valleys (permsym_core.trial_paths) ------------------------------------------------
    def trace_paths(self) -> None:
        trial_paths.trace_paths(self)

    def build_valleys(self) -> None:
        trial_paths.build_valleys(self)

    # 8. counts --------------------------------------------------------------------------------------
    def counts(self) -> list[dict]:
        return count_rows(self.spec.hidden, self.cfg.orders, self.reduced, self.points, self.n_pair_sets)


def run_trial(config: TrialConfig | dict, on_phase: PhaseCallback | None = None) -> dict:
    """Run one trial and return its record. A network that does not reach a certified minimum gives a
    record with minimum.converged False and a `failure` reason (and no points), never an exception.

    on_phase(phase, k, n), when given, is called as the trial goes: ("minimum", 0, 1), then for each
    (layer, order) ("reduced L<layer>K<order>", k, n) before the k-th of n reduced trainings,
    ("points L<layer>K<order>", k, n) before the k-th of n reduced points' analyses, ("paths", 0, n)
    before the n paths are relaxed together and ("paths", k, n) as the k-th one's record is assembled, ("valleys", 0, 1), and ("done", 1, 1). It must be cheap and must not raise."""
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    phase = on_phase or (lambda _p, _k, _n: None)
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    trial = _Trial(cfg)
    trial.timings["task"] = time.perf_counter() - t0
    with landscape_threads(trial.landscape) as threads:
        record = _run(trial, phase)
    record["threads"] = threads
    trial.timings["total"] = time.perf_counter() - t_start
    record["timings"] = trial.timings
    return clean(record)


def _run(trial: _Trial, phase: PhaseCallback) -> dict:
    """run_trial's phases on a built trial: its record without threads and timings."""
    cfg, spec = trial.cfg, trial.spec
    record = record_header(cfg, spec, trial.task.info, trial.loss_scale, trial.landscape.device)
    trial.phase = phase
    phase("minimum", 0, 1)
    minimum = trial.train_minimum()
    record["minimum"] = minimum
    if minimum["converged"] and not minimum["is_minimum"]:
        record["failure"] = failure_reason(minimum, cfg.grad_tol)
        record["counts"] = []
    elif minimum["converged"]:
        for layer in range(1, spec.depth):
            for order in cfg.orders:
                if 2 * order > spec.widths[layer]:
                    continue                # C(n_k - K, K) = 0: no K-th order point in this layer
                trial.reduce(layer, order)
                trial.build_points(layer, order)
        if not trial.penalised:     # equal-loss paths and valleys: the penalty lifts them (permsym_core.penalty)
            trial.trace_paths()
            phase("valleys", 0, 1)
            trial.build_valleys()
        record["counts"] = trial.counts()
    else:
        record["failure"] = failure_reason(minimum, cfg.grad_tol)
        record["counts"] = []
    record.update(reduced=trial.reduced, points=trial.points, paths=trial.paths, valleys=trial.valleys,
                  valley_groups=trial.valley_groups, permuted_paths=trial.permuted_paths)
    if trial.gamma_scan:
        record["gamma_scan"] = trial.gamma_scan
    phase("done", 1, 1)
    return record
