"""The trial record's fixed parts: the header every record carries (key, config, architecture, loss
convention, tolerances, task, device, log10 of the equivalent minima, the penalty's form), the failure reason
of a trial whose minimum is not certified, and the JSON-able copy `run_trial` returns (README "The trial
record")."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import theory
from .canonical import COINCIDENT_RTOL, DEDUP_PARAM_RTOL, SAME_LOSS_RTOL, ZERO_LOSS_RTOL
from .certify import ESCAPE_RTOL
from .config import SCHEMA_VERSION, TrialConfig
from .landscape import LOSS_CONVENTION
from .mlp import MLPSpec
from .penalty import PENALTY_FORM


def record_header(cfg: TrialConfig, spec: MLPSpec, task_info: dict, zero_loss_scale: float, device) -> dict:
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "trial_key": cfg.trial_key(),
        "config": cfg.to_dict(),
        "architecture": spec.to_dict(),
        "loss_convention": LOSS_CONVENTION[spec.output],
        "tolerances": {"grad_tol": cfg.grad_tol, "same_loss_rtol": SAME_LOSS_RTOL,
                       "zero_loss_rtol": ZERO_LOSS_RTOL, "dedup_param_rtol": DEDUP_PARAM_RTOL,
                       "coincident_rtol": COINCIDENT_RTOL, "escape_rtol": ESCAPE_RTOL,
                       "zero_loss_scale": zero_loss_scale},
        "task_info": task_info,
        "device": str(device),
        "log10_minima": theory.log10_minima(spec.hidden),
    }
    if cfg.weight_decay > 0:
        record["penalty"] = {"weight_decay": cfg.weight_decay, "form": PENALTY_FORM}
    return record


def failure_reason(minimum: dict, grad_tol: float) -> str:
    """Why a trial has no counts: its theta* converged to a point that is not a minimum, or did not converge
    (with the channel it ran along, when one was measured)."""
    if minimum["converged"]:
        return (f"theta* is not a minimum: index {minimum['index']} at |grad|_inf {minimum['grad_inf']:.3g} "
                f"(saddle certified by escape: {bool(minimum.get('saddle'))}); excluded from counts")
    why = (f"minimum not converged: {minimum['stop_reason']} "
           f"(grad_inf={minimum['grad_inf']:.3g} > grad_tol={grad_tol:g})")
    if minimum.get("channel"):
        ch = minimum["channel"]
        why += f"; channel {ch['kind']} in layer {ch['layer']}, neurons {ch['neurons']}"
    return why


def clean(x: Any) -> Any:
    """JSON-able copy: tensors and numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return clean(x.tolist())
    if isinstance(x, np.ndarray):
        return clean(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    return x
