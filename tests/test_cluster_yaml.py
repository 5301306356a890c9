"""ray_cluster.yaml: accepted by Ray's own cluster-launcher checks, and keeps the security choices."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "ray_cluster.yaml"


def _validate(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(cfg))
    validate_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def cfg() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_ray_accepts_the_cluster_config(cfg):
    out = _validate(cfg)
    assert out["provider"]["type"] == "local"
    assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
    # provider local: Ray derives the node types itself; setting them is an error
    assert "available_node_types" not in cfg and "head_node_type" not in cfg


def test_ray_rejects_a_typo_and_node_types_for_local(cfg):
    bad = dict(cfg, worker_start_commands=["ray start"])
    with pytest.raises(BaseException):
        _validate(bad)
    bad = dict(cfg, available_node_types={"x": {"node_config": {}, "resources": {}}}, head_node_type="x")
    with pytest.raises(BaseException):
        _validate(bad)


def test_nodes_install_the_project_pins_and_get_the_mlflow_server(cfg):
    setup = "\n".join(cfg["setup_commands"])
    assert "pip install" in setup and "-e ~/permsym" in setup
    head = "\n".join(cfg["head_start_ray_commands"])
    assert "mlflow server" in head and "postgresql://" in head
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in head
    assert "--dashboard-host=127.0.0.1" in head
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert "MLFLOW_TRACKING_URI=http://" in "\n".join(cmds)
        assert "RAY_AUTH_MODE=token" in "\n".join(cmds)
    pins = (ROOT / "pyproject.toml").read_text()
    for pin in ('"ray[tune,default]==2.60.0"', '"mlflow==3.17.2"', '"optuna==5.0.0"'):
        assert pin in pins


def test_token_auth_is_never_disabled():
    for path in [CLUSTER, *ROOT.glob("sweeps/*.py"), *ROOT.glob("sweeps/*.yaml")]:
        text = path.read_text()
        assert "RAY_AUTH_MODE=disabled" not in text.replace(" ", ""), path


def test_mlflow_server_needs_a_login_kept_outside_the_file(cfg):
    """Basic auth on the head's server, its login read from a file mounted from outside the repository, and
    reaching every `ray start` (so Ray's workers and jobs log with it) as environment, never in a URI."""
    text = CLUSTER.read_text()
    head = "\n".join(cfg["head_start_ray_commands"])
    assert "--app-name basic-auth" in head and "MLFLOW_AUTH_CONFIG_PATH=" in head
    assert cfg["file_mounts"]["~/.permsym/mlflow.env"] == "~/.permsym/mlflow.env"
    setup = "\n".join(cfg["head_setup_commands"])
    assert "mlflow[auth]==3.17.2" in setup and "default_permission = NO_PERMISSIONS" in setup
    for cmds in (cfg["head_start_ray_commands"][1:], cfg["worker_start_ray_commands"][1:]):
        assert ". ~/.permsym/mlflow.env" in "\n".join(cmds)
    assert "password1234" not in text and "@$HEAD_IP" not in text and "@$RAY_HEAD_IP" not in text
    assert "--dashboard-host=127.0.0.1" in head
