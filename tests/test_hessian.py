"""The structured Hessian (permsym_core.hessian) against the torch.func oracle and finite differences.

Every activation x depths 1-3 x bias flags (none, all, mixed per layer) x regression (1 and several
outputs) and classification, on small nets (P <= ~90) with N = 30 samples.
"""
import pytest
import torch

import permsym_core.hessian as hessian_mod
from permsym_core.activations import ACTIVATIONS
from permsym_core.autodiff import autodiff_grad, autodiff_hessian
from permsym_core.hessian import dense_fits, dense_hessian_bytes, structured_hessian
from permsym_core.landscape import Landscape
from permsym_core.mlp import DTYPE, MLPSpec

N = 30
ORACLE_TOL = 1e-13  # max |diff| / max |entry| against torch.func (measured agreement: 3e-15)
FD_STEP = 1e-5
# Central differences of the exact gradient: truncation h^2 |L'''| / 6 ~ 1e-10 |L'''| plus rounding
# eps |grad| / h ~ 1e-11 |grad|. Measured on these cases: max 4e-9, median 6e-11 relative to max |H|
# (which spans 0.1..80). A missing residual term (sigma'' block, cross term) shows at 1e-3..1 relative,
# so 1e-6 keeps a margin of >= 200 on each side.
FD_TOL = 1e-6

CONFIGS = [  # (widths, per-layer bias flags, output)
    ((4, 1), (True,), "regression"),
    ((4, 3), (False,), "regression"),
    ((4, 3), (True,), "classification"),
    ((3, 5, 1), (True, True), "regression"),
    ((3, 5, 2), (False, False), "regression"),
    ((3, 5, 2), (False, True), "regression"),
    ((3, 5, 3), (True, False), "classification"),
    ((3, 4, 5, 1), (True, True, True), "regression"),
    ((3, 4, 5, 2), (True, False, True), "regression"),
    ((2, 4, 3, 3), (False, True, False), "classification"),
    ((4, 6, 6, 2), (True, True, True), "classification"),
]
CASES = [(act, *cfg) for act in sorted(ACTIVATIONS) for cfg in CONFIGS]
IDS = [f"{a}-{'x'.join(map(str, w))}-{''.join('b' if f else 'n' for f in b)}-{o[:3]}" for a, w, b, o in CASES]


def make_landscape(act, widths, biases, output, seed=0, n=N):
    gen = torch.Generator().manual_seed(seed)
    spec = MLPSpec(widths, act, biases, output)
    X = torch.randn(n, widths[0], generator=gen, dtype=DTYPE)
    if output == "classification":
        Y = torch.randint(0, widths[-1], (n,), generator=gen)
    else:
        Y = torch.randn(n, widths[-1], generator=gen, dtype=DTYPE)
    theta = spec.init(seed, scale=1.5) + 0.3 * torch.randn(spec.n_params, generator=gen, dtype=DTYPE)
    return Landscape(spec, X, Y, device="cpu"), theta


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("act,widths,biases,output", CASES, ids=IDS)
def test_gradient_and_hessian_match_oracle(act, widths, biases, output):
    L, theta = make_landscape(act, widths, biases, output)
    _, g = L.loss_grad(theta)
    assert rel_diff(g, autodiff_grad(L, theta)) <= ORACLE_TOL
    H = structured_hessian(L, theta)
    assert H.shape == (L.n_params, L.n_params) and H.dtype == torch.float64
    H0 = autodiff_hessian(L, theta)
    assert float(H0.abs().max()) > 1e-3  # a non-trivial Hessian
    assert rel_diff(H, H0) <= ORACLE_TOL
    assert torch.equal(H, H.T)


@pytest.mark.parametrize("act,widths,biases,output", CASES, ids=IDS)
def test_hessian_matches_finite_differences(act, widths, biases, output):
    L, theta = make_landscape(act, widths, biases, output, seed=1)
    H = structured_hessian(L, theta)
    P = L.n_params
    fd = torch.empty(P, P, dtype=DTYPE)
    for j in range(P):
        e = torch.zeros(P, dtype=DTYPE)
        e[j] = FD_STEP
        fd[:, j] = (L.grad(theta + e) - L.grad(theta - e)) / (2 * FD_STEP)
    assert rel_diff(H, fd) <= FD_TOL


