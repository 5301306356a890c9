# The two commands of a fresh machine: `make demo` (default sweep) and `make test` (the test suite).
export OMP_WAIT_POLICY ?= PASSIVE
export RAY_USAGE_STATS_ENABLED ?= 0
PY := .venv/bin/python
STAMP := .venv/.installed

$(STAMP): pyproject.toml
	test -d .venv || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	.venv/bin/permsym sweep sweeps/toy.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m benchmarks

.PHONY: install demo test bench
