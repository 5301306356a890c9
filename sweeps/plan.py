"""Expand a sweep spec into trials: a deterministic list of trial configs, each with its trial key."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from permsym_core.config import TrialConfig


@dataclass(frozen=True)
class PlannedTrial:
    index: int          # position in the sweep's grid (stable for a given spec)
    key: str            # TrialConfig.trial_key(): hash of the scientific config and the schema version
    config: dict        # TrialConfig.to_dict(), canonical

    def label(self) -> str:
        c = self.config
        return f"{c['task']} widths={c['widths']} {c['activation']} seed={c['seed']}"


def expand(spec) -> list[dict]:
    """Raw trial option dicts, in grid order: the last grid key varies fastest (itertools.product over the
    keys in the order Grid declares them: widths, activations, seeds, orders, ...)."""
    dims = spec.grid.dimensions()
    names = list(dims)
    out = []
    for combo in itertools.product(*(dims[n] for n in names)):
        d = {"task": spec.task, "task_options": dict(spec.task_options)}
        d.update(zip(names, combo))
        out.append(d)
    return out


def trial_from_options(options: dict, index: int = 0) -> PlannedTrial:
    cfg = TrialConfig.from_dict(options)
    return PlannedTrial(index=index, key=cfg.trial_key(), config=cfg.to_dict())


def plan(spec) -> list[PlannedTrial]:
    """Every trial of the grid, deduplicated by key (two spellings of one config are one trial)."""
    seen, out = set(), []
    for i, d in enumerate(expand(spec)):
        t = trial_from_options(d, i)
        if t.key not in seen:
            seen.add(t.key)
            out.append(t)
    return out
