"""Loss and exact gradient of many parameter vectors of one architecture at once (float64, CPU or CUDA).

`batched_loss_grad(landscape, thetas)` takes thetas of shape (M, P) and returns (losses (M,), grads (M, P))
by one batched forward pass and one batched backpropagation: the same formulas as
permsym_core.landscape.Landscape.loss_grad with a leading batch dimension (torch.bmm/baddbmm), so M images
of a string, or the points of a line, cost a handful of batched kernels instead of M sequential passes.
The work tensors are (M, N, n_k) per layer; `batched_loss_grad` splits M into chunks whose depth + 1 work
tensors hold at most chunk_elems(device) entries together. A landscape's L2 penalty (Landscape.penalty) is
added to every member.

On the CPU a chunk is small (CPU_CHUNK_ELEMS = 2^20 entries, shared by its depth + 1 work tensors): glibc's malloc
serves a block above 32 MB by a fresh mmap, so every temporary of a larger chunk is page-faulted in again on each
call. Measured (BENCHMARKS.md, "Chunk sizes on the CPU"): tens of thousands to over a million minor faults per
loss-and-gradient call of the width-10 and width-20 string image sets in chunks of 2^24 entries, none in chunks of
2^20, and that call 1.15-4.8x faster; the small sets of widths 4 and 3x3 0.62-1.5x. The size is fixed, not per
thread: a member's result depends (in its last bits) on the batch it is computed in, and a record must not depend
on the machine's cores. CUDA keeps CHUNK_ELEMS.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .penalty import penalty_value_grad

CHUNK_ELEMS = 1 << 24          # 16 M float64 (128 MB) per chunk, its work tensors together, on CUDA
CPU_CHUNK_ELEMS = 1 << 20      # 1 M float64 (8 MB) per chunk on the CPU: under malloc's mmap ceiling


def chunk_elems(device: torch.device | str) -> int:
    """Entries of one batched chunk (its work tensors together) on `device`: CPU_CHUNK_ELEMS on the CPU,
    CHUNK_ELEMS on CUDA (module docstring)."""
    return CPU_CHUNK_ELEMS if torch.device(device).type == "cpu" else CHUNK_ELEMS


def _views(spec, thetas: Tensor) -> list[tuple[Tensor, Tensor | None]]:
    """(W_k (M, n_k, n_{k-1}), b_k (M, n_k) or None) for k = 1..d, views into thetas (M, P)."""
    M = thetas.shape[0]
    out = []
    for k in range(1, spec.depth + 1):
        n_out, n_in = spec.widths[k], spec.widths[k - 1]
        w0 = spec.w_offset(k)
        W = thetas[:, w0:w0 + n_out * n_in].reshape(M, n_out, n_in)
        b0 = spec.b_offset(k)
        out.append((W, thetas[:, b0:b0 + n_out] if b0 is not None else None))
    return out


def _losses_from_output(landscape, out: Tensor) -> Tensor:
    """Per-member loss of outputs (M, N, n_d) under the landscape's convention."""
    if landscape.spec.output == "classification":
        picked = out.gather(2, landscape.labels[None, :, None].expand(out.shape[0], -1, 1))[..., 0]
        return (torch.logsumexp(out, dim=2) - picked).mean(1)
    return ((out - landscape.Y) ** 2).sum((1, 2)) / landscape.N


def _output_error(landscape, out: Tensor) -> Tensor:
    if landscape.spec.output == "classification":
        return (torch.softmax(out, dim=2) - landscape.Y) / landscape.N
    return 2.0 * (out - landscape.Y) / landscape.N