def test_landscape_hessian_is_structured_and_chunking_is_exact(monkeypatch):
    """Tiny sample chunks (many partial GEMMs) give the same matrix; Landscape.hessian is this build."""
    L, theta = make_landscape("tanh", (3, 4, 5, 3, 2), (True, False, True, True), "classification", n=23)
    H_full = L.hessian(theta)
    assert torch.equal(H_full, structured_hessian(L, theta))
    monkeypatch.setattr(hessian_mod, "CHUNK_ELEMS", 50)
    H_chunked = structured_hessian(L, theta)
    assert rel_diff(H_chunked, H_full) <= 1e-13
    assert rel_diff(H_full, autodiff_hessian(L, theta)) <= ORACLE_TOL


def test_cpu_sample_chunks_cover_the_samples_under_the_mmap_ceiling_or_with_enough_gemm_rows():
    """Every sample in exactly one chunk, in order; a CPU chunk stays under CPU_CHUNK_ELEMS entries (below the
    32 MB at which every block is a fresh mmap) unless that would give its GEMM fewer than MIN_CHUNK_ROWS rows
    (a large P, GEMM-bound), and never past CHUNK_ELEMS; CUDA's chunks are CHUNK_ELEMS."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    cases = {  # (N, entries per sample, GEMM rows per sample): the expected samples per CPU chunk
        (5000, 10 * 212, 10): 989,           # MNIST [8, 6]: 16 MB chunks, 9,890 rows each
        (5000, 10 * 1840, 10): 113,          # P = 1,840: still 1,130 rows
        (5000, 10 * 5000, 10): 103,          # P = 5,000: the row floor, 1,030 rows (a floor division: 1,020)
        (1681, 20000, 1): 1024,              # P = 20,000 on the toy data: 1,024 rows, 164 MB
        (100, 1 << 26, 1): 1,                # past CHUNK_ELEMS: one sample at a time
        (23, 50, 1): 23,                     # small: one chunk
    }
    for (N, per, rows), expected in cases.items():
        chunks = list(hessian_mod._sample_chunks(N, per, cpu, rows))
        assert [i for sl in chunks for i in range(sl.start, sl.stop)] == list(range(N))
        assert chunks[0].stop - chunks[0].start == expected
        big = list(hessian_mod._sample_chunks(N, per, cuda, rows))
        assert big[0].stop - big[0].start == min(N, max(1, hessian_mod.CHUNK_ELEMS // per))


def test_cpu_sample_chunks_give_the_one_chunk_hessian(monkeypatch):
    """A softmax landscape that the CPU rule cuts into several chunks (N o P = 5,000 x 10 x 55 entries, 2.75 M)
    has the Hessian of one chunk."""
    L, theta = make_landscape("tanh", (4, 3, 10), (True, True), "classification", n=5000)
    assert len(list(hessian_mod._sample_chunks(L.N, 10 * L.n_params, torch.device("cpu"), 10))) == 2
    calls, chunks = [], hessian_mod._sample_chunks

    def spy(N, per_sample, device, rows_per_sample=1):
        calls.append((N, per_sample, torch.device(device).type, rows_per_sample))
        return chunks(N, per_sample, device, rows_per_sample)

    monkeypatch.setattr(hessian_mod, "_sample_chunks", spy)
    H = structured_hessian(L, theta)
    assert (5000, 10 * L.n_params, "cpu", 10) in calls          # the Gauss-Newton build: o rows per sample
    monkeypatch.setattr(hessian_mod, "_sample_chunks", chunks)
    monkeypatch.setattr(hessian_mod, "CPU_CHUNK_ELEMS", hessian_mod.CHUNK_ELEMS)
    assert len(list(hessian_mod._sample_chunks(L.N, 10 * L.n_params, torch.device("cpu"), 10))) == 1
    assert rel_diff(structured_hessian(L, theta), H) <= 1e-13


def test_gauss_newton_overwrites_what_was_in_memory(monkeypatch):
    """The build starts from torch.empty: the first Gauss-Newton GEMM must overwrite (beta = 0), never add to
    or propagate whatever the memory held, NaN included, also when the samples come in several chunks."""
    L, theta = make_landscape("gelu", (3, 4, 2), (True, True), "regression", n=23)
    ref = structured_hessian(L, theta)
    monkeypatch.setattr(hessian_mod.torch, "empty", lambda *a, **k: torch.full(a, float("nan"), dtype=DTYPE))
    for chunk in (1 << 25, 50):
        monkeypatch.setattr(hessian_mod, "CHUNK_ELEMS", chunk)
        H = structured_hessian(L, theta)
        assert bool(torch.isfinite(H).all()) and rel_diff(H, ref) <= 1e-13


def test_depth_four_mixed_biases():
    L, theta = make_landscape("g", (2, 3, 4, 3, 2), (True, False, True, False), "regression")
    assert rel_diff(structured_hessian(L, theta), autodiff_hessian(L, theta)) <= ORACLE_TOL


@pytest.mark.parametrize("widths", [(3, 1, 4, 2), (4, 5, 1, 3, 1), (2, 1, 1, 2)])
def test_width_one_hidden_layers(widths):
    """A one-unit hidden layer makes the other contraction orders the cheaper ones (see the next test)."""
    L, theta = make_landscape("softplus", widths, tuple(True for _ in widths[1:]), "regression")
    assert rel_diff(structured_hessian(L, theta), autodiff_hessian(L, theta)) <= ORACLE_TOL


@pytest.mark.parametrize("chunk", [1 << 25, 40])
def test_every_contraction_order_agrees_with_einsum(monkeypatch, chunk):
    """_outer3, _weighted_outer and _cross_term pick the GEMM with the smallest intermediate from the shapes;
    each choice (and sample chunking) must give einsum's numbers."""
    monkeypatch.setattr(hessian_mod, "CHUNK_ELEMS", chunk)
    gen = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=DTYPE)

    n = 17
    for na, ni, nj in [(9, 2, 7), (2, 9, 7), (2, 7, 9), (1, 1, 1)]:      # pairs yz, xz, xy smallest
        x, y, z = r(n, na), r(n, ni), r(n, nj)
        ref = torch.einsum("na,ni,nj->aij", x, y, z)
        assert rel_diff(hessian_mod._outer3(x, y, z), ref) <= 1e-13
    for na, nb, ni, nj in [(5, 4, 3, 2), (1, 1, 6, 5), (1, 1, 5, 6)]:  # (hk x hl)^T Q; Q x narrow, both sides
        Q, hk, hl = r(n, na, nb), r(n, ni), r(n, nj)
        ref = torch.einsum("nab,ni,nj->aibj", Q, hk, hl)
        assert rel_diff(hessian_mod._weighted_outer(Q, hk, hl), ref) <= 1e-13
    for na, ni, nb, nj in [(2, 4, 3, 5), (7, 1, 1, 3)]:                 # (delta x hl)^T g; delta^T (g x hl)
        delta, g, hl = r(n, na), r(n, ni, nb), r(n, nj)
        ref = torch.einsum("na,nib,nj->aibj", delta, g, hl)
        assert rel_diff(hessian_mod._cross_term(delta, g, hl), ref) <= 1e-13


