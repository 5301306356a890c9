"""Batched analysis against the one-at-a-time reference: the batched loss and gradient against
Landscape.loss_grad, the batched string method (permsym_core.strings) against paths.string_path path by path,
on the toy task and a two-hidden-layer teacher. Start and end points need not be critical for the string
method to be compared, so they are random (quick: no training)."""
from __future__ import annotations

import pytest
import torch

from permsym_core.batched import batched_hessians, batched_loss, batched_loss_grad
from permsym_core.landscape import Landscape
from permsym_core.mlp import MLPSpec
from permsym_core.paths import path_record, string_path, trace_half
from permsym_core.strings import string_paths, trace_halves
from permsym_core.tasks import make_task


def _landscape(name: str, widths: tuple[int, ...], activation: str = "sigmoid", **opts) -> Landscape:
    task = make_task(name, seed=1, activation=activation, student_widths=widths, **opts)
    spec = MLPSpec((task.n_in, *widths, task.n_out), activation, task.default_bias, task.output)
    return Landscape(spec, task.X, task.Y, device="cpu")


CASES = {
    "toy": lambda: _landscape("toy", (4,)),
    "teacher2": lambda: _landscape("teacher", (3, 3), "tanh", n_samples=200),
}
HESSIAN_CASES = {
    **CASES,
    "teacher_bias_2out": lambda: _landscape("teacher", (4,), "tanh", n_samples=100, output_dim=2),
    "mnist_softmax": lambda: _landscape("mnist", (3,), "sigmoid", n_samples=50, pca=4),
}


