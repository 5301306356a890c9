"""Secrets: which environment values look like credentials, and whether any of them reached a store."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterable

from .runs import client, search_all

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE)", re.I)


def secret_env_values(environ: dict | None = None, min_len: int = 6) -> dict[str, str]:
    """Environment variables named like secrets, with values long enough to search for."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if SECRET_NAME.search(k) and v and len(v) >= min_len}


def scan_for_secrets(tracking_uri: str, experiment_id: str, values: Iterable[str]) -> list[str]:
    """Where any of `values` occurs in the experiment's run names, params, tags or text artifacts.

    Returns one "run_id: where" line per finding (empty: nothing leaked).
    """
    values = [v for v in values if v]
    if not values:
        return []
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    c = client(tracking_uri)
    findings = []
    for r in search_all(tracking_uri, [experiment_id]):
        rid = r.info.run_id
        fields = [("run_name", r.info.run_name or "")]
        fields += [(f"param {k}", v) for k, v in r.data.params.items()]
        fields += [(f"tag {k}", v) for k, v in r.data.tags.items()]
        fields += [(f"metric {k}", k) for k in r.data.metrics]
        for where, text in fields:
            if any(v in str(text) for v in values):
                findings.append(f"{rid}: {where}")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(c.download_artifacts(rid, "", tmp))
            for f in local.rglob("*"):
                if f.is_file():
                    data = f.read_bytes()
                    if any(v.encode() in data for v in values):
                        findings.append(f"{rid}: artifact {f.relative_to(local)}")
    return findings
