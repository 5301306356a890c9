"""Fixtures shared by several test modules."""
import os

import pytest

from permsym_core.threads import torch_threads

#: Settings that change where sweeps write and query: no test may leave them to the tests after it.
ROUTING_ENV = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")


@pytest.fixture(autouse=True)
def no_routing_env_leaks():
    """`mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI in os.environ, which `run_sweep` honours: one
    test that set it sent a later module's sweeps to a server that had been stopped. Restore both after each."""
    saved = {k: os.environ.get(k) for k in ROUTING_ENV}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True, scope="session")
def results_cache_in_tmp(tmp_path_factory):
    """tracking.cache keeps FINISHED runs in ~/.cache/permsym by default: tests (and the CLIs they start) use a
    folder of their own session instead."""
    saved = os.environ.get("PERMSYM_CACHE_DIR")
    os.environ["PERMSYM_CACHE_DIR"] = str(tmp_path_factory.mktemp("permsym-cache"))
    yield
    if saved is None:
        os.environ.pop("PERMSYM_CACHE_DIR", None)
    else:
        os.environ["PERMSYM_CACHE_DIR"] = saved


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: on a shared 2-core machine two threads made the PCA's SVD 15x slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray per test module (ray.init costs ~6-10 s here); never `ray stop`: shutdown ends ours."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    yield ray
    ray.shutdown()
