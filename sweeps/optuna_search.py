"""Optuna search for a sweep: the search space, the persisted study, and Tune's OptunaSearch around it.

Search space (`search_space`): every grid option with two or more values is one Optuna parameter.
- integers in an arithmetic progression (seeds [0, 1, 2, 3], adam_steps [1000, 2000, 3000]):
  `IntDistribution(low, high, step)`; values are the integers themselves;
- other numbers (lr [1e-3, 3e-3, 1e-2]): `IntDistribution(0, n-1)` over the values sorted ascending, an
  ordinal index (numeric, so CMA-ES and TPE model it as a number);
- anything else (activations, widths, orders, booleans): `CategoricalDistribution` of the values (lists
  JSON-encoded, since Optuna's choices must be scalars).
So `sampler: cmaes` samples every numeric option with CMA-ES; categorical ones are sampled independently.

The study lives in `optuna.db` beside the MLflow store (RDB storage, Optuna's heartbeat on: a trial whose
driver died stops beating and `fail_stale_trials` + `RetryHeartbeatStaleTrialCallback`, the successor of `RetryFailedTrialCallback`, re-enqueue it). Before
anything starts, `open_study` checks the stored study against the spec: a changed direction (`mode`) or a
search space Optuna cannot continue is a one-line SpecError. A NaN metric is told as a FAIL trial (what Optuna
does when an objective returns NaN), tagged `permsym.outcome=nan`, and counts toward `n_trials`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .spec import SpecError, SweepSpec

SPACE_ATTR = "permsym.space"
OUTCOME_ATTR = "permsym.outcome"
HEARTBEAT_INTERVAL_S = 30
DEFAULT_GRACE_S = 120


@dataclass(frozen=True)
class Param:
    """One searched option: how it is told to Optuna and read back."""

    name: str
    kind: Literal["int", "ordinal", "categorical"]
    values: tuple                      # the option's values (sorted for int / ordinal)

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, IntDistribution

        if self.kind == "int":
            step = self.values[1] - self.values[0]
            return IntDistribution(self.values[0], self.values[-1], step=step)
        if self.kind == "ordinal":
            return IntDistribution(0, len(self.values) - 1)
        return CategoricalDistribution([_encode(v) for v in self.values])

    def grid_values(self) -> list:
        if self.kind == "int":
            return list(self.values)
        if self.kind == "ordinal":
            return list(range(len(self.values)))
        return [_encode(v) for v in self.values]

    def decode(self, v: Any) -> Any:
        if self.kind == "int":
            return int(v)
        if self.kind == "ordinal":
            return self.values[int(v)]
        return json.loads(v) if isinstance(v, str) and v.startswith("[") else v

    def describe(self) -> dict:
        return {"kind": self.kind, "values": list(self.values)}


def _encode(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, tuple)) else v


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def make_param(name: str, values: list) -> Param:
    if all(_is_int(v) for v in values):
        s = sorted(set(values))
        steps = {b - a for a, b in zip(s, s[1:])}
        if len(s) >= 2 and len(steps) == 1:
            return Param(name, "int", tuple(s))
    if all(_is_num(v) for v in values):
        return Param(name, "ordinal", tuple(sorted(set(values))))
    return Param(name, "categorical", tuple(values))


def search_space(spec: SweepSpec) -> dict[str, Param]:
    """The Optuna parameters of a sweep: its grid options with two or more values."""
    return {name: make_param(name, values) for name, values in spec.grid.dimensions().items() if len(values) > 1}


def space_size(space: dict[str, Param]) -> int:
    return math.prod(len(p.values) for p in space.values())


def decode_params(params: dict, space: dict[str, Param]) -> dict:
    """Optuna's sampled params -> trial option values."""
    return {k: space[k].decode(v) if k in space else v for k, v in params.items()}


# ---- the study -------------------------------------------------------------------------------------------

def grace_s() -> int:
    with contextlib.suppress(ValueError):
        return max(int(float(os.environ.get("PERMSYM_OPTUNA_GRACE_S", DEFAULT_GRACE_S))), 1)
    return DEFAULT_GRACE_S