def test_memory_estimates():
    assert dense_hessian_bytes(1000) >= 8 * 1000 ** 2
    assert dense_hessian_bytes(2000) - dense_hessian_bytes(1000) == 8 * (2000 ** 2 - 1000 ** 2)
    assert dense_fits(100)
    assert not dense_fits(10 ** 7)  # 800 TB


def test_structured_hessian_and_hvp_match_curvlinops():
    """An external library as the oracle: curvlinops' HessianLinearOperator on the same two-hidden-layer
    softplus net (dense H @ I and one matrix-vector product) equals the structured Hessian and Landscape.hvp."""
    pytest.importorskip("curvlinops")
    from benchmarks.hessian import curvlinops_operator

    gen = torch.Generator().manual_seed(3)
    spec = MLPSpec((4, 6, 5, 1), "softplus", True, "regression")
    X = torch.randn(200, 4, generator=gen, dtype=torch.float64)
    Y = torch.tanh(X[:, :1] - X[:, 1:2])
    L = Landscape(spec, X, Y, device="cpu")
    theta = spec.init(1) + 0.2 * torch.randn(spec.n_params, generator=gen, dtype=torch.float64)
    op = curvlinops_operator(L, theta)
    H_ref = op @ torch.eye(spec.n_params, dtype=torch.float64)
    H = L.hessian(theta)
    assert float((H - H_ref).abs().max() / H_ref.abs().max()) < 1e-12
    v = torch.randn(spec.n_params, generator=gen, dtype=torch.float64)
    hv_ref = op @ v
    assert float((L.hvp(theta, v) - hv_ref).abs().max() / hv_ref.abs().max()) < 1e-12
