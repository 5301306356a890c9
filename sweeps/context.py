"""What the driver hands every trial (`SweepContext`), and how a Tune config becomes a trial key and options.

Frozen and made of plain values (the store is a `tracking.sweepstore.SweepStore` of strings), so that Ray
pickles it once per trial.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tracking.owner import Owner
from tracking.sweepstore import SweepStore


@dataclass(frozen=True)
class SweepContext:
    store: SweepStore
    parent_run_id: str
    owner: Owner                          # the driver launch that owns every run this sweep opens
    results_dir: str
    cpus: float
    time_limit_s: float | None
    task: str
    task_options: dict
    dims: dict                            # grid dimension -> its values (Optuna samples from these)
    labels: dict = field(default_factory=dict)       # trial key -> readable label (grid sweeps)
    figures: bool = True                  # the spec's `figures`: a spooled record's sync draws them or not

    @property
    def tracking_uri(self) -> str:
        return self.store.tracking_uri


def trial_of(config: dict, ctx: SweepContext) -> tuple[str, dict]:
    """(trial key, canonical trial options) of a Tune trial config: a grid trial carries both; an Optuna
    trial carries one value per searched dimension (the others take their only value)."""
    from permsym_core.config import TrialConfig

    if "trial" in config:
        return config["trial"]["key"], config["trial"]["config"]
    d = {"task": ctx.task, "task_options": dict(ctx.task_options)}
    for name, values in ctx.dims.items():
        d[name] = config[name] if name in config else values[0]
    cfg = TrialConfig.from_dict(d)
    return cfg.trial_key(), cfg.to_dict()


def trials_of(config: dict, ctx: SweepContext) -> list[tuple[str, dict]]:
    """The (key, options) of every trial a Tune trial carries: a chunk of grid trials (`"trials"`, see
    sweeps.chunks), or one trial (`trial_of`)."""
    if "trials" in config:
        return [(t["key"], t["config"]) for t in config["trials"]]
    return [trial_of(config, ctx)]
