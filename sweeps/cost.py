"""A rough cost model of one trial, from its config alone (no store, nothing run).

Used by `sweep --dry-run` (estimated time, where the store has no measured trial of that architecture) and by
the runner to order a grid's trials longest first and cut them into chunks of about equal work
(`sweeps.chunks.cost_chunks`). Calibrated on the toy task, sigmoid, seed 0, defaults, one thread
(2026-12-03): a width-4 trial (P = 12, 6 merged pairs, so 7 minimisations) takes 2.1 s of run_trial, a
width-6 one (P = 18, 16 minimisations) 9.6 s, 4.6x, where minimisations x P^1.5 gives 4.2x. Not modelled:
the sample count, `adam_steps` (3,000 against 300 steps: 2.1 s against 1.9 s at width 4) and how far a
particular seed's minimisations run, which varies trials of one config by more than those (BENCHMARKS.md,
"one trial can hold the sweep"). Only the ratios between trials matter for scheduling.
"""
from __future__ import annotations

import math

MODEL_S_PER_MINIMISATION = 2.1 / 7
MODEL_P_REF = 12
MODEL_OVERHEAD_S = 3.54     # the sweep's per-trial overhead, 1 worker (BENCHMARKS.md sweep section, 2026-12-03)
SCHED_PER_TRIAL_S = 0.15    # what a trial costs the sweep around its arithmetic now (BENCHMARKS.md, rows (e))


def n_minimisations(config: dict) -> int:
    """1 (the minimum) + the reduced trainings: the pair sets merged per hidden layer and order (at most
    `max_pair_sets` each)."""
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
            sets = max(1, math.comb(n_pairs, K)) if K > 1 else n_pairs
            cap = config.get("max_pair_sets")
            n += min(sets, int(cap)) if cap else sets
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
