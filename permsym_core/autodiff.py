"""Generic autodiff (torch.func) loss, gradient, Hessian and HVPs: the test oracle and the benchmark baseline."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, hessian, jvp, vmap

from .mlp import forward


def loss_fn(landscape):
    """theta -> loss (with the landscape's penalty, if any) as a pure torch function (differentiable by torch.func)."""
    spec = landscape.spec

    c = getattr(landscape, "penalty", None)

    def f(theta: Tensor) -> Tensor:
        loss = landscape.loss_from_output(forward(spec, theta, landscape.X))
        return loss if c is None else loss + 0.5 * (c * theta * theta).sum()

    return f


def autodiff_grad(landscape, theta: Tensor) -> Tensor:
    return grad(loss_fn(landscape))(theta)


def autodiff_hessian(landscape, theta: Tensor) -> Tensor:
    """torch.func.hessian (jacfwd of jacrev): exact, but memory grows with P * N * width."""
    return hessian(loss_fn(landscape))(theta)


def autograd_functional_hessian(landscape, theta: Tensor) -> Tensor:
    """torch.autograd.functional.hessian(vectorize=True)."""
    return torch.autograd.functional.hessian(loss_fn(landscape), theta, vectorize=True)


def hvp(landscape, theta: Tensor, v: Tensor) -> Tensor:
    """Forward-over-reverse Hessian-vector product."""
    return jvp(grad(loss_fn(landscape)), (theta,), (v,))[1]


def vmap_hvp_hessian(landscape, theta: Tensor, chunk_size: int | None = None) -> Tensor:
    """Dense Hessian as a chunked vmap of HVPs over the identity's columns (memory bounded by chunk_size)."""
    g = grad(loss_fn(landscape))
    P = theta.numel()
    eye = torch.eye(P, dtype=theta.dtype, device=theta.device)
    if chunk_size is None:
        per_tangent = 8 * landscape.N * max(landscape.spec.widths) * 2 * landscape.spec.depth + 8 * P
        chunk_size = int(max(1, min(P, 2e9 // max(per_tangent, 1))))
    H = vmap(lambda v: jvp(g, (theta,), (v,))[1], chunk_size=chunk_size)(eye)
    return 0.5 * (H + H.T)
