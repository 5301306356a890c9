"""Exact dense Hessian of an MLP loss, assembled from the network's structure (any depth, float64, CPU or CUDA).

Notation per sample n: z_k = W_k h_{k-1} + b_k, h_k = sigma(z_k) (k < d), f = z_d; ~h_{k-1} = [h_{k-1}, 1]
when layer k has a bias, so that parameter (k, a, i) is W~_k[a, i]. delta_k = dL/dz_k (backprop),
s_k = sigma''(z_k) * (delta_{k+1} W_{k+1}), T_{k,l} = dz_k/dz_l (T_{k,k} = I; the forward "g" tensors),
J_k = df/dz_k = T_{d,k}. The Hessian splits into H = G + R:

- Gauss-Newton G = A^T A, rows (n, o) of A: A[(n,o), (k,a,i)] = (C_n^T J_k)[o, a] ~h_{k-1}[i], where
  C_n C_n^T = d2l/df2 (regression 2 I / N; classification (diag p - p p^T) / N, C^T = (diag sqrt p)(I - 1 p^T)
  / sqrt N). One GEMM over samples.
- Residual R, block (k, l), l <= k:
      R[(k,a,i), (l,b,j)] = sum_n (Rz_k T_{k,l})[a, b] ~h_{k-1}[i] ~h_{l-1}[j]
                          + [l < k] sum_n delta_k[a] sigma'(z_{k-1})[i] T_{k-1,l}[i, b] ~h_{l-1}[j]   (i not bias)
  where Rz_k = d2L/dz_k^2 minus its Gauss-Newton part: Rz_d = 0, Rz_k = diag(s_k) + M_k^T Rz_{k+1} M_k,
  M_k = W_{k+1} diag(sigma'(z_k)). The first term holds the sigma'' curvature of every layer at or above k
  (pulled back through the g tensors); the second is the bilinear W_k x h_{k-1} cross term
  (MLPGradientFlow.jl's second-order backprop, generalised). diag(s_k) gives block-diagonal blocks
  (k, k); l = k - 1 makes the cross term sparse (T_{k-1,k-1} = I); both are handled without dense tensors.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .mlp import DTYPE

CHUNK_ELEMS = 1 << 25      # 32 M float64 (256 MB): the most a sample-chunked work tensor holds (CUDA's chunk)
CPU_CHUNK_ELEMS = 1 << 21  # 2 M float64 (16 MB) on the CPU: under glibc malloc's 32 MB mmap ceiling
MIN_CHUNK_ROWS = 1024      # but at least this many GEMM rows per CPU chunk (a large P is GEMM-bound)


def dense_hessian_bytes(P: int) -> int:
    """Bytes for one dense float64 P x P Hessian plus the build's chunked workspace (CHUNK_ELEMS: an upper
    bound on the CPU, whose chunks are smaller)."""
    return 8 * int(P) ** 2 + 2 * 8 * CHUNK_ELEMS


def available_bytes(device: torch.device | str | None = None) -> int:
    """Free memory: torch.cuda.mem_get_info on CUDA, /proc/meminfo MemAvailable on the CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def dense_fits(P: int, device: torch.device | str | None = None, copies: int = 3) -> bool:
    """Whether `copies` dense Hessians (the build plus a factorisation's copies) and the workspace fit."""
    need = copies * 8 * int(P) ** 2 + dense_hessian_bytes(0)
    return need <= available_bytes(device)


def structured_hessian(landscape, theta: Tensor) -> Tensor:
    """The exact Hessian (P, P) float64 of landscape's loss at theta, on the landscape's device."""
    theta = landscape.as_theta(theta)
    spec, act = landscape.spec, landscape.act
    cache = landscape.forward(theta)
    Ws = [W for W, _ in spec.views(theta)]
    hts = _augmented_inputs(spec, cache.hs)
    dsig = [act.deriv(z, h) for z, h in zip(cache.zs[:-1], cache.hs[1:])]
    deltas, s = _backprop(landscape, Ws, cache, dsig)
    P = spec.n_params
    H = torch.empty(P, P, dtype=DTYPE, device=theta.device)
    _add_gauss_newton(H, landscape, Ws, cache, dsig, first=True)   # writes every entry of H
    _add_residual(H, spec, Ws, hts, dsig, deltas, s)
    _symmetrise_(H)
    return H


