"""The scientific configuration of one trial: validated, canonical, hashable into a trial key."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .activations import ACTIVATIONS

# Bumped whenever the trial record (permsym_core.study) changes meaning; part of every trial key.
SCHEMA_VERSION = 2
TASKS = ("toy", "teacher", "mnist")
DEVICES = ("auto", "cpu", "cuda")
BATCHING = ("auto", "on", "off")


class ConfigError(ValueError):
    """A trial option with a wrong value; the message names the field and what was expected."""


@dataclass(frozen=True)
class TrialConfig:
    """Everything needed to reproduce a trial. `widths` are the student's hidden widths n_1..n_{d-1}."""

    task: str = "toy"
    widths: tuple[int, ...] = (4,)
    activation: str = "sigmoid"
    seed: int = 0
    bias: bool | None = None            # None: the task's default (toy: no bias)
    task_options: dict = field(default_factory=dict)
    orders: tuple[int, ...] = (1,)       # K values; each must be <= floor(n_k / 2) for the layer to get points
    pairs: str = "all"                   # "all" | "nearest" | "random:N"
    max_pair_sets: int | None = None     # per (layer, order): at most this many pair sets merged; None: all
    grad_tol: float = 1e-10
    max_iter: int = 2000                 # second-order iterations per minimisation
    adam_steps: int = 3000               # first-order warm-up steps
    lr: float = 0.05                     # warm-up learning rate
    init_scale: float = 1.0
    time_limit_s: float | None = None    # per-minimisation wall-time budget
    gamma_scan: bool | None = None       # None: on for single-output nets
    path_relax: bool = True
    path_points: int = 41
    save_params: bool = False
    device: str = "auto"                 # "auto" (CUDA when there) | "cpu" | "cuda"; not part of the trial key
    dense_max_params: int | None = None  # dense/iterative threshold: None = what free memory allows (see README)
    weight_decay: float = 0.0            # L2 penalty lambda on every parameter (permsym_core.penalty); 0: none
    batch_reduced: str = "auto"          # merged networks of a (layer, order) minimised in lock step: "auto" |
    #                                      "on" | "off" (see batches_reduced); not part of the trial key

    def __post_init__(self) -> None:
        def fail(name: str, expected: str, got: Any) -> None:
            raise ConfigError(f"{name}: expected {expected}, got {got!r}")

        if self.task not in TASKS:
            fail("task", f"one of {', '.join(TASKS)}", self.task)
        widths = self.widths
        if isinstance(widths, int) or not isinstance(widths, (list, tuple)) or len(widths) == 0:
            fail("widths", "a non-empty list of hidden widths", widths)
        for w in widths:
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                fail("widths", "integers >= 1", list(widths))
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))
        if self.activation not in ACTIVATIONS:
            fail("activation", f"one of {', '.join(sorted(ACTIVATIONS))}", self.activation)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "an integer >= 0", self.seed)
        orders = self.orders
        if isinstance(orders, int):
            orders = (orders,)
        if not orders or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in orders):
            fail("orders", "a non-empty list of integers >= 1", self.orders)
        object.__setattr__(self, "orders", tuple(sorted(set(int(k) for k in orders))))
        p = self.pairs
        ok = p in ("all", "nearest") or (isinstance(p, str) and p.startswith("random:")
                                          and p[7:].isdigit() and int(p[7:]) >= 1)
        if not ok:
            fail("pairs", "'all', 'nearest' or 'random:N' with N >= 1", p)
        m = self.max_pair_sets
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            fail("max_pair_sets", "an integer >= 1 or null", m)
        if not isinstance(self.task_options, dict):
            fail("task_options", "a mapping", self.task_options)
        for name in ("grad_tol", "lr", "init_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                fail(name, "a number > 0", v)
        for name in ("max_iter", "adam_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                fail(name, "an integer >= 0", v)
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0 <= wd < float("inf"):
            fail("weight_decay", "a finite number >= 0", wd)
        object.__setattr__(self, "weight_decay", float(wd))
        if self.path_points < 3 or isinstance(self.path_points, bool):
            fail("path_points", "an integer >= 3", self.path_points)
        if self.time_limit_s is not None and not (isinstance(self.time_limit_s, (int, float)) and self.time_limit_s > 0):
            fail("time_limit_s", "a number > 0 or null", self.time_limit_s)

        if self.device not in DEVICES:
            fail("device", f"one of {', '.join(DEVICES)}", self.device)
        if self.batch_reduced not in BATCHING:
            fail("batch_reduced", f"one of {', '.join(BATCHING)}", self.batch_reduced)
        if self.batch_reduced == "on" and self.weight_decay > 0:
            fail("batch_reduced", "'auto' or 'off' with a weight_decay (each merged network has its own penalty "
                 "coefficients)", self.batch_reduced)
        if self.gamma_scan and self.weight_decay > 0:
            fail("gamma_scan", "false or null with a weight_decay (the penalty lifts the gamma-line: only gamma = 1/2 "
                 "is critical)", self.gamma_scan)
        if self.batch_reduced == "on" and self.time_limit_s is not None:
            fail("batch_reduced", "'auto' or 'off' with a time_limit_s (in lock step the members would share one "
                 "clock)", self.batch_reduced)
        d = self.dense_max_params
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            fail("dense_max_params", "an integer >= 1 or null", d)

    def torch_device(self):
        """The device the trial runs on; "cuda" where no CUDA device exists is a ConfigError."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device: expected 'auto' or 'cpu' on a machine without CUDA, got 'cuda'")
        return torch.device("cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available())
                            else "cpu")

    def batches_reduced(self) -> bool:
        """Whether the merged networks of one (layer, order) are minimised in lock step, each round one
        batched call (permsym_core.minimise_batched). "auto": on CUDA only. On this CPU it gains 1.06x against
        the loop at its fastest (BENCHMARKS.md, "Batched reduced training"), and its kernels round differently
        from the sequential ones, which in a nearly flat reduced landscape can end a member at another
        certified minimum: on the CPU a trial's record stays what the sequential path gives. Never with a
        time_limit_s, which each minimisation would share with the others of its round ("on" with one is a
        ConfigError); "off" never."""
        if self.batch_reduced != "auto":
            return self.batch_reduced == "on"
        return self.time_limit_s is None and self.weight_decay == 0 and self.torch_device().type == "cuda"

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown trial option; expected one of {', '.join(sorted(known))}")
        d = dict(d)
        for key in ("widths", "orders"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict; max_pair_sets only when set, so that the trial keys of configs
        written before it existed (and meaning the same: no budget) do not change."""
        d = dataclasses.asdict(self)
        if d["max_pair_sets"] is None:
            del d["max_pair_sets"]
        if d["batch_reduced"] == "auto":          # the default, left out: records readable by code without it
            del d["batch_reduced"]
        if d["weight_decay"] == 0:                # the default (no penalty), left out: trial keys unchanged
            del d["weight_decay"]
        d["widths"] = list(self.widths)
        d["orders"] = list(self.orders)
        return d

    def trial_key(self) -> str:
        """Hash of the scientific configuration and the record's schema version (16 hex digits)."""
        config = self.to_dict()
        del config["device"]                     # where it ran does not change what it found
        # batch_reduced: the same algorithm per merged network; its rounding may differ in the last bit
        # (README, "Devices and the dense threshold"), like a run on another device, which shares the key too
        config.pop("batch_reduced", None)
        if config["dense_max_params"] is None:   # keys of trials from before the field stay as they were
            del config["dense_max_params"]
        payload = json.dumps({"schema_version": SCHEMA_VERSION, "config": config}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
