"""tracking.cache behind tracking.query, on real SQLite stores: what the cache returns equals what the store
returns, only FINISHED runs are ever kept, a run that stops being FINISHED (deleted, set KILLED) is dropped and
comes back when restored, a store made again at the same path never sees the old one's runs, and a key with
two FINISHED runs counts once (cached or not)."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from fixtures.mlflow_helpers import fresh_store, make_template_db
from fixtures.records import make_record

from tracking import cache, query, runs, store

FIXTURES = Path(__file__).parent / "fixtures"
REAL = [json.loads(p.read_text()) for p in sorted((FIXTURES / "real_records").glob("*.json"))]
SWEEP = "cached"


def _key(rec) -> str:
    c = rec["config"]
    return f"{c['task']}-{'x'.join(map(str, c['widths']))}-s{c['seed']}"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return make_template_db(tmp_path_factory.mktemp("template"))


@pytest.fixture
def filled(tmp_path, template, monkeypatch):
    """A fresh store with the real toy records and one unconverged record, and a cache of the test's own."""
    monkeypatch.setenv("PERMSYM_CACHE_DIR", str(tmp_path / "cache"))
    uri = fresh_store(template, tmp_path / "res")
    exp = store.prepare_store(uri, "permsym")
    parent = runs.get_or_create_parent(uri, exp, SWEEP, {"name": SWEEP})
    recs = REAL + [make_record((4,), 9, converged=False)]
    ids = {_key(r): runs.log_trial(uri, exp, parent, SWEEP, _key(r), r, figures=False) for r in recs}
    return uri, exp, parent, ids, recs


def _cached_ids() -> set[str]:
    con = sqlite3.connect(str(cache.cache_path()))
    try:
        return {r[0] for r in con.execute("SELECT run_id FROM runs")}
    finally:
        con.close()


def _cached_artifact_ids() -> set[str]:
    con = sqlite3.connect(str(cache.cache_path()))
    try:
        return {r[0] for r in con.execute("SELECT run_id FROM artifacts")}
    finally:
        con.close()


def _expected_seeds(recs) -> dict[tuple, int]:
    """Converged trials per widths, from the records themselves."""
    out: dict[tuple, int] = {}
    for r in recs:
        if r["minimum"]["converged"] and not r.get("failure"):
            w = tuple(r["config"]["widths"])
            out[w] = out.get(w, 0) + 1
    return out


def test_cached_results_equal_the_store_and_serve_without_it(filled, tmp_path):
    uri, _exp, _parent, ids, recs = filled
    plain = query.summary(SWEEP, tracking_uri=uri, cache=False)
    cold = query.summary(SWEEP, tracking_uri=uri)
    warm = query.summary(SWEEP, tracking_uri=uri)
    pd.testing.assert_frame_equal(plain, cold)
    pd.testing.assert_frame_equal(plain, warm)
    layer1 = warm[warm["layer"] == 1]
    assert dict(zip(layer1["widths"], layer1["n_seeds"])) == _expected_seeds(recs)
    trials: dict[tuple, int] = {}
    for r in recs:
        k = (r["config"]["task"], r["config"]["activation"], tuple(r["config"]["widths"]))
        trials[k] = trials.get(k, 0) + 1
    got = warm.groupby(["task", "activation", "widths"])["n_trials"].first()
    assert {k: int(v) for k, v in got.items()} == trials
    pd.testing.assert_frame_equal(query.runs(SWEEP, tracking_uri=uri, cache=False),
                                  query.runs(SWEEP, tracking_uri=uri))
    for kw in ({"width_min": 4}, {"width_max": 3}, {"task": "toy", "activation": "sigmoid"}, {"depth": 1},
               {"converged_only": True}, {"task": "teacher"}):
        a = query.runs(SWEEP, tracking_uri=uri, cache=False, **kw)
        b = query.runs(SWEEP, tracking_uri=uri, **kw)
        assert list(a["run_id"]) == list(b["run_id"]), kw
    pts = query.points(SWEEP, tracking_uri=uri)
    assert len(pts) == sum(len(r["points"]) for r in recs if r["minimum"]["converged"])
    # the points and records now come from the cache: with the store's artifacts gone they still do,
    # while the uncached path has nothing to read
    query.records(list(ids.values()), uri)                        # read once: kept
    shutil.rmtree(Path(tmp_path / "res" / "artifacts"))
    pd.testing.assert_frame_equal(query.summary(SWEEP, tracking_uri=uri), plain)
    assert query.records(list(ids.values()), uri)[ids[_key(REAL[0])]]["config"] == REAL[0]["config"]
    with pytest.raises(Exception):
        query.summary(SWEEP, tracking_uri=uri, cache=False)


