"""Optuna done right: numeric options as numeric distributions (CMA-ES really models them), a stored study
checked against the spec before anything starts (direction, search space), a NaN metric told as FAIL and
counted toward n_trials, Optuna's own heartbeat for stale trials. Most of it without Ray: the study is Optuna's."""
from __future__ import annotations

import math
import os
import warnings

import optuna
import pytest
from click.testing import CliRunner

from sweeps import optuna_search as osearch
from sweeps.spec import SpecError, load_spec

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
FAST = {"adam_steps": 200, "path_relax": False, "gamma_scan": False, "path_points": 5}


def _spec(name="opt", sampler="cmaes", mode="max", **grid):
    g = {"widths": [[3]], "seeds": [0, 1, 2, 3], "lr": [0.001, 0.003, 0.01], "activations": ["sigmoid", "tanh"],
         **FAST}
    g.update(grid)
    return load_spec({"name": name, "task": "toy", "grid": g,
                      "search": {"kind": "optuna", "sampler": sampler, "n_trials": 4, "mode": mode, "seed": 0}})


def _storage(tmp_path):
    return osearch.storage_for(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", max_retry=1)


def test_numeric_options_are_numeric_distributions_and_decode_to_their_values():
    space = osearch.search_space(_spec())
    d = {k: p.distribution() for k, p in space.items()}
    assert d["seed"] == optuna.distributions.IntDistribution(0, 3, step=1)
    assert d["lr"] == optuna.distributions.IntDistribution(0, 2)               # ordinal over sorted values
    assert isinstance(d["activation"], optuna.distributions.CategoricalDistribution)
    assert space["lr"].decode(2) == 0.01 and space["seed"].decode(3) == 3
    w = osearch.make_param("widths", [[3], [4, 4]])
    assert w.kind == "categorical" and w.decode(w.distribution().choices[1]) == [4, 4]
    s = osearch.make_param("adam_steps", [3000, 1000, 2000])
    assert s.distribution() == optuna.distributions.IntDistribution(1000, 3000, step=1000)


def test_cmaes_models_the_numeric_options_jointly():
    """CmaEsSampler's relative search space (what it samples with CMA-ES rather than independently at random)
    holds exactly the numeric options; the earlier all-categorical encoding left it empty."""
    pytest.importorskip("cmaes", reason="optuna's CmaEsSampler needs the cmaes package (a project dependency)")
    spec = _spec()
    space = osearch.search_space(spec)
    dists = {k: p.distribution() for k, p in space.items()}
    sampler = osearch.make_sampler(spec, space)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for _ in range(6):
        t = study.ask(fixed_distributions=dists)
        study.tell(t, -((t.params["seed"] - 2) ** 2) - t.params["lr"])
    assert set(sampler.infer_relative_search_space(study, study.trials[-1])) == {"seed", "lr"}
    # after its start-up trial CMA-ES proposes the numeric options itself (its state is kept on the trials)
    assert any(any(k.startswith("cma:") for k in t.system_attrs) for t in study.trials)
    old = {k: optuna.distributions.CategoricalDistribution(list(range(len(p.values)))) for k, p in space.items()}
    s_old = optuna.samplers.CmaEsSampler(seed=0, warn_independent_sampling=False)
    st_old = optuna.create_study(sampler=s_old)
    for _ in range(3):
        t = st_old.ask(fixed_distributions=old)
        st_old.tell(t, 0.0)
    assert s_old.infer_relative_search_space(st_old, st_old.trials[-1]) == {}


def test_changed_direction_or_choices_fail_in_one_line_before_anything_starts(tmp_path):
    spec = _spec()
    space = osearch.search_space(spec)
    storage = _storage(tmp_path)
    n, study = osearch.open_study(spec, storage, space)
    assert n == 0
    t = study.ask(fixed_distributions={k: p.distribution() for k, p in space.items()})
    study.tell(t, 1.0)
    # a wider integer range continues the same study (Optuna's IntDistribution ranges are compatible)
    wider = _spec(seeds=[0, 1, 2, 3, 4, 5])
    assert osearch.open_study(wider, storage, osearch.search_space(wider))[0] == 1
    # an edited categorical choice, an edited ordinal list, a flipped mode: one line each
    for bad, field in ((_spec(activations=["sigmoid", "gelu"]), "grid.activation"),
                       (_spec(lr=[0.001, 0.01, 0.1]), "grid.lr"), (_spec(mode="min"), "search.mode")):
        with pytest.raises(SpecError) as e:
            osearch.open_study(bad, storage, osearch.search_space(bad))
        assert str(e.value).startswith(field + ":") and "\n" not in str(e.value), str(e.value)


def test_changed_kind_of_an_option_is_refused_even_when_optuna_finds_it_compatible(tmp_path):
    """seeds [0, 1, 5] is ordinal (the study stores indices 0..2), [0, 1, 2] is an IntDistribution over the same
    range 0..2: Optuna calls them compatible, but index 2 (seed 5) would then be read as seed 2."""
    spec = _spec(seeds=[0, 1, 5])
    space = osearch.search_space(spec)
    assert space["seed"].kind == "ordinal"
    storage = _storage(tmp_path)
    _n, study = osearch.open_study(spec, storage, space)
    t = study.ask(fixed_distributions={k: p.distribution() for k, p in space.items()})
    study.tell(t, 1.0)
    changed = _spec(seeds=[0, 1, 2])
    assert osearch.search_space(changed)["seed"].kind == "int"
    with pytest.raises(SpecError) as e:
        osearch.open_study(changed, storage, osearch.search_space(changed))
    msg = str(e.value)
    assert msg.startswith("grid.seed:") and "'ordinal'" in msg and "'int'" in msg and "\n" not in msg, msg
    # and the other way round, on a fresh study
    back, fwd = _spec(name="opt2", seeds=[0, 1, 2]), _spec(name="opt2", seeds=[0, 1, 5])
    osearch.open_study(back, storage, osearch.search_space(back))
    with pytest.raises(SpecError, match=r"^grid.seed: .*'int'; got \[0, 1, 5\] as 'ordinal'"):
        osearch.open_study(fwd, storage, osearch.search_space(fwd))


def test_study_of_the_earlier_index_encoding_is_refused_in_one_line(tmp_path):
    """A study written by the earlier runner (every option categorical over indices) cannot continue with
    numeric distributions: Optuna would raise CategoricalDistribution's ValueError in the middle of the sweep."""
    spec = _spec()
    storage = _storage(tmp_path)
    old = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize")
    t = old.ask(fixed_distributions={"seed": optuna.distributions.CategoricalDistribution([0, 1, 2, 3])})
    old.tell(t, 0.5)
    with pytest.raises(SpecError, match=r"^grid.seed: the Optuna study 'opt' searched it as Categorical"):
        osearch.open_study(spec, storage, osearch.search_space(spec))


def test_mode_change_through_the_cli_exits_2_with_one_line(tmp_path):
    import yaml

    from sweeps.cli import main

    spec = _spec(sampler="tpe").to_dict()
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    results = tmp_path / "res"
    results.mkdir()
    storage = osearch.storage_for(results, f"sqlite:///{results / 'mlflow.db'}", 1)
    optuna.create_study(study_name="opt", storage=storage, direction="minimize")
    r = CliRunner().invoke(main, ["sweep", str(f), "--results", str(results), "--quiet"])
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert "search.mode: the Optuna study 'opt' was created to minimize; got mode 'max'" in line
    assert len(r.output.strip().splitlines()) == 1


def test_nan_metric_is_a_failed_trial_counted_toward_n_trials(tmp_path):
    """What Tune's OptunaSearch leaves RUNNING for ever (tell(COMPLETE, nan) raises) is told FAIL here, tagged,
    and counted as done: a stale RUNNING trial is failed through Optuna's heartbeat and re-enqueued."""
    spec = _spec(sampler="random")
    space = osearch.search_space(spec)
    storage = _storage(tmp_path)
    search = osearch.dedup_optuna_search(lambda p: repr(sorted(p.items())), space,
                                         space={k: p.distribution() for k, p in space.items()},
                                         metric="frac_first_order", mode="max",
                                         sampler=osearch.make_sampler(spec, space), study_name=spec.name,
                                         storage=storage)
    cfg = search.suggest("t1")
    assert cfg["lr"] in (0.001, 0.003, 0.01) and cfg["activation"] in ("sigmoid", "tanh")
    search.on_trial_complete("t1", {"frac_first_order": math.nan})
    cfg2 = search.suggest("t2")
    search.on_trial_complete("t2", {"frac_first_order": 0.5})
    study = optuna.load_study(study_name=spec.name, storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE"], states
    assert study.trials[0].user_attrs[osearch.OUTCOME_ATTR] == "nan"
    assert osearch.n_done(study) == 2
    assert cfg2 is not None


def test_stale_trial_is_failed_by_optunas_heartbeat_and_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("PERMSYM_OPTUNA_GRACE_S", "1")
    spec = _spec(sampler="random")
    space = osearch.search_space(spec)
    storage = _storage(tmp_path)
    n, study = osearch.open_study(spec, storage, space)
    t = study.ask(fixed_distributions={k: p.distribution() for k, p in space.items()})
    storage.record_heartbeat(t._trial_id)                        # a driver beat once, then died
    import time

    time.sleep(2.5)
    n, study = osearch.open_study(spec, storage, space)
    trials = study.get_trials(deepcopy=False)
    assert [x.state.name for x in trials] == ["FAIL", "WAITING"]     # failed, and a retry enqueued
    assert trials[1].params == trials[0].params and n == 0