# ---------------------------------------------------------------- forward / backward quantities


def _augmented_inputs(spec, hs: list[Tensor]) -> list[Tensor]:
    """~h_{k-1} for k = 1..d: the layer input with a column of ones appended when layer k has a bias."""
    out = []
    for h, has_b in zip(hs, spec.biases):
        out.append(torch.cat([h, torch.ones_like(h[:, :1])], 1) if has_b else h)
    return out


def _backprop(landscape, Ws, cache, dsig) -> tuple[list[Tensor], list[Tensor | None]]:
    """delta_k = dL/dz_k (k = 1..d) and s_k = sigma''(z_k) * (delta_{k+1} W_{k+1}) (k < d; s_d = None)."""
    d = len(Ws)
    deltas: list = [None] * d
    s: list = [None] * d
    deltas[d - 1] = landscape.output_error(cache.out)
    for k in range(d - 1, 0, -1):  # 0-based layer index k-1 receives from layer k
        back = deltas[k] @ Ws[k]
        deltas[k - 1] = back * dsig[k - 1]
        s[k - 1] = back * landscape.act.deriv2(cache.zs[k - 1], cache.hs[k], dsig[k - 1])
    return deltas, s


def _output_factor(landscape, out: Tensor) -> Tensor:
    """C_n^T per sample, (N, o, o), with C_n C_n^T = d2l/df2 (the loss's per-sample output Hessian)."""
    N, o = out.shape
    if landscape.spec.output == "classification":
        p = torch.softmax(out, dim=1)
        eye = torch.eye(o, dtype=DTYPE, device=out.device)
        return p.sqrt()[:, :, None] * (eye - p[:, None, :]) / N ** 0.5
    return (2.0 / N) ** 0.5 * torch.eye(o, dtype=DTYPE, device=out.device).expand(N, o, o)