def test_only_finished_runs_are_cached_and_stale_ones_are_dropped(filled):
    from mlflow import MlflowClient

    uri, exp, parent, ids, _recs = filled
    late = make_record((3,), 7)
    running = runs.start_trial_run(uri, exp, parent, SWEEP, "still-running", late["config"])
    failed = runs.start_trial_run(uri, exp, parent, SWEEP, "failed", make_record((3,), 8)["config"])
    runs.fail_trial_run(uri, failed, "boom")
    rdf = query.runs(SWEEP, tracking_uri=uri)
    assert set(rdf["run_id"]) == set(ids.values())
    assert _cached_ids() == set(ids.values())                      # neither the RUNNING nor the FAILED run

    # the RUNNING run ends FINISHED: the next query finds it (and only then caches it)
    runs.finish_trial_run(uri, running, late, figures=False)
    assert running in set(query.runs(SWEEP, tracking_uri=uri)["run_id"]) and running in _cached_ids()

    c = MlflowClient(uri)
    victim = ids[_key(REAL[0])]
    query.summary(SWEEP, tracking_uri=uri)                         # its points are in the cache now
    assert victim in _cached_artifact_ids()
    c.delete_run(victim)
    assert victim not in set(query.runs(SWEEP, tracking_uri=uri)["run_id"])
    assert victim not in _cached_ids() and victim not in _cached_artifact_ids()
    c.restore_run(victim)
    assert victim in set(query.runs(SWEEP, tracking_uri=uri)["run_id"]) and victim in _cached_ids()

    killed = ids[_key(REAL[1])]
    c.update_run(killed, status="KILLED")
    assert killed not in set(query.runs(SWEEP, tracking_uri=uri)["run_id"])
    assert killed not in _cached_ids()
    pd.testing.assert_frame_equal(query.runs(SWEEP, tracking_uri=uri, cache=False),
                                  query.runs(SWEEP, tracking_uri=uri))


def test_a_store_made_again_at_the_same_path_is_a_new_store(filled, tmp_path, template):
    """The old store's runs are in the cache; the folder is deleted and a store made again at the same path
    (in another process: this one's MLflow keeps the deleted file open) sees only its own run."""
    import subprocess
    import sys

    uri, _exp, _parent, ids, _recs = filled
    assert len(query.runs(SWEEP, tracking_uri=uri)) == len(ids) and _cached_ids() == set(ids.values())
    shutil.rmtree(tmp_path / "res")
    code = f"""
import json, sys
sys.path[:0] = [{str(FIXTURES.parent)!r}, {str(FIXTURES.parent.parent)!r}]
from fixtures.mlflow_helpers import fresh_store
from tracking import query, runs, store
uri = fresh_store(__import__("pathlib").Path({str(template)!r}), __import__("pathlib").Path({str(tmp_path / "res")!r}))
exp = store.prepare_store(uri, "permsym")
parent = runs.get_or_create_parent(uri, exp, {SWEEP!r}, {{}})
rec = json.loads(open({str(sorted((FIXTURES / "real_records").glob("*.json"))[0])!r}).read())
only = runs.log_trial(uri, exp, parent, {SWEEP!r}, "only", rec, figures=False)
print(json.dumps([only, list(query.runs({SWEEP!r}, tracking_uri=uri)["run_id"])]))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    only, got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == [only]
    assert _cached_ids() >= set(ids.values()) | {only}          # the old entries are filed under the old store


def _another_finished_run(uri, exp, parent, key, rec, attempt=2) -> str:
    """A second FINISHED run of `key`, started after its first: the state two racing drivers (or the code
    before tracking.owner) left behind. finish_trial_run refuses to end a second run of a FINISHED key, so the
    run is logged under a key of its own and then given `key`'s tag (tags stay writable on a FINISHED run)."""
    from mlflow import MlflowClient

    rid = runs.log_trial(uri, exp, parent, SWEEP, f"{key}-pending", rec, attempt=attempt, figures=False)
    MlflowClient(uri).set_tag(rid, "trial_key", key)
    return rid