@pytest.mark.parametrize("case", sorted(HESSIAN_CASES))
def test_batched_hessians_are_the_structured_ones(case):
    """One batched build (one hidden layer: regression with and without biases, softmax) or the loop
    (deeper), against Landscape.hessian one point at a time and, for one point, torch.func.hessian."""
    from permsym_core.autodiff import autodiff_hessian

    land = HESSIAN_CASES[case]()
    thetas = torch.stack([land.spec.init(s) for s in range(5)])
    H = batched_hessians(land, thetas)
    for t, Hb in zip(thetas, H):
        ref = land.hessian(t)
        assert float((Hb - ref).abs().max()) <= 1e-13 * float(ref.abs().max())
        assert torch.equal(Hb, Hb.T)
    assert float((H[0] - autodiff_hessian(land, thetas[0])).abs().max()) <= 1e-12 * float(H[0].abs().max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_loss_grad_is_the_sequential_one(case):
    land = CASES[case]()
    thetas = torch.stack([land.spec.init(s) for s in range(7)])
    losses, grads = batched_loss_grad(land, thetas)
    for t, loss, g in zip(thetas, losses, grads):
        ref_loss, ref_g = land.loss_grad(t)
        assert float(loss) == pytest.approx(ref_loss, rel=1e-13)
        assert float((g - ref_g).abs().max()) <= 1e-13 * max(1.0, float(ref_g.abs().max()))
    assert torch.allclose(batched_loss(land, thetas), losses, rtol=1e-14, atol=0)


def _penalised_toy() -> Landscape:
    task = make_task("toy", seed=1, activation="sigmoid", student_widths=(4,))
    spec = MLPSpec((task.n_in, 4, task.n_out), "sigmoid", task.default_bias, task.output)
    return Landscape(spec, task.X, task.Y, device="cpu", weight_decay=1e-3)


@pytest.mark.parametrize("case", sorted(HESSIAN_CASES) + ["toy_penalised"])
def test_batched_kernels_in_small_chunks_are_the_per_member_ones(case, monkeypatch):
    """Chunks of 2 members (the CPU's chunks made small; 7 members, so the last chunk is partial): every member's
    loss, gradient and Hessian against Landscape.loss_grad and Landscape.hessian of that member alone."""
    import permsym_core.batched as batched

    land = _penalised_toy() if case == "toy_penalised" else HESSIAN_CASES[case]()
    P = land.n_params
    thetas = torch.stack([land.spec.init(s) for s in range(7)])
    per_lg = land.N * max(land.spec.widths) * (land.spec.depth + 1)    # a member's loss-and-gradient work tensors
    per_h = land.N * land.spec.widths[-1] * P + P * P                   # its one-hidden-layer Hessian build
    monkeypatch.setattr(batched, "chunk_elems", lambda _device: 2 * per_lg)
    assert batched._chunk(land, 7) == 2
    losses, grads = batched_loss_grad(land, thetas)
    assert torch.equal(batched_loss(land, thetas), losses)
    monkeypatch.setattr(batched, "chunk_elems", lambda _device: 2 * per_h)
    H = batched_hessians(land, thetas)
    assert losses.shape == (7,) and grads.shape == (7, P) and H.shape == (7, P, P)
    for t, loss, g, Hb in zip(thetas, losses, grads, H):
        ref_loss, ref_g = land.loss_grad(t)
        ref_H = land.hessian(t)
        assert float(loss) == pytest.approx(ref_loss, rel=1e-13)
        assert float((g - ref_g).abs().max()) <= 1e-13 * max(1.0, float(ref_g.abs().max()))
        assert float((Hb - ref_H).abs().max()) <= 1e-13 * float(ref_H.abs().max())


def test_chunk_size_is_small_on_the_cpu_and_unchanged_on_cuda():
    """Whatever the threads, the CPU's chunk is 2^20 entries (a record must not depend on the cores), below the
    32 MB at which glibc's malloc maps every block afresh; CUDA keeps 2^24 (no GPU needed to ask)."""
    import permsym_core.batched as batched

    before = torch.get_num_threads()
    try:
        sizes = set()
        for n in (1, 2):
            torch.set_num_threads(n)
            sizes.add(batched.chunk_elems("cpu"))
    finally:
        torch.set_num_threads(before)
    assert sizes == {2 ** 20}
    assert batched.chunk_elems(torch.device("cuda", 0)) == 2 ** 24


def _ends(land, n):
    start = land.spec.init(11)
    ends = torch.stack([start + 0.7 * (land.spec.init(20 + b) - start) for b in range(n)])
    return start, ends


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("precond,refresh", [("ends", 1), ("start", 1), ("local", 1), ("local", 3)])
def test_string_paths_are_string_path_per_path(case, precond, refresh):
    """Same images, losses, iterations and perpendicular gradient as the one-path reference. The local
    preconditioner (|H| + 1e-8 lambda_max I)^{-1} magnifies round-off up to 1e8-fold along near-flat
    directions, so there the agreement is to ~1e-8 (measured: 2.4e-8 on the teacher), elsewhere ~1e-13 on an
    Intel Xeon and up to 5.7e-10 on an AMD EPYC (teacher2, `ends`, the second path: 25 iterations amplify the
    round-off of the batched kernels, which differ by CPU; the other paths agree to 1e-13)."""
    land = CASES[case]()
    start, ends = _ends(land, 3)
    iters = 12 if precond == "local" else 25
    rtol = 1e-6 if precond == "local" else 1e-8
    images, losses, infos = string_paths(land, start, ends, n_images=7, iters=iters, precond=precond,
                                         refresh=refresh)
    for b in range(ends.shape[0]):
        ref_images, ref_losses, ref_info = string_path(land, start, ends[b], n_images=7, iters=iters,
                                                       precond=precond, refresh=refresh)
        assert torch.allclose(losses[b], ref_losses, rtol=rtol, atol=0)
        assert float((images[b] - ref_images).abs().max()) <= 10 * rtol * float(ref_images.abs().max())
        assert infos[b]["iterations"] == ref_info["iterations"]
        assert infos[b]["stalled"] == ref_info["stalled"]
        assert infos[b]["max_perp_grad"] == pytest.approx(ref_info["max_perp_grad"], rel=100 * rtol)
        assert infos[b]["image_spacing"] == pytest.approx(ref_info["image_spacing"], rel=1e-14)


def test_string_paths_stop_each_on_its_own():
    """A path with nothing to relax (end = start + a tiny step) stalls at once while the others go on; its
    iteration count is the sequential one's."""
    land = CASES["toy"]()
    start, ends = _ends(land, 2)
    ends = torch.cat([ends, (start + 1e-300)[None]])
    _, _, infos = string_paths(land, start, ends, n_images=5, iters=6, precond="ends")
    ref = [string_path(land, start, e, n_images=5, iters=6, precond="ends")[2] for e in ends]
    assert [i["iterations"] for i in infos] == [r["iterations"] for r in ref]
    assert [i["stalled"] for i in infos] == [r["stalled"] for r in ref]


@pytest.mark.parametrize("relax", [False, True])
def test_trace_halves_and_path_record_match_trace_half(relax):
    land = CASES["toy"]()
    start, ends = _ends(land, 2)
    halves = trace_halves(land, start, ends, 7, relax=relax, iters=10, precond="ends")
    for b, half in enumerate(halves):
        ref = trace_half(land, start, ends[b], 7, relax=relax, iters=10, precond="ends")
        assert half.straight_losses == pytest.approx(ref.straight_losses, rel=1e-13)
        assert half.straight_perp_grad == pytest.approx(ref.straight_perp_grad, rel=1e-10)
        assert half.losses == pytest.approx(ref.losses, rel=1e-10)
        rec, rec_ref = path_record(land, half, 1, (0, 2)), path_record(land, ref, 1, (0, 2))
        assert sorted(rec) == sorted(rec_ref)
        assert rec["losses"] == pytest.approx(rec_ref["losses"], rel=1e-10)
        for key in ("relaxed", "relaxed_converged", "highest_at_point", "barrier_le_straight"):
            assert rec[key] == rec_ref[key]


def test_path_record_mirror_is_the_swap():
    """The mirrored half's losses are the losses of surgery.swap of each image (one at a time)."""
    from permsym_core import surgery

    land = CASES["teacher2"]()
    start, ends = _ends(land, 1)
    half = trace_halves(land, start, ends, 5, relax=False)[0]
    rec = path_record(land, half, 2, (0, 2))
    want = [land.loss(surgery.swap(land.spec, x, 2, 0, 2)) for x in half.images.flip(0)[1:]]
    assert rec["losses"][len(half.losses):] == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("case", sorted(CASES))
def test_analyse_points_are_analyse_point(case):
    """Permutation-like points (neurons duplicated, gamma 1/2, so exact zero modes are there) and their
    Newton-like neighbours: the batched analysis gives the sequential one's index, n_zero, n_pos, tau,
    eigenvalues and escape verdicts."""
    from permsym_core import surgery
    from permsym_core.point_batch import analyse_points
    from permsym_core.points import analyse_point

    big = CASES[case]()
    layer = 1
    red_spec = surgery.with_width(big.spec, layer, big.spec.widths[layer] - 1)
    thetas, nexts = [], []
    for s in range(4):
        red = red_spec.init(s)
        thetas.append(surgery.duplicate(red_spec, red, layer, [s % red_spec.widths[layer]], 0.5)[1])
        nexts.append(thetas[-1] + 1e-7 * big.spec.init(100 + s))
    thetas, nexts = torch.stack(thetas), torch.stack(nexts)
    grad_infs = batched_loss_grad(big, thetas)[1].abs().amax(1).tolist()
    got = analyse_points(big, thetas, grad_infs, nexts)
    assert any(a.report.index >= 1 for a in got)
    for b, a in enumerate(got):
        ref = analyse_point(big, thetas[b], grad_infs[b], theta_next=nexts[b])
        r, q = a.report, ref.report
        assert (r.index, r.n_zero, r.n_pos, r.counts_agree) == (q.index, q.n_zero, q.n_pos, q.counts_agree)
        assert r.tau == pytest.approx(q.tau, rel=1e-8)
        scale = max(abs(q.lambda_max), 1e-300)
        assert max(abs(x - y) for x, y in zip(r.lowest_eigenvalues, q.lowest_eigenvalues)) <= 1e-10 * scale
        assert a.saddle == ref.saddle
        if ref.escape is not None:
            assert (a.escape.n_negative, a.escape.n_checked) == (ref.escape.n_negative, ref.escape.n_checked)


def test_gamma_line_split_eigenvalues_are_the_pointwise_ones():
    from permsym_core.permutation import GAMMA_GRID, split_eigenvalues, split_eigenvalues_line

    land = CASES["teacher2"]()
    theta = land.spec.init(5)
    for layer in (1, 2):
        line = split_eigenvalues_line(land, theta, layer, 1, GAMMA_GRID)
        for g, e in zip(GAMMA_GRID, line):
            assert e.tolist() == split_eigenvalues(land, theta, layer, 1, g).tolist()


def test_trace_halves_in_groups_is_one_batch(monkeypatch):
    """Paths relaxed in groups (a memory bound) are the paths relaxed all at once."""
    import permsym_core.strings as strings

    land = CASES["toy"]()
    start, ends = _ends(land, 3)
    whole = trace_halves(land, start, ends, 5, iters=4, precond="local", refresh=2)
    monkeypatch.setattr(strings, "GROUP_ELEMS", 1)
    grouped = trace_halves(land, start, ends, 5, iters=4, precond="local", refresh=2)
    for w, g in zip(whole, grouped):
        assert g.losses == pytest.approx(w.losses, rel=1e-9) and g.string["iterations"] == w.string["iterations"]


def test_point_batch_in_memory_sized_chunks_equals_one_batch(monkeypatch):
    """With free memory for one point's matrices only, analyse_points works chunk by chunk and gives the same
    reports as the whole batch (the chunking is what keeps large P from holding M Hessians at once)."""
    import permsym_core.point_batch as pb
    from permsym_core.landscape import Landscape
    from permsym_core.mlp import MLPSpec

    gen = torch.Generator().manual_seed(0)
    spec = MLPSpec((2, 4, 1), "tanh", True)
    X = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    L = Landscape(spec, X, torch.tanh(X[:, :1]), device="cpu")
    thetas = torch.stack([spec.init(s) for s in range(5)])
    ginf = L.grad(thetas[0]).abs().max().item()
    whole = pb.analyse_points(L, thetas, [ginf] * 5, check_escape=False)
    monkeypatch.setattr(pb, "available_bytes", lambda device=None: pb.COPIES_PER_POINT * 8 * spec.n_params ** 2)
    chunked = pb.analyse_points(L, thetas, [ginf] * 5, check_escape=False)
    assert [(a.report.index, a.report.n_zero) for a in whole] == [(b.report.index, b.report.n_zero) for b in chunked]
    # tau comes from each point's eigenvalues: a batch of 5 and of 1 may differ in the last bit (CPU-dependent)
    assert [b.report.tau for b in chunked] == pytest.approx([a.report.tau for a in whole], rel=1e-13)
