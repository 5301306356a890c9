"""A rough cost model of one trial, from its config alone (no store, nothing run).

Used by `sweep --dry-run` (estimated time, where the store has no measured trial of that architecture) and by
the runner to order a grid's trials longest first and cut them into chunks of about equal work
(`sweeps.chunks.cost_chunks`). Calibrated on the toy task (BENCHMARKS.md, sweep section): a width-4 trial
(P = 12, 6 merged pairs, so 7 minimisations) takes 4.3 s of run_trial on one thread; the minimisations
dominate and their Newton steps cost about P^1.5 here. Only the ratios between trials matter for scheduling.
"""
from __future__ import annotations

import math

MODEL_S_PER_MINIMISATION = 4.3 / 7
MODEL_P_REF = 12
MODEL_OVERHEAD_S = 2.56     # the sweep's per-trial overhead when the model was set (dry-run estimates)
SCHED_PER_TRIAL_S = 0.15    # what a trial costs the sweep around its arithmetic now (BENCHMARKS.md, rows (e))


def n_minimisations(config: dict) -> int:
    """1 (the minimum) + the reduced trainings: the pair sets merged per hidden layer and order."""
    pairs = str(config.get("pairs", "all"))
    n = 1
    for w in config.get("widths") or []:
        for K in config.get("orders") or [1]:
            if 2 * K > w:
                continue
            if pairs == "nearest":
                n_pairs = w
            elif pairs.startswith("random:"):
                n_pairs = min(int(pairs.split(":")[1] or 0), math.comb(w, 2))
            else:
                n_pairs = math.comb(w, 2)
            n += max(1, math.comb(n_pairs, K)) if K > 1 else n_pairs
    return n


def work_s(config: dict, n_in: int, n_out: int, bias: bool) -> float:
    """The model's seconds of run_trial on one thread (no sweep overhead)."""
    from .spec_checks import n_params

    P = n_params(list(config.get("widths") or []), n_in, n_out, bias)
    return MODEL_S_PER_MINIMISATION * n_minimisations(config) * max(1.0, P / MODEL_P_REF) ** 1.5


def model_trial_s(config: dict, n_in: int, n_out: int, bias: bool) -> float:
    """The dry run's estimate of one trial in a sweep: the model's work plus the per-trial overhead it assumed."""
    return MODEL_OVERHEAD_S + work_s(config, n_in, n_out, bias)


def schedule_costs(configs: list[dict]) -> list[float]:
    """The cost each trial (a TrialConfig dict) is scheduled by: the model's work plus SCHED_PER_TRIAL_S."""
    from .spec_checks import task_dims

    out = []
    for c in configs:
        n_in, n_out, default_bias = task_dims(c["task"], dict(c.get("task_options") or {}))
        bias = default_bias if c.get("bias") is None else bool(c["bias"])
        out.append(SCHED_PER_TRIAL_S + work_s(c, n_in, n_out, bias))
    return out
