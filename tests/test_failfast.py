"""Fail fast, exit honestly: a trial no node can hold stops at once, an MNIST data_root without MNIST files is
refused before Ray starts, a sweep with failed trials exits 1 and says how many. Each through the CLI: one
line, its exit status, nothing started."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sweeps.cli import main

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ROOT = Path(__file__).resolve().parents[1]
FAST = {"adam_steps": 200, "path_relax": False, "gamma_scan": False, "path_points": 5}


def _write(tmp_path, **over) -> Path:
    d = {"name": "ff", "task": "toy", "grid": {"widths": [[3]], "seeds": [0], **FAST}}
    d.update(over)
    f = tmp_path / "ff.yaml"
    f.write_text(yaml.safe_dump(d))
    return f


def _one_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, output
    return lines[0]


def test_more_cpus_than_this_machine_stops_before_anything_starts(tmp_path):
    n = os.cpu_count()
    f = _write(tmp_path, resources={"cpus": n + 1})
    r = CliRunner().invoke(main, ["sweep", str(f), "--results", str(tmp_path / "res")])
    assert r.exit_code == 2
    assert f"resources.cpus: expected at most {n} CPUs per trial (this machine has {n}), got {n + 1}" in \
        _one_line(r.output)
    assert not (tmp_path / "res").exists()


def test_mnist_data_root_without_mnist_files_is_refused_before_ray_starts(tmp_path):
    empty = tmp_path / "data"
    (empty / "MNIST" / "raw").mkdir(parents=True)
    (empty / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    f = _write(tmp_path, task="mnist", task_options={"data_root": str(empty), "pca": 2, "n_samples": 50})
    r = CliRunner().invoke(main, ["sweep", str(f), "--results", str(tmp_path / "res")])
    assert r.exit_code == 2
    line = _one_line(r.output)
    assert line.startswith("error: task_options.data_root: expected a folder with MNIST/raw/"), line
    assert "missing train-labels-idx1-ubyte" in line
    assert not (tmp_path / "res").exists()


@pytest.mark.slow
def test_trial_larger_than_every_node_of_a_cluster_stops_at_once(tmp_path):
    """A two-node ray.cluster_utils.Cluster (1 CPU and 2 CPUs, no GPU): 3 CPUs or 1 GPU per trial can never be
    scheduled; Tune would wait for ever."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "num_gpus": 0})
    cluster.add_node(num_cpus=2, num_gpus=0)
    try:
        cluster.wait_for_nodes()
        for res, msg in (({"cpus": 3}, "resources.cpus: expected at most 2 CPUs per trial (the largest of the "
                                       "2 Ray node(s) has 2), got 3"),
                         ({"cpus": 1, "gpus": 1}, "resources.gpus: expected at most 0 GPUs per trial")):
            f = _write(tmp_path, resources=res)
            r = CliRunner().invoke(main, ["sweep", str(f), "--results", str(tmp_path / "res"), "--quiet",
                                          "--address", cluster.address])
            assert r.exit_code == 2, r.output
            assert msg in r.output.strip().splitlines()[-1], r.output
        from tracking.store import results_uri
        from fixtures.mlflow_helpers import sweep_runs

        _c, rs = sweep_runs(results_uri(tmp_path / "res"), "ff")
        assert not [r for r in rs if r.data.tags.get("trial_key")]          # no trial run was opened
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_sweep_with_failed_trials_exits_1_and_says_how_many(tmp_path):
    f = _write(tmp_path, grid={"widths": [[3]], "seeds": [0, 1], **FAST}, trial_time_limit_s=0.001,
               max_concurrent=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    p = subprocess.run([sys.executable, "-m", "sweeps.cli", "sweep", str(f), "--results", str(tmp_path / "res"),
                        "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "sweep ff: 2 trial(s) failed, 0 errored" in p.stderr, p.stderr[-2000:]
    assert "0 finished now, 2 failed" in p.stdout
