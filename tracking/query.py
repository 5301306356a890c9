"""Query the logged sweeps as pandas DataFrames: trials, permutation points and the count summary.

    from tracking import query
    runs = query.runs(sweep="toy")                  # one row per FINISHED trial, typed columns
    pts = query.points(sweep="toy")                 # one row per permutation point of the converged trials
    query.summary(sweep="toy")                      # per architecture and (layer, order): counts vs bound

The store is `tracking_uri` if given, else $MLFLOW_TRACKING_URI, else the SQLite store of `results_dir`
(default ./permsym-results). One run per trial key: a key with two FINISHED runs (two drivers raced on it)
counts once, its earliest-started run (ties: the smaller run id), picked before any filter (converged_only,
filter_string), so runs(), points() and summary() all show a key by the same run.

FINISHED runs and their points/records are read through the local cache of tracking.cache (a query on 10,000
runs reads the store only for what changed since the last one); `cache=False` or PERMSYM_CACHE=off reads
everything from the store, with the filters (sweep, task, activation, width range, depth) in the MLflow filter
string. A `filter_string` always bypasses the cache (it is MLflow's language, applied by the store).
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pandas as pd

from . import cache as _cache
from . import runs as _runs
from . import store as _store
from .summary import SUMMARY_DOC, _log10_mean, _log10_sum, layer_orders, summarise  # noqa: F401

TUPLE_PARAMS = ("widths", "orders")
INT_PARAMS = ("seed", "max_iter", "adam_steps", "path_points")
FLOAT_PARAMS = ("grad_tol", "lr", "init_scale", "time_limit_s", "weight_decay")
BOOL_PARAMS = ("bias", "gamma_scan", "path_relax", "save_params")
STR_PARAMS = ("task", "activation", "pairs")
ARCH_COLUMNS = ("sweep", "task", "activation", "widths", "depth", "seed", "orders")


def resolve_tracking_uri(tracking_uri: str | None = None, results_dir=None) -> str:
    if tracking_uri:
        return tracking_uri
    if results_dir is None and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return _store.results_uri(results_dir if results_dir is not None else _store.default_results_dir())


# --- parsing MLflow's strings back into types -------------------------------------------------------------

def _parse_scalar(s: str):
    if s == "None":
        return None
    if s in ("True", "False"):
        return s == "True"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def _parse_param(key: str, value: str):
    if key in TUPLE_PARAMS:
        return tuple(int(x) for x in value.split(",") if x.strip()) if value not in ("", "None") else ()
    if key in INT_PARAMS:
        return int(value)
    if key in FLOAT_PARAMS:
        return None if value == "None" else float(value)
    if key in BOOL_PARAMS:
        return None if value == "None" else value == "True"
    if key in STR_PARAMS:
        return value
    if "," in value:
        parts = [_parse_scalar(x) for x in value.split(",")]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in parts):
            return tuple(parts)
        return value
    return _parse_scalar(value)


def _filter_string(sweep=None, task=None, activation=None, width_min=None, width_max=None, depth=None) -> str:
    """The store's query for the FINISHED trial runs of a sweep that pass the config filters."""
    parts = [f"tags.`{_runs.ROLE_TAG}` = '{_runs.TRIAL_ROLE}'", "attributes.status = 'FINISHED'"]
    if sweep is not None:
        parts.append(f"tags.sweep = {_runs._q(sweep)}")
    if task is not None:
        parts.append(f"params.task = {_runs._q(task)}")
    if activation is not None:
        parts.append(f"params.activation = {_runs._q(activation)}")
    if width_min is not None:
        parts.append(f"metrics.arch_width_min >= {float(width_min)}")
    if width_max is not None:
        parts.append(f"metrics.arch_width_max <= {float(width_max)}")
    if depth is not None:
        parts.append(f"metrics.arch_depth = {float(depth)}")
    return " and ".join(parts)


def _converged(r: _cache.RunData) -> bool:
    return r.tags.get("converged") == "true"


