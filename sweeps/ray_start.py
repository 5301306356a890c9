"""Start or join Ray for a sweep, and check that a trial's resources fit on some node of it.

Embedded local Ray by default (no dashboard, no metrics exporter, quiet logs, Ray's token authentication,
which a sweep refuses to run without: see `check_auth_local`); a cluster when an address is given. A trial asking
for more CPUs or GPUs than the largest node has would wait forever in Tune's queue: `check_fits` turns that
into a one-line SpecError before any trial is scheduled (on an autoscaling cluster the check sees only the
nodes that are up).
"""
from __future__ import annotations

import os

from tracking.environ import environ_set

from .spec import SpecError


def init_ray(address: str | None, env_vars: dict) -> bool:
    """Start or join Ray unless this process already has it. Returns True when we must shut it down."""
    import ray

    if ray.is_initialized():
        return False
    common = dict(log_to_driver=False, configure_logging=True, logging_level="WARNING")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, **common)
        return True
    # no Prometheus exporter: Ray 2.60 serves it on every interface without the token. The metrics agent has a
    # switch; the autoscaler's and the dashboard head's own Prometheus servers (ports 44217 and 44227, bound to
    # 0.0.0.0 whenever the node has a non-loopback address) have none: an invalid port makes their start fail,
    # which Ray logs and carries on without (measured: 200 on both without the token before, nothing listens after)
    os.environ.setdefault("RAY_enable_metrics_collection", "0")
    env_vars = {"AUTOSCALER_METRIC_PORT": os.environ.get("AUTOSCALER_METRIC_PORT", "-1"),
                "DASHBOARD_METRIC_PORT": os.environ.get("DASHBOARD_METRIC_PORT", "-1"), **env_vars}
    # The embedded Ray's workers inherit its raylet's environment, which is this process's at ray.init: the
    # variables go there, not into a runtime_env, whose agent adds ~0.4 s to every worker's start (measured:
    # two actors ready in 1.10 s with it, 0.34 s without). This process's own environment is restored after.
    with environ_set(env_vars):
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **common)
    return True


def check_auth_local() -> None:
    """Before embedded Ray starts: Ray 2.60 cannot bind it to loopback (it listens on every interface and maps
    a 127.0.0.1 node address back to the node's IP), so its token is what keeps other hosts from running code
    on it; a shell that turned the token off gets a one-line SpecError instead of an open Ray."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.strip().lower() != "token":
        raise SpecError(f"RAY_AUTH_MODE: expected unset or 'token' for the embedded Ray (it listens on every "
                        f"network interface; without its token anyone who reaches it can run code), got {mode!r}")


def check_fits_local(cpus: float) -> None:
    """Before embedded Ray starts: a trial needing more CPUs than this machine has can never run."""
    n = os.cpu_count() or 1
    if cpus > n:
        raise SpecError(f"resources.cpus: expected at most {n} CPUs per trial (this machine has {n}), got {cpus:g}")


def node_capacity() -> list[tuple[float, float]]:
    """(CPU, GPU) of every alive node of the Ray cluster this process is connected to."""
    import ray

    return [(float(n.get("Resources", {}).get("CPU", 0)), float(n.get("Resources", {}).get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def check_fits(cpus: float, gpus: float, nodes: list[tuple[float, float]]) -> None:
    """SpecError unless some node has both `cpus` CPUs and `gpus` GPUs."""
    if not nodes or any(c >= cpus and g >= gpus for c, g in nodes):
        return
    max_c = max(c for c, _ in nodes)
    max_g = max(g for _, g in nodes)
    if cpus > max_c:
        raise SpecError(f"resources.cpus: expected at most {max_c:g} CPUs per trial (the largest of the "
                        f"{len(nodes)} Ray node(s) has {max_c:g}), got {cpus:g}")
    if gpus > max_g:
        raise SpecError(f"resources.gpus: expected at most {max_g:g} GPUs per trial (the largest of the "
                        f"{len(nodes)} Ray node(s) has {max_g:g}), got {gpus:g}")
    raise SpecError(f"resources: expected a node with {cpus:g} CPUs and {gpus:g} GPUs together; no Ray node has "
                    f"both (nodes: {', '.join(f'{c:g} CPU/{g:g} GPU' for c, g in nodes)})")
