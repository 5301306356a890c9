"""The loss landscape of one MLP on fixed full-batch data: loss, exact gradient, Hessian and HVPs in float64.

Loss conventions (recorded with every result as LOSS_CONVENTION):
- regression: mean over samples of the sum over outputs of squared errors (no 1/2);
- classification: mean cross-entropy of the softmax of the output layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .activations import get_activation
from .mlp import DTYPE, MLPSpec, default_device

LOSS_CONVENTION = {
    "regression": "mean over samples of sum over outputs of squared error (no 1/2)",
    "classification": "mean over samples of softmax cross-entropy",
}


@dataclass
class ForwardCache:
    """Pre-activations z_k (k = 1..d) and layer inputs h_{k-1} (h_0 = X) of one forward pass."""

    zs: list[Tensor]
    hs: list[Tensor]
    out: Tensor


class Landscape:
    """Loss of `spec` on inputs X (N, n_0) and targets Y: (N, n_d) floats for regression, (N,) class labels
    for classification. Every tensor is float64 on `device` (CUDA when it is there, unless given)."""

    def __init__(self, spec: MLPSpec, X: Tensor, Y: Tensor, device: torch.device | str | None = None):
        self.spec = spec
        self.device = torch.device(device) if device is not None else default_device()
        self.X = torch.as_tensor(X, dtype=DTYPE).to(self.device)
        if self.X.ndim != 2 or self.X.shape[1] != spec.widths[0]:
            raise ValueError(f"X: expected shape (N, {spec.widths[0]}), got {tuple(self.X.shape)}")
        self.N = self.X.shape[0]
        if spec.output == "classification":
            labels = torch.as_tensor(Y).to(self.device).long().reshape(-1)
            if labels.shape[0] != self.N or labels.min() < 0 or labels.max() >= spec.widths[-1]:
                raise ValueError(f"Y: expected {self.N} class labels in [0, {spec.widths[-1]})")
            self.labels = labels
            self.Y = torch.nn.functional.one_hot(labels, spec.widths[-1]).to(DTYPE)
        else:
            self.Y = torch.as_tensor(Y, dtype=DTYPE).to(self.device).reshape(self.N, -1)
            if self.Y.shape[1] != spec.widths[-1]:
                raise ValueError(f"Y: expected shape (N, {spec.widths[-1]}), got {tuple(self.Y.shape)}")
        self.act = get_activation(spec.activation)

    @property
    def n_params(self) -> int:
        return self.spec.n_params

    def as_theta(self, theta) -> Tensor:
        return torch.as_tensor(theta, dtype=DTYPE).to(self.device)

    def forward(self, theta: Tensor) -> ForwardCache:
        theta = self.as_theta(theta)
        zs, hs = [], [self.X]
        h = self.X
        d = self.spec.depth
        for k, (W, b) in enumerate(self.spec.views(theta), start=1):
            z = h @ W.T
            if b is not None:
                z = z + b
            zs.append(z)
            h = self.act.f(z) if k < d else z
            if k < d:
                hs.append(h)
        return ForwardCache(zs, hs, h)

    def loss_from_output(self, out: Tensor) -> Tensor:
        if self.spec.output == "classification":
            return (torch.logsumexp(out, dim=1) - out.gather(1, self.labels[:, None])[:, 0]).mean()
        return ((out - self.Y) ** 2).sum() / self.N

    def output_error(self, out: Tensor) -> Tensor:
        """dLoss/d(output) per sample, shape (N, n_d) (already divided by N)."""
        if self.spec.output == "classification":
            return (torch.softmax(out, dim=1) - self.Y) / self.N
        return 2.0 * (out - self.Y) / self.N

    def loss(self, theta) -> float:
        return float(self.loss_from_output(self.forward(theta).out))

    def loss_grad(self, theta) -> tuple[float, Tensor]:
        """Loss and its exact gradient by backpropagation."""
        theta = self.as_theta(theta)
        cache = self.forward(theta)
        loss = float(self.loss_from_output(cache.out))
        grad = torch.zeros_like(theta)
        gviews = self.spec.views(grad)
        layers = self.spec.views(theta)
        delta = self.output_error(cache.out)
        for k in range(self.spec.depth, 0, -1):
            gW, gb = gviews[k - 1]
            gW.copy_(delta.T @ cache.hs[k - 1])
            if gb is not None:
                gb.copy_(delta.sum(0))
            if k > 1:
                delta = (delta @ layers[k - 1][0]) * self.act.deriv(cache.zs[k - 2], cache.hs[k - 1])
        return loss, grad

    def grad(self, theta) -> Tensor:
        return self.loss_grad(theta)[1]

    def hessian(self, theta) -> Tensor:
        """The exact dense Hessian, built from the MLP's structure (see permsym_core.hessian)."""
        from .hessian import structured_hessian

        return structured_hessian(self, self.as_theta(theta))

    def hvp(self, theta, v: Tensor) -> Tensor:
        """Hessian-vector product by forward-over-reverse autodiff (no dense matrix)."""
        from .autodiff import hvp

        return hvp(self, self.as_theta(theta), self.as_theta(v))