def _matches(r: _cache.RunData, task, activation, width_min, width_max, depth, converged_only) -> bool:
    """The filters of _filter_string, applied to a cached run as the store applies them (a missing param or
    metric never matches)."""
    p, m = r.params, r.metrics
    if task is not None and p.get("task") != str(task):
        return False
    if activation is not None and p.get("activation") != str(activation):
        return False
    if width_min is not None and not ("arch_width_min" in m and m["arch_width_min"] >= float(width_min)):
        return False
    if width_max is not None and not ("arch_width_max" in m and m["arch_width_max"] <= float(width_max)):
        return False
    if depth is not None and not ("arch_depth" in m and m["arch_depth"] == float(depth)):
        return False
    return not converged_only or _converged(r)


def one_per_key(found: Sequence[_cache.RunData]) -> list[_cache.RunData]:
    """The runs in start order (ties: run id), one per (experiment, sweep, trial_key): the earliest-started."""
    out, seen = [], set()
    for r in sorted(found, key=lambda r: (r.start_time or 0, r.run_id)):
        key = r.tags.get("trial_key")
        if key is not None:
            k = (r.experiment_id, r.tags.get("sweep"), key)
            if k in seen:
                continue
            seen.add(k)
        out.append(r)
    return out


def _finished(uri, exp_ids, sweep, task, activation, width_min, width_max, depth, converged_only,
              filter_string, cache: bool) -> list[_cache.RunData]:
    """The runs that represent their keys (one_per_key over ALL the scope's FINISHED runs), then filtered.

    The order matters: a key with two FINISHED runs is represented by its earliest-started one whatever the
    filters, so runs(), points() and summary() agree on it (the earliest unconverged and a later converged:
    the key is unconverged everywhere, it does not borrow the later run's counts). The config filters (task,
    activation, widths, depth) may go into the store's query: the trial key is a hash of the config, so every
    run of a key passes them or none does. `converged_only` and a `filter_string` (anything MLflow can test,
    which may differ between a key's runs) are applied to the representatives.
    """
    store = _cache.open_cache() if cache and filter_string is None else None
    if store is not None:
        try:
            with _runs._guard(uri):
                found = store.finished_runs(uri, exp_ids, sweep)
        finally:
            store.close()
        return [r for r in one_per_key(found) if _matches(r, task, activation, width_min, width_max, depth,
                                                          converged_only)]
    filt = _filter_string(sweep, task, activation, width_min, width_max, depth)
    with _runs._guard(uri):
        reps = one_per_key([_cache.RunData.from_mlflow(r) for r in
                            _runs.search_all(uri, exp_ids, filt, order_by=["attributes.start_time ASC"])])
        if filter_string:
            ok = {r.info.run_id for r in _runs.search_all(uri, exp_ids, f"{filt} and {filter_string}")}
            reps = [r for r in reps if r.run_id in ok]
    return [r for r in reps if not converged_only or _converged(r)]