def _chunk(landscape, M: int) -> int:
    per = landscape.N * max(landscape.spec.widths) * (landscape.spec.depth + 1)
    return max(1, min(M, chunk_elems(landscape.device) // max(per, 1)))


def _loss_grad_chunk(landscape, thetas: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    spec, act = landscape.spec, landscape.act
    layers = _views(spec, thetas)
    M, d = thetas.shape[0], spec.depth
    h = landscape.X.expand(M, -1, -1)
    hs, zs = [h], []
    for k, (W, b) in enumerate(layers, start=1):
        z = torch.bmm(h, W.transpose(1, 2))
        if b is not None:
            z = z + b[:, None, :]
        zs.append(z)
        h = act.f(z) if k < d else z
        if k < d:
            hs.append(h)
    losses = _losses_from_output(landscape, h)
    if not need_grad:
        return losses, None
    grads = torch.empty_like(thetas)
    gviews = _views(spec, grads)
    delta = _output_error(landscape, h)
    for k in range(d, 0, -1):
        gW, gb = gviews[k - 1]
        gW.copy_(torch.bmm(delta.transpose(1, 2), hs[k - 1]))
        if gb is not None:
            gb.copy_(delta.sum(1))
        if k > 1:
            delta = torch.bmm(delta, layers[k - 1][0]) * act.deriv(zs[k - 2], hs[k - 1])
    return losses, grads


def batched_loss_grad(landscape, thetas: Tensor) -> tuple[Tensor, Tensor]:
    """(losses (M,), grads (M, P)) of thetas (M, P) on the landscape's data (see the module docstring)."""
    thetas = landscape.as_theta(thetas)
    if thetas.ndim != 2 or thetas.shape[1] != landscape.n_params:
        raise ValueError(f"thetas: expected shape (M, {landscape.n_params}), got {tuple(thetas.shape)}")
    step = _chunk(landscape, thetas.shape[0])
    parts = [_loss_grad_chunk(landscape, thetas[a:a + step], True) for a in range(0, thetas.shape[0], step)]
    if not parts:
        return thetas.new_zeros(0), thetas.new_zeros(0, landscape.n_params)
    losses, grads = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if landscape.penalty is not None:
        value, pgrad = penalty_value_grad(landscape.penalty, thetas)
        losses, grads = losses + value, grads + pgrad
    return losses, grads


def batched_loss(landscape, thetas: Tensor) -> Tensor:
    """losses (M,) of thetas (M, P), forward passes only."""
    thetas = landscape.as_theta(thetas)
    step = _chunk(landscape, max(thetas.shape[0], 1))
    parts = [_loss_grad_chunk(landscape, thetas[a:a + step], False)[0] for a in range(0, thetas.shape[0], step)]
    losses = torch.cat(parts) if parts else thetas.new_zeros(0)
    if landscape.penalty is not None and parts:
        losses = losses + penalty_value_grad(landscape.penalty, thetas)[0]
    return losses


def _param_index(spec, k: int, device) -> tuple[Tensor, Tensor]:
    """Positions in theta of layer k's parameters as (n_k, n_{k-1} [+1]) (bias last) and of W_k alone."""
    n_out, n_in = spec.widths[k], spec.widths[k - 1]
    w = spec.w_offset(k) + torch.arange(n_out * n_in, device=device).reshape(n_out, n_in)
    b0 = spec.b_offset(k)
    full = torch.cat([w, (b0 + torch.arange(n_out, device=device))[:, None]], 1) if b0 is not None else w
    return full, w


def _hessians_one_hidden(landscape, thetas: Tensor) -> Tensor:
    """Exact Hessians (M, P, P) of a one-hidden-layer net, batched: H = A^T A (Gauss-Newton, A the per-sample
    output Jacobian times the output-Hessian factor C^T) plus the residual sum_o delta_o d2 f_o, whose only
    non-zero blocks are (W~1[a,i], W~1[a,j]): sum_n (delta W2)[n,a] sigma''(z[n,a]) x~_i x~_j and
    (W2[o,a], W~1[a,j]): sum_n delta[n,o] sigma'(z[n,a]) x~_j (the formulas of permsym_core.hessian at d = 2)."""
    spec, act = landscape.spec, landscape.act
    M, P = thetas.shape
    N, o, h = landscape.N, spec.widths[2], spec.widths[1]
    (W1, b1), (W2, b2) = _views(spec, thetas)
    X = landscape.X
    Xt = torch.cat([X, torch.ones_like(X[:, :1])], 1) if b1 is not None else X           # (N, n0')
    z = torch.bmm(X.expand(M, -1, -1), W1.transpose(1, 2))
    if b1 is not None:
        z = z + b1[:, None, :]
    a, ds, d2s = act.f(z), act.df(z), act.d2f(z)
    out = torch.bmm(a, W2.transpose(1, 2))
    if b2 is not None:
        out = out + b2[:, None, :]
    delta = _output_error(landscape, out)                                                  # (M, N, o)
    idx1, _ = _param_index(spec, 1, thetas.device)                                          # (h, n0')
    _, w2 = _param_index(spec, 2, thetas.device)                                            # (o, h)
    eye = torch.eye(o, dtype=thetas.dtype, device=thetas.device)
    J1 = W2[:, None, :, :] * ds[:, :, None, :]                                              # (M, N, o, h)
    blocks = [(J1[..., None] * X[None, :, None, None, :]).reshape(M, N, o, -1)]               # W1, row-major
    if b1 is not None:
        blocks.append(J1)
    blocks.append((eye[:, :, None] * a[:, :, None, None, :]).reshape(M, N, o, o * h))        # W2[q, a]
    if b2 is not None:
        blocks.append(eye.expand(M, N, o, o))
    A = torch.cat(blocks, dim=3)                                                            # theta's layout
    if spec.output == "classification":
        p = torch.softmax(out, dim=2)
        Ct = p.sqrt()[..., :, None] * (eye - p[..., None, :]) / N ** 0.5                     # (M, N, o, o)
        A = Ct @ A
    else:
        A = A * (2.0 / N) ** 0.5
    A = A.reshape(M, N * o, P)
    H = torch.bmm(A.transpose(1, 2), A)
    s = torch.bmm(delta, W2) * d2s                                                          # (M, N, h)
    R11 = torch.einsum("mna,ni,nj->maij", s, Xt, Xt)
    H[:, idx1[:, :, None], idx1[:, None, :]] += R11
    R21 = torch.einsum("mno,mna,nj->moaj", delta, ds, Xt)                                   # (M, o, h, n0')
    rows, cols = w2[:, :, None].expand_as(R21[0]), idx1[None].expand_as(R21[0])
    H[:, rows, cols] += R21
    H[:, cols, rows] += R21
    return 0.5 * (H + H.transpose(1, 2))


def batched_hessians(landscape, thetas: Tensor) -> Tensor:
    """Exact Hessians (M, P, P) of thetas (M, P): one batched build for one hidden layer (chunked so that
    the per-sample Jacobian stays under chunk_elems entries), Landscape.hessian per member otherwise."""
    thetas = landscape.as_theta(thetas)
    M, P = thetas.shape
    if landscape.spec.depth != 2:
        return torch.stack([landscape.hessian(t) for t in thetas]) if M else thetas.new_zeros(0, P, P)
    per = landscape.N * landscape.spec.widths[-1] * P + P * P
    step = max(1, min(max(M, 1), chunk_elems(thetas.device) // max(per, 1)))
    parts = [_hessians_one_hidden(landscape, thetas[a:a + step]) for a in range(0, M, step)]
    H = torch.cat(parts) if parts else thetas.new_zeros(0, P, P)
    if landscape.penalty is not None:
        H.diagonal(dim1=1, dim2=2).add_(landscape.penalty)
    return H