def storage_for(results_dir: Path, tracking_uri: str, max_retry: int):
    """The study's RDB storage (SQLite beside the MLflow store) with Optuna's heartbeat and retry callback."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from tracking.store import sqlite_path

    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else results_dir
    folder.mkdir(parents=True, exist_ok=True)
    hb = min(HEARTBEAT_INTERVAL_S, max(1, grace_s() // 2))
    with warnings.catch_warnings():                   # heartbeat and its callback are "experimental"
        warnings.simplefilter("ignore")
        return optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}",
                                          engine_kwargs={"connect_args": {"timeout": 60}},
                                          heartbeat_interval=hb, grace_period=grace_s(),
                                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                              max_retry=max_retry))


def make_sampler(spec: SweepSpec, space: dict[str, Param]):
    import optuna

    s, seed = spec.search.sampler, spec.search.seed
    if s == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if s == "cmaes":
        try:
            import cmaes  # noqa: F401  (what optuna's CmaEsSampler runs on)
        except ImportError:
            raise SpecError("search.sampler: 'cmaes' needs the cmaes package (pip install cmaes), which is not "
                            "installed") from None
        # categorical options are sampled independently by design: no warning per trial for them
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler({k: p.grid_values() for k, p in space.items()}, seed=seed)


def _direction(spec: SweepSpec) -> str:
    return "maximize" if spec.search.mode == "max" else "minimize"


def check_study(spec: SweepSpec, study, space: dict[str, Param]) -> None:
    """SpecError (one line) when the stored study cannot continue with this spec."""
    from optuna.distributions import check_distribution_compatibility

    want = _direction(spec)
    have = study.direction.name.lower()
    if have != want:
        raise SpecError(f"search.mode: the Optuna study {spec.name!r} was created to {have}; got mode "
                        f"{spec.search.mode!r} ({want}); use a new sweep name to change direction")
    stored = study.user_attrs.get(SPACE_ATTR) or {}
    for name, p in space.items():
        old = stored.get(name)
        if old is not None and old.get("kind") != p.kind:
            # e.g. seeds [0, 1, 5] (ordinal: stored values are indices) -> [0, 1, 2] (int: stored values are
            # values): Optuna finds the two IntDistributions compatible, but the stored numbers mean other things
            raise SpecError(f"grid.{name}: the Optuna study {spec.name!r} searched {old.get('values')} as "
                            f"{old.get('kind')!r}; got {list(p.values)} as {p.kind!r}; its encoding cannot "
                            "change (use a new sweep name)")
        if old is not None and p.kind in ("ordinal", "categorical") and old != p.describe():
            raise SpecError(f"grid.{name}: the Optuna study {spec.name!r} searched {old['values']}; got "
                            f"{list(p.values)}; its choices cannot change (use a new sweep name)")
    dists = {k: p.distribution() for k, p in space.items()}
    for t in study.get_trials(deepcopy=False):
        for name, d in t.distributions.items():
            if name in dists:
                try:
                    check_distribution_compatibility(d, dists[name])
                except ValueError:
                    raise SpecError(f"grid.{name}: the Optuna study {spec.name!r} searched it as {d}; got "
                                    f"{dists[name]}; Optuna cannot continue that study (use a new sweep "
                                    "name)") from None


def open_study(spec: SweepSpec, storage, space: dict[str, Param]):
    """Open (or create) the sweep's study, check it against the spec, fail its stale trials (Optuna's
    heartbeat; the retry callback re-enqueues them) and return (n_done, study): n_done counts COMPLETE trials
    and trials told FAIL for a NaN metric."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                direction=_direction(spec))
    check_study(spec, study, space)
    stored = dict(study.user_attrs.get(SPACE_ATTR) or {})
    stored.update({k: p.describe() for k, p in space.items()})
    study.set_user_attr(SPACE_ATTR, stored)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    return n_done(study), study


def n_done(study) -> int:
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
               if t.state == TrialState.COMPLETE or t.user_attrs.get(OUTCOME_ATTR) == "nan")


class _Beat:
    """Optuna's heartbeat for one trial in flight (storage.record_heartbeat every interval, daemon thread:
    it never keeps a dying driver alive)."""

    def __init__(self, storage, trial_id: int):
        import threading

        self.stop = threading.Event()
        interval = storage.get_heartbeat_interval() or HEARTBEAT_INTERVAL_S

        def run():
            while True:
                with contextlib.suppress(Exception):
                    storage.record_heartbeat(trial_id)
                if self.stop.wait(interval):
                    return

        threading.Thread(target=run, daemon=True, name=f"optuna-heartbeat-{trial_id}").start()


_BEATS: dict[tuple[int, str], _Beat] = {}     # outside the searcher: Tune pickles it for its checkpoints


def dedup_optuna_search(key_of, params: dict[str, Param], **kwargs):
    """Tune's OptunaSearch with: no two trials of one key in flight (that would run one key twice), Optuna's
    heartbeat for every trial in flight, and a NaN metric told as a FAIL trial (tagged, counted as done)."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    codec = params

    class DedupOptunaSearch(OptunaSearch):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._inflight: dict[str, str] = {}

        def suggest(self, trial_id):
            for _ in range(20):
                with warnings.catch_warnings():        # "Heartbeat ... supposed to be used with optimize"
                    warnings.simplefilter("ignore")
                    params = super().suggest(trial_id)
                if params is None or not isinstance(params, dict):
                    return params
                key = key_of(decode_params(params, codec))
                if key not in self._inflight.values():
                    self._inflight[trial_id] = key
                    with contextlib.suppress(Exception):
                        _BEATS[(id(self), trial_id)] = _Beat(self._ot_study._storage,
                                                             self._ot_trials[trial_id]._trial_id)
                    return decode_params(params, codec)
                ot_trial = self._ot_trials.pop(trial_id)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            return None                                  # wait for the running duplicate to finish

        def on_trial_complete(self, trial_id, result=None, error=False):
            self._inflight.pop(trial_id, None)
            beat = _BEATS.pop((id(self), trial_id), None)
            if beat is not None:
                beat.stop.set()
            val = (result or {}).get(self.metric) if not isinstance(self.metric, list) else None
            if not error and isinstance(val, float) and math.isnan(val) and trial_id in self._ot_trials:
                # what Optuna does with an objective that returns NaN: the trial FAILs (Ray's OptunaSearch
                # would tell it COMPLETE, Optuna refuses, and the trial stayed RUNNING for ever)
                ot_trial = self._ot_trials[trial_id]
                with contextlib.suppress(Exception):
                    ot_trial.set_user_attr(OUTCOME_ATTR, "nan")
                    self._ot_study.tell(ot_trial, state=TrialState.FAIL)
                self._completed_trials.add(trial_id)
                return None
            return super().on_trial_complete(trial_id, result=result, error=error)

    return DedupOptunaSearch(**kwargs)
