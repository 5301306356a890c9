"""Cheap trials: chunks of trials per Tune trial, figures drawn by the driver, stores copied from a template.

- chunk sizes (guided self-scheduling) against hand-computed cases;
- a store made from the migrated template against one migrated in place (schema, alembic version, where the
  Default experiment's artifacts go);
- a real sweep on local Ray with `trials_per_task: 3`: 7 trials in 3 Tune trials, one FINISHED run per key,
  every run with the figures its record supports (drawn by the driver's figure writer, not in the trial),
  a relaunch runs nothing.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from fixtures.mlflow_helpers import sweep_runs

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

FAST = {"adam_steps": 200, "path_relax": False, "gamma_scan": False, "path_points": 5}


def test_chunk_sizes_hand_computed():
    from sweeps.chunks import chunk_sizes, chunked

    # ceil(20/8)=3, ceil(17/8)=3, ceil(14/8)=2, ceil(12/8)=2, ceil(10/8)=2, then 8 single trials
    assert chunk_sizes(20, 2) == [3, 3, 2, 2, 2] + [1] * 8
    assert chunk_sizes(8, 2) == [1] * 8                    # a small sweep: one trial per Tune trial, as before
    assert chunk_sizes(10, 1, fixed=3) == [3, 3, 3, 1]
    assert chunk_sizes(0, 2) == []
    assert max(chunk_sizes(100_000, 1)) == 64              # MAX_CHUNK
    assert chunked(list("abcdefg"), 1, fixed=3) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


def test_cost_chunks_longest_first_and_cut_by_cost():
    from sweeps.chunks import chunk_sizes, cost_chunks

    # total 12 on one slot: target 12/4 = 3 takes "a" (4) alone; then 8/4 = 2 -> b, c; 6/4 = 1.5 -> d, e;
    # 4/4 = 1 -> f; and single trials after
    items = list("abcdefghi")
    assert cost_chunks(items, [4, 1, 1, 1, 1, 1, 1, 1, 1], 1) == [["a"], ["b", "c"], ["d", "e"], ["f"], ["g"],
                                                                   ["h"], ["i"]]
    # one slot keeps the grid's order (LPT cannot shorten a sequential sweep): 12/4 = 3 takes b, c, d; then
    # 9/4 = 2.25 takes a (4) alone, 5/4 -> e, f; 3/4 -> g; h; i
    assert cost_chunks(list("bcdaefghi"), [1, 1, 1, 4, 1, 1, 1, 1, 1], 1) == [
        ["b", "c", "d"], ["a"], ["e", "f"], ["g"], ["h"], ["i"]]
    assert cost_chunks(list("bcda"), [1, 1, 1, 4], 1) == [["b"], ["c"], ["d"], ["a"]]   # <= 4 per slot: singles
    # the longest trial first (LPT), ties in grid order
    assert cost_chunks(list("abcd"), [1, 1, 1, 3], 2) == [["d"], ["a"], ["b"], ["c"]]
    # equal costs give exactly the count-based chunks
    assert [len(c) for c in cost_chunks(list(range(20)), [0.3] * 20, 2)] == chunk_sizes(20, 2)
    assert cost_chunks(list("abcde"), [1, 2, 3, 4, 5], 2, fixed=2) == [["e", "d"], ["c", "b"], ["a"]]
    with pytest.raises(ValueError, match="costs"):
        cost_chunks(list("ab"), [1.0], 1)


def test_a_crash_does_not_stop_the_rest_of_its_chunk(monkeypatch):
    """A trial whose process crashed ends its Tune trial (so Tune retries it) only after the chunk's other
    trials ran; the first crash is the one raised."""
    from types import SimpleNamespace

    from sweeps import trainable
    from sweeps.isolation import TrialCrashed

    ran = []

    def one(key, options, ctx, threads, worker):
        ran.append(key)
        if key in ("b", "d"):
            raise TrialCrashed(f"trial {key}: killed by signal 9")

    monkeypatch.setattr(trainable, "run_one", one)
    monkeypatch.setattr(trainable, "worker_info", lambda: {})
    config = {"trials": [{"key": k, "config": {}} for k in "abcde"]}
    with pytest.raises(TrialCrashed, match="trial b"):
        trainable.sweep_trainable(config, SimpleNamespace(cpus=1))
    assert ran == list("abcde")
    ran.clear()
    trainable.sweep_trainable({"trials": [{"key": "a", "config": {}}]}, SimpleNamespace(cpus=1))
    assert ran == ["a"]


def test_cost_model_counts_the_minimisations():
    from sweeps.cost import n_minimisations, schedule_costs

    # the minimum + one reduced training per merged pair: C(4,2) = 6 pairs; width 1 has no pair
    assert n_minimisations({"widths": [4], "orders": [1], "pairs": "all"}) == 7
    assert n_minimisations({"widths": [1], "orders": [1]}) == 1
    assert n_minimisations({"widths": [6, 3], "orders": [1], "pairs": "nearest"}) == 1 + 6 + 3
    assert n_minimisations({"widths": [10], "orders": [1], "pairs": "random:8"}) == 9
    assert n_minimisations({"widths": [10, 10], "orders": [1], "max_pair_sets": 5}) == 1 + 5 + 5
    base = {"task": "toy", "task_options": {}, "orders": [1], "pairs": "all", "bias": None}
    w1, w4, w5 = schedule_costs([{**base, "widths": [1]}, {**base, "widths": [4]}, {**base, "widths": [5]}])
    assert w1 < w4 < w5


def _schema(db: Path) -> tuple:
    con = sqlite3.connect(str(db))
    try:
        # the CREATE statements' clauses as sorted sets: SQLAlchemy's batch migrations may emit a table's
        # constraints in another order from one process to the next (set order), which means nothing
        tables = sorted((t, n, tuple(sorted(ln.strip().rstrip(",") for ln in sql.replace(", ", ",\n").splitlines())))
                        for t, n, sql in con.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
        default = con.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()[0]
    finally:
        con.close()
    return tables, version, default


def test_store_from_template_equals_store_migrated_in_place(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from tracking.store import prepare_store, results_uri, template_dir

    monkeypatch.setenv("PERMSYM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PERMSYM_STORE_TEMPLATE", "off")
    prepare_store(results_uri(tmp_path / "inplace"), "e")
    monkeypatch.delenv("PERMSYM_STORE_TEMPLATE")
    assert not template_dir().exists()                    # "off" really migrated in place
    prepare_store(results_uri(tmp_path / "copied"), "e")
    assert list(template_dir().glob("mlflow-*.db"))        # the template was built, and is reused below
    uri = results_uri(tmp_path / "again")
    prepare_store(uri, "e")

    a_tables, a_version, a_default = _schema(tmp_path / "inplace" / "mlflow.db")
    for name in ("copied", "again"):
        tables, version, default = _schema(tmp_path / name / "mlflow.db")
        assert tables == a_tables and version == a_version
        assert default == str(tmp_path / name / "artifacts" / "0")
    assert a_default == str(tmp_path / "inplace" / "artifacts" / "0")
    c = MlflowClient(uri)                                  # and it is a working store
    run = c.create_run(c.get_experiment_by_name("e").experiment_id)
    c.log_metric(run.info.run_id, "x", 1.5)
    assert c.get_run(run.info.run_id).data.metrics == {"x": 1.5}


@pytest.mark.slow
def test_chunked_sweep_one_run_per_key_and_figures_from_the_driver(local_ray, tmp_path):
    from sweeps.plan import plan
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec
    from tracking import runs
    from tracking.figures import trial_figures
    from tracking.store import results_uri

    spec = {"name": "chunky", "task": "toy", "grid": {"widths": [[2]], "seeds": list(range(7)), **FAST},
            "resources": {"cpus": 1}, "max_failures": 0, "trials_per_task": 3}
    keys = {t.key for t in plan(load_spec(spec))}
    s = run_sweep(spec, results_dir=tmp_path, progress=False)
    assert (s.finished, s.failed, s.errored) == (7, 0, 0)
    assert sorted(t.trial_key for t in s.trials) == sorted(keys)
    tune_trials = [p for p in (tmp_path / "ray" / "chunky").iterdir() if p.is_dir() and p.name.startswith("t_")]
    assert len(tune_trials) == 3                           # 3 + 3 + 1

    uri = results_uri(tmp_path)
    c, found = sweep_runs(uri, "chunky")
    kids = [r for r in found if r.data.tags.get("trial_key")]
    assert sorted(r.data.tags["trial_key"] for r in kids if r.info.status == "FINISHED") == sorted(keys)
    assert len(kids) == 7
    import json

    for r in kids:
        arts = {a.path for a in c.list_artifacts(r.info.run_id, "figures")}
        record = json.loads(Path(c.download_artifacts(r.info.run_id, runs.RECORD_ARTIFACT, str(tmp_path))).read_text())
        want = set(trial_figures(record))
        assert want and arts == want, (r.info.run_id, arts, want)

    again = run_sweep(spec, results_dir=tmp_path, progress=False)
    assert again.already_finished == 7 and again.finished == 0


def test_figure_writer_survives_its_child_dying(tmp_path):
    """The figure process killed (as by the OOM killer): the next submit starts a new one instead of raising,
    and a drawing that failed is counted, not lost silently."""
    import signal
    import time

    from sweeps.figure_writer import FigureWriter
    from tracking.store import prepare_store, results_uri

    uri = results_uri(tmp_path / "res")
    prepare_store(uri, "permsym")
    w = FigureWriter(uri)
    w.submit({"status": "finished", "run_id": "no-such-run"})       # drawing fails in the child: counted
    w._futures[-1].exception(timeout=120)
    (pid,) = list(w._pool._processes)                               # the child this writer started
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and not w._pool._broken:
        time.sleep(0.1)
    w.submit({"status": "finished", "run_id": "still-no-run"})      # a new child, no BrokenProcessPool
    w.submit({"status": "skipped", "run_id": "x"})                  # not FINISHED: nothing to draw
    w.close()
    assert w.failed == 2 and w.drawn == 0 and w._pool is None