def runs(sweep: str | None = None, experiment: str | None = None, tracking_uri: str | None = None, *,
         results_dir=None, task: str | None = None, activation: str | None = None, width_min: int | None = None,
         width_max: int | None = None, depth: int | None = None, converged_only: bool = False,
         filter_string: str | None = None, cache: bool = True) -> pd.DataFrame:
    """One row per FINISHED trial run, with typed columns.

    Columns: run_id, sweep, trial_key, attempt, code_version, converged (bool), failure_reason, start_time,
    the config (task, widths (tuple), depth (= number of hidden layers), activation, seed, orders (tuple),
    pairs, tolerances..., task_options.*), and every logged metric (minimum_loss, minimum_grad_inf, n_params,
    log10_minima, L<k>_K<K>_<count>, L<k>_barrier, time_<phase>, ...). Trials that did not converge are
    included with converged=False unless `converged_only`; their counts are absent (NaN).
    `width_min`/`width_max` bound every hidden width, `depth` is the number of hidden layers.
    One row per trial key (the earliest-started FINISHED run); `cache`: see the module docstring.
    """
    uri = resolve_tracking_uri(tracking_uri, results_dir)
    with _runs._guard(uri):
        exp_ids = _store.experiment_id_for(uri, experiment)
    found = _finished(uri, exp_ids, sweep, task, activation, width_min, width_max, depth, converged_only,
                      filter_string, cache)
    rows = []
    for r in found:
        tags, params = r.tags, r.params
        row = dict(r.metrics)                            # the base columns below win over same-named metrics
        row.update({"run_id": r.run_id, "experiment_id": r.experiment_id, "sweep": tags.get("sweep"),
               "trial_key": tags.get("trial_key"), "attempt": int(tags.get("attempt", 1) or 1),
               "code_version": tags.get("code_version"), "converged": tags.get("converged") == "true",
               "failure_reason": tags.get("failure_reason"),
               "start_time": r.start_time})
        for k, v in params.items():
            row[k] = _parse_param(k, v)
        if isinstance(row.get("widths"), tuple):
            row["depth"] = len(row["widths"])
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "sweep", "trial_key", "converged", *ARCH_COLUMNS[1:]])
    first = ["run_id", "sweep", "trial_key", "task", "activation", "widths", "depth", "seed", "orders", "converged"]
    first = [c for c in first if c in df.columns]
    metric_cols = sorted({k for r in found for k in r.metrics} - set(first))
    rest = [c for c in df.columns if c not in first and c not in metric_cols]
    df = df[first + rest + [c for c in metric_cols if c not in first]]
    df["start_time"] = pd.to_datetime(df["start_time"], unit="ms", utc=True)      # one conversion, not one per run
    for c in ("seed", "depth"):
        if c in df.columns and df[c].notna().all():
            df[c] = df[c].astype(int)
    if "weight_decay" in df.columns:                # a trial without the param has no penalty
        df["weight_decay"] = df["weight_decay"].astype(float).fillna(0.0)
    return df.reset_index(drop=True)


# --- points ----------------------------------------------------------------------------------------------

def _artifact_texts(uri: str, run_ids: Sequence[str], artifact: str, cache: bool = True) -> dict[str, str]:
    """run id -> the text of its `artifact`: from the cache for the runs it holds as FINISHED, the rest read
    from the store (in parallel) and, for those FINISHED runs, kept in the cache."""
    if not run_ids:
        return {}
    store = _cache.open_cache() if cache else None
    try:
        got = store.get_artifacts(artifact, run_ids) if store is not None else {}
        missing = [r for r in run_ids if r not in got]
        if missing:
            where = {r: store.artifact_uri(r) for r in missing} if store is not None else {}
            workers = 8 if _store.is_http(uri) else 2
            with _runs._guard(uri), ThreadPoolExecutor(max_workers=min(workers, len(missing))) as ex:
                texts = list(ex.map(lambda r: _cache.read_artifact(uri, r, artifact, where.get(r)), missing))
            fresh = dict(zip(missing, texts))
            if store is not None:
                store.put_artifacts(artifact, fresh)
            got.update(fresh)
        return {r: got[r] for r in run_ids}
    finally:
        if store is not None:
            store.close()


def _load_points(uri: str, run_ids: Sequence[str], cache: bool = True) -> pd.DataFrame:
    texts = _artifact_texts(uri, run_ids, _runs.POINTS_ARTIFACT, cache)
    by_cols: dict[tuple, list] = {}              # one frame per column layout (schema), not one per run
    for rid in run_ids:
        obj = json.loads(texts[rid])
        rows = by_cols.setdefault(tuple(obj["columns"]), [])
        rows.extend([*row, rid] for row in obj["data"])
    frames = [pd.DataFrame(rows, columns=[*cols, "run_id"]) for cols, rows in by_cols.items() if rows]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _points_for(uri: str, rdf: pd.DataFrame, cache: bool = True) -> pd.DataFrame:
    if rdf.empty:
        return pd.DataFrame()
    have = rdf[(rdf["converged"]) & (rdf.get("n_points", pd.Series(0, index=rdf.index)).fillna(0) > 0)]
    pdf = _load_points(uri, list(have["run_id"]), cache)
    if pdf.empty:
        return pdf
    arch = [c for c in ("run_id", *ARCH_COLUMNS, "weight_decay", "trial_key") if c in rdf.columns]
    pdf = pdf.merge(rdf[arch], on="run_id", how="left")
    for c in ("layer", "order", "reduced_id", "index", "n_zero", "n_pos", "plateau_dim", "n_next", "fa_index",
              "index_predicted", "reduced_index", "index_lower_bound"):
        if c in pdf.columns:
            pdf[c] = pd.to_numeric(pdf[c]).astype("Int64")
    for c in ("critical", "ambiguous", "claim_zero_holds", "claim_guaranteed_holds", "reducible", "saddle",
              "embedding_ok", "escape_certified", "reducibility_undetermined"):
        if c in pdf.columns:
            pdf[c] = pdf[c].astype("boolean")
    for c in ("reducible", "index_predicted", "saddle", "escape_certified",   # records before schema 2
              "reducibility_undetermined"):
        if c not in pdf.columns:
            pdf[c] = pd.Series(pd.NA, index=pdf.index, dtype="boolean" if c != "index_predicted" else "Int64")
    if "neurons" in pdf.columns:
        pdf["neurons"] = pdf["neurons"].map(lambda v: tuple(v) if isinstance(v, list) else v)
    return pdf


