"""Sweep specs: the malformed corpus under tests/bad_specs (each with its expected message on line 1), the
example specs, and planning."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from permsym_core.config import TrialConfig
from sweeps.cli import main
from sweeps.plan import plan
from sweeps.spec import Grid, SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
BAD = sorted((ROOT / "tests" / "bad_specs").glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name}: first line must be '# expect: <fragment>'"
    return first.split(":", 1)[1].strip()


def test_corpus_is_large_enough():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_rejected_with_one_line(path):
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert _expected(path) in msg


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_through_cli_exits_2_and_starts_nothing(path, tmp_path):
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["sweep", str(path), "--results", str(results)])
    assert r.exit_code == 2, (r.output, r.exception)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and _expected(path) in err[0], r.stderr
    assert "Traceback" not in r.output + r.stderr
    assert not (results / "mlflow.db").exists() and not (results / "ray").exists()


def test_grid_covers_every_trial_option():
    fields = {f.name for f in dataclasses.fields(TrialConfig)} - {"task", "task_options"}
    grid_fields = {Grid.FIELD_OF.get(k, k) for k in Grid.model_fields}
    assert grid_fields == fields


@pytest.mark.parametrize("name", ["toy.yaml", "teacher_depth.yaml", "mnist.yaml"])
def test_example_specs_validate(name):
    spec = load_spec(ROOT / "sweeps" / name)
    trials = plan(spec)
    assert trials and len({t.key for t in trials}) == len(trials)


def test_toy_is_the_readme_default():
    trials = plan(load_spec(ROOT / "sweeps" / "toy.yaml"))
    assert len(trials) == 16
    assert {tuple(t.config["widths"]) for t in trials} == {(3,), (4,), (5,), (6,)}
    assert {t.config["activation"] for t in trials} == {"sigmoid", "g"}
    assert {t.config["seed"] for t in trials} == {0, 1}


def test_plan_is_deterministic_and_keys_match_trial_config():
    d = {"name": "p", "grid": {"widths": [3, [4, 2]], "activations": ["tanh", "sigmoid"], "seeds": [1, 0],
                               "adam_steps": 100, "grad_tol": "1e-9"}}
    a, b = plan(load_spec(d)), plan(load_spec(d))
    assert [t.key for t in a] == [t.key for t in b]
    assert [t.config["widths"] for t in a][:4] == [[3], [3], [3], [3]]
    for t in a:
        assert TrialConfig.from_dict(t.config).trial_key() == t.key
        assert t.config["grad_tol"] == 1e-9 and t.config["adam_steps"] == 100
    # two spellings of one trial are one trial
    dup = plan(load_spec({"name": "p", "grid": {"widths": [3, [3]], "orders": [1]}}))
    assert len(dup) == 1


def test_orders_list_is_one_trial_option_and_list_of_lists_a_dimension():
    one = plan(load_spec({"name": "o", "grid": {"widths": [[5]], "orders": [[1, 2]]}}))
    assert len(one) == 1 and one[0].config["orders"] == [1, 2]
    assert plan(load_spec({"name": "o", "grid": {"widths": [[5]], "orders": [2]}}))[0].config["orders"] == [2]
    # a flat list of several orders is ambiguous (every trial's orders, or a grid over them?): rejected
    with pytest.raises(SpecError, match=r"^grid.orders: ambiguous \[1, 2\]; expected \[\[1, 2\]\] .* or "
                                        r"\[\[1\], \[2\]\]"):
        load_spec({"name": "o", "grid": {"widths": [[5]], "orders": [1, 2]}})
    two = plan(load_spec({"name": "o", "grid": {"widths": [[5]], "orders": [[1], [1, 2]]}}))
    assert [t.config["orders"] for t in two] == [[1], [1, 2]]
