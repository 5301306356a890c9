"""The loss landscape of one MLP on fixed full-batch data: loss, exact gradient, Hessian and HVPs in float64.

Loss conventions (recorded with every result as LOSS_CONVENTION):
- regression: mean over samples of the sum over outputs of squared errors (no 1/2);
- classification: mean cross-entropy of the softmax of the output layer.

A landscape may carry an L2 penalty 1/2 sum_p c_p theta_p^2: weight decay lambda, with the coefficients of
permsym_core.penalty for a network whose neurons stand for `multiplicities` copies (a reduced network), so that
its critical points split into exact critical points of the full penalised loss. loss, loss_grad, hessian,
hvp and the batched calls then include it; data_loss is the loss without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .activations import get_activation
from .mlp import DTYPE, MLPSpec, default_device
from .penalty import check_weight_decay, l2_coefficients, penalty_value_grad

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

    def __init__(self, spec: MLPSpec, X: Tensor, Y: Tensor, device: torch.device | str | None = None,
                 weight_decay: float = 0.0, multiplicities: Mapping[int, Sequence[int]] | None = None):
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
        self.weight_decay = check_weight_decay(weight_decay)
        self.multiplicities = {int(k): [int(x) for x in m] for k, m in (multiplicities or {}).items()}
        self.penalty = (l2_coefficients(spec, self.weight_decay, self.multiplicities).to(self.device)
                        if self.weight_decay > 0 else None)

    def smaller(self, spec: MLPSpec, multiplicities: Mapping[int, Sequence[int]] | None = None) -> "Landscape":
        """The landscape of another architecture on the same data, with this one's weight decay; its neurons
        stand for `multiplicities` copies (permsym_core.penalty.merged_multiplicities)."""
        labels = self.Y if self.spec.output == "regression" else self.labels
        return Landscape(spec, self.X, labels, device=self.device, weight_decay=self.weight_decay,
                         multiplicities=multiplicities if self.weight_decay > 0 else None)

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

    def data_loss(self, theta) -> float:
        """The loss of the data alone (without the penalty)."""
        return float(self.loss_from_output(self.forward(theta).out))

    def loss(self, theta) -> float:
        loss = self.data_loss(theta)
        if self.penalty is not None:
            loss += float(penalty_value_grad(self.penalty, self.as_theta(theta))[0])
        return loss

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
        if self.penalty is not None:
            value, pgrad = penalty_value_grad(self.penalty, theta)
            loss += float(value)
            grad += pgrad
        return loss, grad

    def grad(self, theta) -> Tensor:
        return self.loss_grad(theta)[1]

    def hessian(self, theta) -> Tensor:
        """The exact dense Hessian, built from the MLP's structure (see permsym_core.hessian)."""
        from .hessian import structured_hessian

        H = structured_hessian(self, self.as_theta(theta))
        if self.penalty is not None:
            H.diagonal().add_(self.penalty)
        return H

    def hvp(self, theta, v: Tensor) -> Tensor:
        """Hessian-vector product by forward-over-reverse autodiff (no dense matrix)."""
        from .autodiff import hvp

        return hvp(self, self.as_theta(theta), self.as_theta(v))
