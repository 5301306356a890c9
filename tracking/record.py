"""What a trial run carries besides its metrics: code version, params, run name, the points table.

Pure functions of a trial record or config (no MLflow calls), used by `tracking.runs` when it logs a run.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from .metrics import record_converged

@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout permsym runs from, else the installed package version."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if re.fullmatch(r"[0-9a-f]{40}", sha):
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha[:12] + ("-dirty" if dirty else "")
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return "permsym-" + version("permsym")
    except Exception:
        return "unknown"


def _param_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_param_value(x) for x in v)
    if v is None:
        return "None"
    return str(v)


def flatten_config(config: dict, prefix: str = "") -> dict[str, str]:
    """Config -> MLflow params: nested mappings become dotted keys, lists "4,3" (readable in the UI)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if v:
                out.update(flatten_config(v, key + "."))
            else:
                out[key] = "{}"
        else:
            out[key] = _param_value(v)[:6000]
    return out


def as_record(record: Any) -> dict:
    """Accept the record as a dict, or an object with to_dict() / a dataclass (TrialResult)."""
    if isinstance(record, dict):
        return record
    if hasattr(record, "to_dict"):
        return record.to_dict()
    import dataclasses

    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    raise TypeError(f"trial record: expected a dict, got {type(record).__name__}")


def failure_reason(record: dict) -> str | None:
    if record.get("failure"):
        return _one_line(str(record["failure"]))
    if not record_converged(record):
        m = record.get("minimum") or {}
        return _one_line(f"minimum did not converge (|grad|_inf={m.get('grad_inf')})")
    return None


def _one_line(s: str, limit: int = 500) -> str:
    s = " ".join(str(s).split())
    return s[:limit]


def points_frame(record: dict):
    """The per-point table: one row per permutation point (without saved parameters)."""
    import pandas as pd

    rows = []
    for i, p in enumerate(record.get("points") or []):
        row = {k: v for k, v in p.items() if k not in ("params", "escape")}
        esc = p.get("escape")
        if "escape" in p:     # schema >= 2: the escape test flattened (its per-direction rows stay in the record)
            row["escape_certified"] = esc.get("certified") if esc else None
            row["escape_n_checked"] = esc.get("n_checked") if esc else None
            row["escape_worst_rel_err"] = esc.get("worst_rel_err") if esc else None
        row["point_id"] = i
        rows.append(row)
    return pd.DataFrame(rows)


def points_table_json(record: dict) -> str:
    """The per-point table in MLflow's table format (pandas "split" orient without index), written with
    json.dumps so floats keep every digit (log_table's to_json keeps 10 significant digits) and NaN is null."""
    df = points_frame(record)

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    data = [[clean(v) for v in row] for row in df.astype(object).itertuples(index=False, name=None)]
    return json.dumps({"columns": list(df.columns), "data": data}, default=str)


def run_name_for(config: dict, attempt: int | None = None) -> str:
    w = "x".join(str(x) for x in config.get("widths") or [])
    name = f"{config.get('task', 'trial')}-w{w}-{config.get('activation', '')}-s{config.get('seed', '')}"
    return name if not attempt or int(attempt) <= 1 else f"{name}-a{attempt}"
