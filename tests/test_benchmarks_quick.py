"""The quick Hessian benchmark's correctness checks on its smallest case (no timing is asserted, ever)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is not an installed package

from benchmarks import MODULES  # noqa: E402
from benchmarks import hessian as bench  # noqa: E402


def test_quick_hessian_benchmark_agrees_with_every_autodiff_build():
    assert "hessian" in MODULES
    smallest = min(bench.cases(quick=True), key=lambda c: c.spec().n_params)
    diffs = bench.check_case(smallest)
    assert set(diffs) >= {"torch.func.hessian", "autograd.functional(vectorize)", bench.VMAP, bench.PAPER}
    assert max(diffs.values()) <= 1e-10


def test_column_block_of_the_hvp_build_matches():
    """The column-sampled HVP timing path computes the same columns as the structured build."""
    case = min(bench.cases(quick=True), key=lambda c: c.spec().n_params)
    L, theta = bench.make_landscape(case)
    H = bench.structured_hessian(L, theta)
    cols = bench.vmap_hvp_columns(L, theta, 7, 3)
    assert cols.shape == (L.n_params, 7)
    assert bench.rel_diff(cols, H[:, :7]) <= 1e-10


def test_structured_flop_model_counts_the_gauss_newton_gemm():
    spec = bench.Case("x", (10, 3, 1)).spec()
    assert bench.structured_flops(spec, 100) == 2.0 * 100 * 1 * spec.n_params ** 2


def test_row_block_of_the_loop_build_matches():
    case = min(bench.cases(quick=True), key=lambda c: c.spec().n_params)
    L, theta = bench.make_landscape(case)
    H = bench.structured_hessian(L, theta)
    assert bench.rel_diff(bench.autograd_loop_columns(L, theta, 5), H[:, :5]) <= 1e-10
