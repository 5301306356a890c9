"""Whole-trial checks of a sweep spec, after its fields validated (`sweeps.spec`): task options against the
task, every trial's network against this machine's memory. Each failure is one `SpecError` line."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from permsym_core.config import ConfigError, TrialConfig

from .spec import Grid, SpecError, _got

if TYPE_CHECKING:
    from .spec import SweepSpec


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def task_dims(task: str, options: dict) -> tuple[int, int, bool]:
    """(n_in, n_out, default bias) of a task without building it (for size checks)."""
    try:
        from permsym_core import tasks as _tasks  # the core's own answer when it has one
        fn = getattr(_tasks, "task_dims", None)
        if fn is not None:
            return tuple(fn(task, **options))  # type: ignore[return-value]
    except Exception:
        pass

    def opt(*names, default):
        for n in names:
            v = options.get(n)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
                return v
        return default

    if task == "toy":
        return 2, 1, False
    if task == "teacher":
        return opt("input_dim", default=2), opt("output_dim", default=1), options.get("bias", True) is not False
    pca = options.get("pca", 10)
    n_in = pca if isinstance(pca, int) and not isinstance(pca, bool) and pca >= 1 else 784
    return n_in, (1 if options.get("target", "class") == "regression" else 10), True


MNIST_OPTIONS = ("data_root", "n_samples", "pca", "target")


def check_task_options(spec: "SweepSpec") -> None:
    """The task's options, checked by the core's own task builder (toy and teacher are cheap to build; mnist
    options are checked by name and kind here, the data is only read by the trials)."""
    opts = spec.task_options
    if spec.task == "mnist":
        for k, v in opts.items():
            if k not in MNIST_OPTIONS:
                raise SpecError(f"task_options.{k}: unknown option of task mnist; expected one of "
                                f"{', '.join(MNIST_OPTIONS)}")
            if k in ("n_samples", "pca") and v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SpecError(f"task_options.{k}: expected an integer >= 1 or null, got {_got(v)}")
            if k == "target" and v not in ("class", "softmax", "onehot", "regression"):
                raise SpecError(f"task_options.target: expected 'class', 'softmax', 'onehot' or 'regression', "
                                f"got {_got(v)}")
            if k == "data_root" and v is not None and not isinstance(v, str):
                raise SpecError(f"task_options.data_root: expected a directory path or null, got {_got(v)}")
        return
    try:
        from permsym_core.tasks import make_task
    except ImportError:
        return
    acts = spec.grid.activations or ["sigmoid"]
    try:
        make_task(spec.task, seed=0, activation=acts[0], **opts)
    except (ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if msg.startswith(f"{spec.task}."):
            msg = msg[len(spec.task) + 1:]
        raise SpecError(f"task_options.{msg}") from None


def n_params(widths: list[int], n_in: int, n_out: int, bias: bool) -> int:
    full = [n_in, *widths, n_out]
    return sum(full[k] * full[k - 1] + (full[k] if bias else 0) for k in range(1, len(full)))


def check_trials(spec: "SweepSpec") -> None:
    """Every planned trial must be a valid TrialConfig, and its dense Hessian must fit in memory."""
    from .plan import expand

    dims = spec.grid.dimensions()
    for field, values in dims.items():
        key = next((k for k, f in Grid.FIELD_OF.items() if f == field), field)
        for i, v in enumerate(values):
            probe = {"task": spec.task, "task_options": spec.task_options, field: v}
            try:
                TrialConfig.from_dict(probe)
            except ConfigError as e:
                msg = str(e)
                msg = msg.split(": ", 1)[1] if msg.startswith(f"{field}: ") else msg
                raise SpecError(f"grid.{key}[{i}]: {msg}") from None
            except TypeError as e:
                raise SpecError(f"grid.{key}[{i}]: {e}") from None
    try:
        TrialConfig.from_dict({"task": spec.task, "task_options": spec.task_options})
    except ConfigError as e:
        raise SpecError(str(e)) from None
    check_task_options(spec)
    n_in, n_out, default_bias = task_dims(spec.task, spec.task_options)
    mem = _mem_available()
    widths_values = dims.get("widths", [list(TrialConfig().widths)])
    bias_values = dims.get("bias", [None])
    for i, widths in enumerate(widths_values):
        for b in bias_values:
            P = n_params(widths, n_in, n_out, default_bias if b is None else b)
            need = 3 * 8 * P * P
            if mem is not None and need > mem:
                raise SpecError(f"grid.widths[{i}]: expected a network whose dense Hessian fits in memory, got "
                                f"{widths} with {P} parameters (3 x 8 P^2 = {need / 2**30:.1f} GiB > "
                                f"{mem / 2**30:.1f} GiB available)")
    if spec.search.kind == "optuna":
        if not any(len(v) > 1 for v in dims.values()):
            raise SpecError("grid: expected at least one option with two or more values for an optuna search, "
                            "got a single trial")
        if spec.search.n_trials is None and spec.search.sampler != "grid":
            raise SpecError("search.n_trials: expected an integer >= 1 for an optuna search, got nothing")
    n = math.prod(len(v) for v in dims.values())
    if n > 1_000_000:
        raise SpecError(f"grid: expected at most 1000000 trials, got {n}")
    for cfg in expand(spec):          # cheap; catches combinations that fail together
        try:
            TrialConfig.from_dict(cfg)
        except ConfigError as e:
            raise SpecError(f"grid: {e}") from None