def test_a_key_with_two_finished_runs_counts_once(filled):
    uri, exp, parent, ids, recs = filled
    key = _key(REAL[0])
    second = _another_finished_run(uri, exp, parent, key, REAL[0])
    for use_cache in (False, True):
        rdf = query.runs(SWEEP, tracking_uri=uri, cache=use_cache)
        assert list(rdf["trial_key"]).count(key) == 1
        assert rdf.loc[rdf["trial_key"] == key, "run_id"].item() == ids[key]     # the earliest-started one
        assert second not in set(rdf["run_id"])
        summ = query.summary(SWEEP, tracking_uri=uri, cache=use_cache)
        layer1 = summ[summ["layer"] == 1]
        assert dict(zip(layer1["widths"], layer1["n_seeds"])) == _expected_seeds(recs)
        pts = query.points(SWEEP, tracking_uri=uri, cache=use_cache)
        assert len(pts) == sum(len(r["points"]) for r in recs if r["minimum"]["converged"])


def test_a_key_is_its_earliest_run_everywhere_even_when_a_later_one_converged(filled):
    """Key U: its earliest FINISHED run did not converge, a later one did. The key is represented by the
    earliest run in runs(), points() and summary() alike (with and without the cache, converged_only or not):
    it counts as unconverged everywhere and the later run's points and counts appear nowhere."""
    from mlflow import MlflowClient

    uri, exp, parent, ids, recs = filled
    bad = make_record((4,), 9, converged=False)                   # the fixture's unconverged trial
    key = _key(bad)
    good = make_record((4,), 9)                                   # the same config, converged this time
    assert good["config"] == bad["config"] and good["points"]
    later = _another_finished_run(uri, exp, parent, key, good)
    c = MlflowClient(uri)
    assert c.get_run(ids[key]).info.start_time < c.get_run(later).info.start_time
    assert c.get_run(later).info.status == "FINISHED" and c.get_run(later).data.tags["converged"] == "true"
    n_conv = sum(1 for r in recs if r["minimum"]["converged"] and not r.get("failure"))
    n_pts = sum(len(r["points"]) for r in recs if r["minimum"]["converged"])
    for use_cache in (False, True, True):                         # the store's path, cold cache, warm cache
        rdf = query.runs(SWEEP, tracking_uri=uri, cache=use_cache)
        assert rdf.loc[rdf["trial_key"] == key, "run_id"].tolist() == [ids[key]]
        assert not rdf.loc[rdf["trial_key"] == key, "converged"].item()
        assert later not in set(rdf["run_id"]) and len(rdf) == len(recs)
        conv = query.runs(SWEEP, tracking_uri=uri, converged_only=True, cache=use_cache)
        assert key not in set(conv["trial_key"]) and later not in set(conv["run_id"]) and len(conv) == n_conv
        pts = query.points(SWEEP, tracking_uri=uri, cache=use_cache)
        assert later not in set(pts["run_id"]) and key not in set(pts["trial_key"]) and len(pts) == n_pts
        summ = query.summary(SWEEP, tracking_uri=uri, cache=use_cache)
        w4 = summ[summ["widths"].map(lambda w: w == (4,))]
        assert w4["n_seeds"].max() == _expected_seeds(recs)[(4,)]   # the later converged run is no seed
        assert (w4["n_trials"] == sum(1 for r in recs if tuple(r["config"]["widths"]) == (4,))).all()
    # a filter_string is applied to the representative too: selecting converged runs does not bring `later` in
    picked = query.runs(SWEEP, tracking_uri=uri, filter_string="tags.converged = 'true'")
    assert key not in set(picked["trial_key"]) and len(picked) == n_conv


