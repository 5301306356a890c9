"""`permsym bound`: JSON numbers and one-line errors with exit status 2."""
import json
import math

import pytest
from click.testing import CliRunner

from sweeps.cli import main


def test_bound_json():
    r = CliRunner().invoke(main, ["bound", "--widths", "6,4", "--order", "2", "--json"])
    assert r.exit_code == 0, r.output
    b = json.loads(r.output)
    assert b["minima"] == 720 * 24 and b["bound"] == 25920 + 4320
    assert [lay["bound"] for lay in b["layers"]] == [25920, 4320]
    assert b["log10_bound"] == pytest.approx(math.log10(30240), rel=1e-12)


def test_bound_table():
    r = CliRunner().invoke(main, ["bound", "--widths", "6,4", "--order", "2"])
    assert r.exit_code == 0, r.output
    assert "25920" in r.output and "30240" in r.output and "17280" in r.output


@pytest.mark.parametrize("args,option", [(["--widths", "6,x"], "--widths"), (["--widths", "0"], "--widths"),
                                         (["--widths", "6", "--order", "0"], "--order")])
def test_bad_options_exit_2(args, option):
    r = CliRunner().invoke(main, ["bound", *args])
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and option in errors[0]