def points(sweep: str | None = None, experiment: str | None = None, tracking_uri: str | None = None, *,
           results_dir=None, task: str | None = None, activation: str | None = None, width_min=None,
           width_max=None, depth=None, filter_string: str | None = None, cache: bool = True) -> pd.DataFrame:
    """One row per permutation point across the converged trials that match.

    Columns: layer, order, reduced_id, neurons, gamma, loss, grad_inf, critical, index, n_zero, tau, gap,
    ambiguous, lowest_eigenvalues, plateau_dim (n_{k+1}), claim_zero_holds (n_zero >= n_{k+1}),
    claim_guaranteed_holds, fa_index (<NA> where undefined), log10_multiplicity, point_id, run_id and the
    architecture columns (sweep, task, activation, widths, depth, seed, orders, trial_key).
    Trials that did not converge contribute no points.
    """
    uri = resolve_tracking_uri(tracking_uri, results_dir)
    rdf = runs(sweep, experiment, uri, task=task, activation=activation, width_min=width_min,
               width_max=width_max, depth=depth, converged_only=True, filter_string=filter_string, cache=cache)
    return _points_for(uri, rdf, cache)


# --- summary (tracking.summary) ----------------------------------------------------------------------------

def summary(sweep: str | None = None, experiment: str | None = None, tracking_uri: str | None = None, *,
            by: Sequence[str] = ("task", "activation", "widths"), results_dir=None, task=None, activation=None,
            width_min=None, width_max=None, depth=None, filter_string: str | None = None,
            cache: bool = True) -> pd.DataFrame:
    """Per group (`by`) and per (layer, order): the empirical counts against the bound (see SUMMARY_DOC)."""
    uri = resolve_tracking_uri(tracking_uri, results_dir)
    rdf = runs(sweep, experiment, uri, task=task, activation=activation, width_min=width_min,
               width_max=width_max, depth=depth, converged_only=False, filter_string=filter_string, cache=cache)
    return summarise(rdf, _points_for(uri, rdf, cache), by)


summary.__doc__ += "\n\n" + SUMMARY_DOC


def records(run_ids: Sequence[str], tracking_uri: str | None = None, results_dir=None, *,
            cache: bool = True) -> dict[str, dict]:
    """The full trial records (trial_record.json) of the given runs, by run id (cached for FINISHED runs)."""
    uri = resolve_tracking_uri(tracking_uri, results_dir)
    texts = _artifact_texts(uri, list(run_ids), _runs.RECORD_ARTIFACT, cache)
    return {r: json.loads(t) for r, t in texts.items()}


def to_jsonable(df: pd.DataFrame) -> list[dict]:
    """Records for JSON output: tuples become lists, NaN/NA become null."""
    out = []
    for rec in df.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, (np.integer,)):
                v = int(v)
            elif isinstance(v, (np.floating, float)):
                v = None if not math.isfinite(float(v)) else float(v)
            elif isinstance(v, (np.bool_,)):
                v = bool(v)
            elif v is pd.NA:
                v = None
            clean[str(k)] = v
        out.append(clean)
    return out
