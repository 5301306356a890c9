"""The MLP as one flat float64 parameter vector: architecture, layout, named views, JSON and forward pass.

Layout of the flat vector, layer by layer k = 1..d: W_k row-major (shape (n_k, n_{k-1})), then b_k
(length n_k) when layer k has a bias. Layer k computes ``W_k @ h + b_k``; hidden layers apply the
activation, the output layer is linear (regression) or the logits of a softmax (classification).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .activations import get_activation

DTYPE = torch.float64
OUTPUTS = ("regression", "classification")


def default_device() -> torch.device:
    """CUDA when it is there, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class MLPSpec:
    """Architecture: widths n_0 (input) .. n_d (output), hidden activation, a bias flag per layer, output kind."""

    widths: tuple[int, ...]
    activation: str = "sigmoid"
    biases: tuple[bool, ...] = ()
    output: str = "regression"
    _offsets: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        widths = tuple(int(w) for w in self.widths)
        if len(widths) < 2:
            raise ValueError(f"widths: expected at least input and output widths, got {list(widths)}")
        for k, w in enumerate(widths):
            if w < 1:
                raise ValueError(f"widths[{k}]: expected an integer >= 1, got {w}")
        biases = self.biases
        if isinstance(biases, bool):
            biases = (biases,) * (len(widths) - 1)
        biases = tuple(bool(b) for b in biases) if biases else (True,) * (len(widths) - 1)
        if len(biases) != len(widths) - 1:
            raise ValueError(f"biases: expected {len(widths) - 1} flags (one per layer), got {len(biases)}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output: expected one of {', '.join(OUTPUTS)}, got {self.output!r}")
        get_activation(self.activation)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "biases", biases)
        offsets, pos = [], 0
        for k in range(1, len(widths)):
            w_off = pos
            pos += widths[k] * widths[k - 1]
            b_off = pos if biases[k - 1] else None
            if biases[k - 1]:
                pos += widths[k]
            offsets.append((w_off, b_off))
        object.__setattr__(self, "_offsets", (tuple(offsets), pos))

    @property
    def depth(self) -> int:
        """d: the number of weight layers (d - 1 hidden layers)."""
        return len(self.widths) - 1

    @property
    def hidden(self) -> tuple[int, ...]:
        return self.widths[1:-1]

    @property
    def n_params(self) -> int:
        return self._offsets[1]

    def w_offset(self, k: int) -> int:
        """Offset of W_k (k = 1..d) in the flat vector."""
        return self._offsets[0][k - 1][0]

    def b_offset(self, k: int) -> int | None:
        """Offset of b_k (k = 1..d), None when layer k has no bias."""
        return self._offsets[0][k - 1][1]

    def views(self, theta: Tensor) -> list[tuple[Tensor, Tensor | None]]:
        """(W_k, b_k) for k = 1..d as views into theta (b_k is None without bias)."""
        out = []
        for k in range(1, self.depth + 1):
            n_out, n_in = self.widths[k], self.widths[k - 1]
            w0 = self.w_offset(k)
            W = theta[w0 : w0 + n_out * n_in].view(n_out, n_in)
            b0 = self.b_offset(k)
            b = theta[b0 : b0 + n_out] if b0 is not None else None
            out.append((W, b))
        return out

    def flatten(self, layers: Sequence[tuple[Any, Any]]) -> Tensor:
        """The flat float64 vector of a list of (W_k, b_k) (b_k None for layers without bias)."""
        theta = torch.zeros(self.n_params, dtype=DTYPE)
        if len(layers) != self.depth:
            raise ValueError(f"layers: expected {self.depth} layers, got {len(layers)}")
        for (W, b), (Wv, bv) in zip(layers, self.views(theta)):
            Wv.copy_(torch.as_tensor(np.asarray(W, dtype=np.float64)).view_as(Wv))
            if bv is not None:
                bv.copy_(torch.as_tensor(np.asarray(b, dtype=np.float64)).view_as(bv))
        return theta

    def to_dict(self) -> dict:
        return {"widths": list(self.widths), "activation": self.activation,
                "biases": list(self.biases), "output": self.output}

    def init(self, seed: int, scale: float = 1.0) -> Tensor:
        """Glorot-normal weights (times `scale`), zero biases; deterministic for a seed."""
        gen = torch.Generator().manual_seed(int(seed))
        theta = torch.zeros(self.n_params, dtype=DTYPE)
        for (W, _b) in self.views(theta):
            n_out, n_in = W.shape
            std = scale * (2.0 / (n_in + n_out)) ** 0.5
            W.copy_(torch.randn(n_out, n_in, generator=gen, dtype=DTYPE) * std)
        return theta


def params_to_json(spec: MLPSpec, theta: Tensor) -> dict:
    """The documented JSON layout {"layers": [{"W": [[...]], "b": [...] | null}, ...]} plus the spec."""
    theta = theta.detach().to("cpu", DTYPE)
    layers = [{"W": W.tolist(), "b": (b.tolist() if b is not None else None)} for W, b in spec.views(theta)]
    return {"layers": layers, "activation": spec.activation, "output": spec.output}


def params_from_json(obj: dict | str, activation: str | None = None, output: str | None = None
                     ) -> tuple[MLPSpec, Tensor]:
    """Read the JSON layout back exactly; shapes are checked and a mismatch names the layer and field."""
    if isinstance(obj, str):
        obj = json.loads(obj)
    if not isinstance(obj, dict) or not isinstance(obj.get("layers"), list) or not obj["layers"]:
        raise ValueError("params: expected an object with a non-empty list 'layers'")
    widths: list[int] = []
    biases: list[bool] = []
    mats = []
    for k, layer in enumerate(obj["layers"], start=1):
        if not isinstance(layer, dict) or "W" not in layer:
            raise ValueError(f"layers[{k - 1}]: expected an object with 'W' and 'b'")
        try:
            W = np.asarray(layer["W"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"layers[{k - 1}].W: expected a rectangular matrix of numbers") from None
        if W.ndim != 2 or W.size == 0:
            raise ValueError(f"layers[{k - 1}].W: expected a non-empty 2-d matrix, got shape {W.shape}")
        if widths and W.shape[1] != widths[-1]:
            raise ValueError(f"layers[{k - 1}].W: expected {widths[-1]} columns (the previous layer's width), "
                             f"got {W.shape[1]}")
        if not widths:
            widths.append(W.shape[1])
        widths.append(W.shape[0])
        b = layer.get("b")
        if b is not None:
            try:
                b = np.asarray(b, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"layers[{k - 1}].b: expected a list of numbers or null") from None
            if b.shape != (W.shape[0],):
                raise ValueError(f"layers[{k - 1}].b: expected length {W.shape[0]}, got shape {b.shape}")
        if not np.all(np.isfinite(W)) or (b is not None and not np.all(np.isfinite(b))):
            raise ValueError(f"layers[{k - 1}]: expected finite numbers")
        biases.append(b is not None)
        mats.append((W, b))
    spec = MLPSpec(tuple(widths), activation or obj.get("activation", "sigmoid"), tuple(biases),
                   output or obj.get("output", "regression"))
    return spec, spec.flatten(mats)


def forward(spec: MLPSpec, theta: Tensor, X: Tensor) -> Tensor:
    """Network output for inputs X of shape (N, n_0): (N, n_d), logits for classification."""
    act = get_activation(spec.activation)
    h = X
    layers = spec.views(theta)
    for k, (W, b) in enumerate(layers, start=1):
        z = h @ W.T
        if b is not None:
            z = z + b
        h = act.f(z) if k < spec.depth else z
    return h
