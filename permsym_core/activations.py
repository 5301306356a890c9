"""Smooth hidden-layer activations with exact first and second derivatives (float64 torch)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """An activation sigma with its exact derivatives sigma' and sigma''."""

    name: str
    f: Callable[[Tensor], Tensor]
    df: Callable[[Tensor], Tensor]
    d2f: Callable[[Tensor], Tensor]
    # the derivatives from h = f(z) (and sigma'), where they are polynomials in it: no second transcendental
    df_h: Callable[[Tensor], Tensor] | None = None
    d2f_h: Callable[[Tensor, Tensor], Tensor] | None = None

    def deriv(self, z: Tensor, h: Tensor) -> Tensor:
        """sigma'(z), given h = sigma(z) (cheaper where df_h exists; equal to df(z) up to round-off)."""
        return self.df(z) if self.df_h is None else self.df_h(h)

    def deriv2(self, z: Tensor, h: Tensor, dh: Tensor) -> Tensor:
        """sigma''(z), given h = sigma(z) and dh = sigma'(z)."""
        return self.d2f(z) if self.d2f_h is None else self.d2f_h(h, dh)


def _sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def _dsigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _d2sigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s) * (1 - 2 * s)


def _softplus(x: Tensor) -> Tensor:
    # log(1 + e^x) without torch's linear threshold, so that derivatives stay exact.
    return torch.logaddexp(x, torch.zeros_like(x))


def _tanh(x: Tensor) -> Tensor:
    return torch.tanh(x)


def _dtanh(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return 1 - t * t


def _d2tanh(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return -2 * t * (1 - t * t)


def _phi(x: Tensor) -> Tensor:
    return _INV_SQRT_2PI * torch.exp(-0.5 * x * x)


def _Phi(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / _SQRT2))


def _gelu(x: Tensor) -> Tensor:
    return x * _Phi(x)


def _dgelu(x: Tensor) -> Tensor:
    return _Phi(x) + x * _phi(x)


def _d2gelu(x: Tensor) -> Tensor:
    return _phi(x) * (2 - x * x)


def _g(x: Tensor) -> Tensor:
    return torch.sigmoid(4 * x) + _softplus(x)


def _dg(x: Tensor) -> Tensor:
    return 4 * _dsigmoid(4 * x) + torch.sigmoid(x)


def _d2g(x: Tensor) -> Tensor:
    return 16 * _d2sigmoid(4 * x) + _dsigmoid(x)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("sigmoid", _sigmoid, _dsigmoid, _d2sigmoid, lambda h: h * (1 - h), lambda h, dh: dh * (1 - 2 * h)),
        Activation("tanh", _tanh, _dtanh, _d2tanh, lambda h: 1 - h * h, lambda h, dh: -2 * h * dh),
        Activation("softplus", _softplus, _sigmoid, _dsigmoid),
        Activation("gelu", _gelu, _dgelu, _d2gelu),
        Activation("g", _g, _dg, _d2g),
    )
}


def get_activation(name: str) -> Activation:
    """The activation called `name`; an unknown name raises ValueError listing the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}: expected one of {known}") from None