def _sample_chunks(N: int, per_sample: int, device: torch.device, rows_per_sample: int = 1):
    """Slices over samples: on the CPU chunks of CPU_CHUNK_ELEMS entries, or of MIN_CHUNK_ROWS GEMM rows
    (rows_per_sample per sample) where those are more, and never past CHUNK_ELEMS; on CUDA CHUNK_ELEMS.
    A tensor past 32 MB is a fresh mmap on every call (permsym_core.batched): on the MNIST landscape of
    sweeps/mnist.yaml (N = 5,000, P = 212) one Hessian took 21,800 page faults at CHUNK_ELEMS and none in
    CPU chunks (measured outside the harness), and built 1.15-1.28x faster in them in two runs (BENCHMARKS.md,
    "Chunk sizes on the CPU"; the run-to-run noise is about as large)."""
    per_sample = max(per_sample, 1)
    if torch.device(device).type == "cpu":
        elems = max(CPU_CHUNK_ELEMS, -(-MIN_CHUNK_ROWS // rows_per_sample) * per_sample)
        step = max(1, min(elems, CHUNK_ELEMS) // per_sample)
    else:
        step = max(1, CHUNK_ELEMS // per_sample)
    for a in range(0, N, step):
        yield slice(a, min(N, a + step))


# ---------------------------------------------------------------- Gauss-Newton part


def _add_gauss_newton(H, landscape, Ws, cache, dsig, first: bool = False) -> None:
    """H += A^T A with A[(n,o), (k,a,i)] = (C_n^T J_k)[o,a] ~h_{k-1}[n,i], chunked over samples
    (`first`: H = A^T A, H's prior contents are ignored, so it may come from torch.empty)."""
    spec = landscape.spec
    d = len(Ws)
    Js: list = [None] * d
    Js[d - 1] = _output_factor(landscape, cache.out)
    for k in range(d - 1, 0, -1):
        Js[k - 1] = (Js[k] @ Ws[k]) * dsig[k - 1][:, None, :]
    N, o = cache.out.shape
    P = spec.n_params
    for sl in _sample_chunks(N, o * P, H.device, rows_per_sample=o):
        A = torch.empty(sl.stop - sl.start, o, P, dtype=DTYPE, device=H.device)
        for k in range(1, d + 1):
            J, h = Js[k - 1][sl], cache.hs[k - 1][sl]
            n_out, n_in = Ws[k - 1].shape
            w0 = spec.w_offset(k)
            A[:, :, w0:w0 + n_out * n_in] = (J[:, :, :, None] * h[:, None, None, :]).reshape(-1, o, n_out * n_in)
            b0 = spec.b_offset(k)
            if b0 is not None:
                A[:, :, b0:b0 + n_out] = J
        A = A.reshape(-1, P)
        H.addmm_(A.T, A, beta=0.0 if first and sl.start == 0 else 1.0)


# ---------------------------------------------------------------- residual part


def _forward_jacobians(Ws, dsig) -> dict[tuple[int, int], Tensor]:
    """T[(m, l)] = dz_m/dz_l per sample, (N, n_m, n_l), for 1 <= l < m <= d - 1 (1-based layers)."""
    d = len(Ws)
    T: dict[tuple[int, int], Tensor] = {}
    for l in range(1, d - 1):
        T[(l + 1, l)] = Ws[l][None] * dsig[l - 1][:, None, :]
        for m in range(l + 2, d):
            T[(m, l)] = (Ws[m - 1][None] * dsig[m - 2][:, None, :]) @ T[(m - 1, l)]
    return T


def _dense_residual_z(Ws, dsig, s) -> list[Tensor | None]:
    """F_k = M_k^T Rz_{k+1} M_k (N, n_k, n_k), the non-diagonal part of Rz_k; None for k >= d - 1."""
    d = len(Ws)
    F: list = [None] * d
    for k in range(d - 2, 0, -1):  # 1-based layer k, needs Rz_{k+1} = diag(s_{k+1}) + F_{k+1}
        W, ds = Ws[k], dsig[k - 1]                 # M = W diag(sigma'_k): (n_{k+1}, n_k) per sample
        # M^T diag(s_{k+1}) M = diag(ds) (sum_a s[n,a] W[a,i] W[a,j]) diag(ds): one (N x n_{k+1}) GEMM
        WW = (W[:, :, None] * W[:, None, :]).reshape(W.shape[0], -1)
        Fk = (s[k] @ WW).view(-1, W.shape[1], W.shape[1])
        Fk.mul_(ds[:, :, None]).mul_(ds[:, None, :])
        if F[k] is not None:
            M = W[None] * ds[:, None, :]
            Fk += M.transpose(1, 2) @ (F[k] @ M)
        F[k - 1] = Fk
    return F


def _add_residual(H, spec, Ws, hts, dsig, deltas, s) -> None:
    """H += R, block by block (k, l), l <= k, each added with its transpose."""
    d = len(Ws)
    T = _forward_jacobians(Ws, dsig)
    F = _dense_residual_z(Ws, dsig, s)
    for k in range(1, d + 1):
        if k < d:  # diag(s_k): block-diagonal in the unit a
            Bd = _outer3(s[k - 1], hts[k - 1], hts[k - 1])
            _add_block(H, spec, k, k, Bd, mode="unit")
        for l in range(1, k + 1):
            if l == k - 1:  # sparse cross term: delta_k[a] sigma'_{k-1}[i] (i = b) ~h_{k-2}[j]
                Bc = _outer3(deltas[k - 1], dsig[k - 2], hts[l - 1])
                _add_block(H, spec, k, l, Bc, mode="input")
                if k < d and F[k - 1] is None:  # Rz_k = diag(s_k): Q[n,a,b] = s_k[a] W_k[a,b] sigma'_l[b]
                    Bs = _separable_block(Ws[k - 1], s[k - 1], dsig[l - 1], hts[k - 1], hts[l - 1])
                    _add_block(H, spec, k, l, Bs, sym=True)
                    continue
            Q = _pulled_back_curvature(k, l, T, F, s)
            cross = l < k - 1
            if Q is None and not cross:
                continue
            _add_block(H, spec, k, l, _dense_block(k, l, Q, T, hts, dsig, deltas, cross), sym=l < k)


def _pulled_back_curvature(k, l, T, F, s) -> Tensor | None:
    """Q = (Rz_k T_{k,l}) without the diagonal-block part of diag(s_k) (handled apart); None when zero."""
    if l == k:
        return F[k - 1]
    if k == len(s):
        return None  # Rz_d = 0
    Tkl = T[(k, l)]
    Q = s[k - 1][:, :, None] * Tkl
    return Q + F[k - 1] @ Tkl if F[k - 1] is not None else Q


def _separable_block(W: Tensor, sk: Tensor, dsl: Tensor, hk: Tensor, hl: Tensor) -> Tensor:
    """B[a,i,b,j] = W[a,b] sum_n (s_k[n,a] hk[n,i]) (sigma'_l[n,b] hl[n,j]): one (P_k x N) (N x P_l) GEMM."""
    N = hk.shape[0]
    left = (sk[:, :, None] * hk[:, None, :]).reshape(N, -1)
    right = (dsl[:, :, None] * hl[:, None, :]).reshape(N, -1)
    B = (left.T @ right).reshape(sk.shape[1], hk.shape[1], dsl.shape[1], hl.shape[1])
    return B.mul_(W[:, None, :, None])


def _dense_block(k, l, Q, T, hts, dsig, deltas, cross: bool) -> Tensor:
    """B[a,i,b,j] of block (k, l): the pulled-back curvature term plus, if `cross`, the dense cross term."""
    hk, hl = hts[k - 1], hts[l - 1]
    B = torch.zeros(deltas[k - 1].shape[1], hk.shape[1], deltas[l - 1].shape[1], hl.shape[1],
                    dtype=DTYPE, device=hk.device)
    if Q is not None:
        B += _weighted_outer(Q, hk, hl)
    if cross:  # i runs over the real inputs of layer k, i.e. the units of layer k-1
        g = dsig[k - 2][:, :, None] * T[(k - 1, l)]  # dh_{k-1}/dz_l, (N, n_{k-1}, n_l)
        B[:, : g.shape[1]] += _cross_term(deltas[k - 1], g, hl)
    return B


def _pair_gemm(u: Tensor, v: Tensor, w: Tensor) -> Tensor:
    """sum_n (u[n] outer v[n]) w[n]^T -> (nu * nv, nw): the outer product is formed per chunk of samples only,
    so every contraction of three per-sample factors is one GEMM over samples."""
    N = u.shape[0]
    out = torch.zeros(u.shape[1] * v.shape[1], w.shape[1], dtype=DTYPE, device=u.device)
    for sl in _sample_chunks(N, u.shape[1] * v.shape[1], u.device):
        uv = (u[sl][:, :, None] * v[sl][:, None, :]).reshape(sl.stop - sl.start, -1)
        out.addmm_(uv.T, w[sl])
    return out


def _outer3(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """sum_n x[n,a] y[n,i] z[n,j] -> [a,i,j]; the pair with the smaller outer product per sample is formed."""
    na, ni, nj = x.shape[1], y.shape[1], z.shape[1]
    if ni * nj <= min(na * nj, na * ni):
        return _pair_gemm(y, z, x).view(ni, nj, na).permute(2, 0, 1)
    if na * nj <= na * ni:
        return _pair_gemm(x, z, y).view(na, nj, ni).permute(0, 2, 1)
    return _pair_gemm(x, y, z).view(na, ni, nj)


def _weighted_outer(Q: Tensor, hk: Tensor, hl: Tensor) -> Tensor:
    """sum_n Q[n,a,b] hk[n,i] hl[n,j] -> [a,i,b,j] with the smaller intermediate: (hk x hl)^T Q (N x i*j; usual,
    the inputs are narrow) or (Q x narrower input)^T (wider input)."""
    N, na, nb = Q.shape
    ni, nj = hk.shape[1], hl.shape[1]
    Qf = Q.reshape(N, na * nb)
    if ni * nj <= na * nb * min(ni, nj):
        return _pair_gemm(hk, hl, Qf).view(ni, nj, na, nb).permute(2, 0, 3, 1)
    if ni < nj:
        return _pair_gemm(Qf, hk, hl).view(na, nb, ni, nj).permute(0, 2, 1, 3)
    return _pair_gemm(Qf, hl, hk).view(na, nb, nj, ni).permute(0, 3, 1, 2)


def _cross_term(delta: Tensor, g: Tensor, hl: Tensor) -> Tensor:
    """sum_n delta[n,a] g[n,i,b] hl[n,j] -> [a,i,b,j]: (delta x hl)^T g (N x a*j intermediate) or, when that
    is the larger, (g x hl)^T delta."""
    N, ni, nb = g.shape
    na, nj = delta.shape[1], hl.shape[1]
    gf = g.reshape(N, ni * nb)
    if na <= ni * nb:
        return _pair_gemm(delta, hl, gf).view(na, nj, ni, nb).permute(0, 2, 3, 1)
    return _pair_gemm(gf, hl, delta).view(ni, nb, nj, na).permute(3, 0, 1, 2)


# ---------------------------------------------------------------- assembly


def _layer_slots(spec, k: int) -> list[tuple[slice, slice]]:
    """(rows of theta, columns of ~h_{k-1}) of layer k: W_k with the real inputs, then b_k with the 1."""
    n_out, n_in = spec.widths[k], spec.widths[k - 1]
    w0 = spec.w_offset(k)
    slots = [(slice(w0, w0 + n_out * n_in), slice(0, n_in))]
    b0 = spec.b_offset(k)
    if b0 is not None:
        slots.append((slice(b0, b0 + n_out), slice(n_in, n_in + 1)))
    return slots


def _add_block(H, spec, k, l, B, mode: str = "dense", sym: bool = False) -> None:
    """Add B into H's (k, l) block (and its transpose into (l, k) if sym), through 4-d views [a,i,b,j] of H.

    mode "dense": B[a,i,b,j]; "unit" (k == l): B[a,i,j] at b = a; "input" (l == k-1): B[a,i,j] at b = i,
    i over the real inputs of layer k only (a bias has no cross term)."""
    nk, nl = spec.widths[k], spec.widths[l]
    for rows, ri in _layer_slots(spec, k):
        if mode == "input" and ri.start > 0:
            continue
        for cols, cj in _layer_slots(spec, l):
            shape = (nk, ri.stop - ri.start, nl, cj.stop - cj.start)
            V = H[rows, cols].view(shape)
            if mode == "dense":
                V += B[:, ri, :, cj]
                if sym:
                    H[cols, rows].view(shape[2:] + shape[:2]).add_(B[:, ri, :, cj].permute(2, 3, 0, 1))
            elif mode == "unit":
                V.diagonal(dim1=0, dim2=2).add_(B[:, ri, cj].permute(1, 2, 0))
            else:
                Bij = B[:, :, cj]  # [a, i, j], i = b
                V.diagonal(dim1=1, dim2=2).add_(Bij.permute(0, 2, 1))
                H[cols, rows].view(shape[2:] + shape[:2]).diagonal(dim1=0, dim2=3).add_(Bij.permute(2, 0, 1))


def _symmetrise_(H: Tensor, strip: int = 256) -> None:
    """H <- (H + H^T) / 2 in place, one strip of rows (and the matching columns) at a time."""
    P = H.shape[0]
    for r in range(0, P, strip):
        e = min(P, r + strip)
        avg = 0.5 * (H[r:e, r:] + H[r:, r:e].T)
        H[r:e, r:] = avg
        H[r:, r:e] = avg.T