def test_cache_off_writes_nothing(filled, monkeypatch):
    uri, _exp, _parent, ids, _recs = filled
    monkeypatch.setenv("PERMSYM_CACHE", "off")
    assert cache.cache_path() is None
    assert len(query.runs(SWEEP, tracking_uri=uri)) == len(ids)
    monkeypatch.delenv("PERMSYM_CACHE")
    assert not cache.cache_path().exists()


def test_a_new_scope_never_returns_runs_another_scope_cached_and_the_store_lost(filled):
    """Every sweep's runs cached by a query of all sweeps; one run deleted; the first query of that one sweep
    (a scope of its own: one full listing) must not return the deleted run from the cache."""
    from mlflow import MlflowClient

    uri, _exp, _parent, ids, _recs = filled
    assert set(query.runs(tracking_uri=uri)["run_id"]) == set(ids.values())
    victim = ids[_key(REAL[2])]
    MlflowClient(uri).delete_run(victim)
    got = set(query.runs(SWEEP, tracking_uri=uri)["run_id"])
    assert got == set(ids.values()) - {victim}
    assert victim not in _cached_ids()


def test_the_benchmark_store_holds_n_distinct_finished_runs(tmp_path, monkeypatch):
    """benchmarks/bigstore.py: N runs with N distinct keys, their copied points readable, the same through the
    cache as without it."""
    import sys

    sys.path.insert(0, str(FIXTURES.parents[1]))
    from benchmarks import bigstore

    monkeypatch.setenv("PERMSYM_CACHE_DIR", str(tmp_path / "cache"))
    uri = bigstore.make_sqlite_store(tmp_path / "big", 12, n_seed=4)
    rdf = query.runs(bigstore.SWEEP, tracking_uri=uri, cache=False)
    assert len(rdf) == 12 and rdf["trial_key"].nunique() == 12
    pts = query.points(bigstore.SWEEP, tracking_uri=uri)
    recs = [json.loads(p.read_text()) for p in bigstore.RECORDS[:4]]      # seed i is record i; 8 copies cycle them
    assert len(pts) == 3 * sum(len(r["points"]) for r in recs if r["minimum"]["converged"])
    pd.testing.assert_frame_equal(query.summary(bigstore.SWEEP, tracking_uri=uri, cache=False),
                                  query.summary(bigstore.SWEEP, tracking_uri=uri))


def test_the_first_query_of_all_sweeps_drops_a_run_one_sweep_cached_and_the_store_lost(filled):
    """The other direction: one sweep's runs cached by a query of that sweep; a run deleted; the first query of
    every sweep (another scope: one full listing) must not return it, nor must the next query of the sweep
    (its own incremental listing); restored, it comes back in both."""
    from mlflow import MlflowClient

    uri, exp, _parent, ids, _recs = filled
    other = runs.get_or_create_parent(uri, exp, "elsewhere", {"name": "elsewhere"})
    stranger = runs.log_trial(uri, exp, other, "elsewhere", "x", make_record((3,), 3), figures=False)
    assert set(query.runs(SWEEP, tracking_uri=uri)["run_id"]) == set(ids.values())
    victim = ids[_key(REAL[1])]
    c = MlflowClient(uri)
    c.delete_run(victim)
    assert set(query.runs(tracking_uri=uri)["run_id"]) == set(ids.values()) - {victim} | {stranger}
    assert victim not in _cached_ids()
    assert set(query.runs(SWEEP, tracking_uri=uri)["run_id"]) == set(ids.values()) - {victim}
    c.restore_run(victim)
    assert set(query.runs(SWEEP, tracking_uri=uri)["run_id"]) == set(ids.values())
    assert set(query.runs(tracking_uri=uri)["run_id"]) == set(ids.values()) | {stranger}
