"""`python -m benchmarks._results_cli MODE BASELINE_SRC -- ARGS...`: `permsym ARGS` with today's tracking.query
(MODE=current) or with the query module of an earlier commit (MODE=baseline, its source in BASELINE_SRC) in its
place, so benchmarks/results.py times the same command line against both in one run."""
import importlib.util
import sys
from pathlib import Path


def main() -> None:
    mode, src, sep, *args = sys.argv[1:]
    assert sep == "--", sys.argv
    if mode == "baseline":
        import tracking

        spec = importlib.util.spec_from_loader("tracking.query", loader=None, origin=src)
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = "tracking"
        mod.__file__ = src
        sys.modules["tracking.query"] = mod
        exec(compile(Path(src).read_text(), src, "exec"), mod.__dict__)
        tracking.query = mod
    from sweeps.cli import main as cli

    cli(args)


if __name__ == "__main__":
    main()
