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

# The browser test (tests/test_ui_browser.py) drives Debian's chromium through chromium-driver.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && apt-get install -y -q chromium chromium-driver; \
	  else echo "chromium/chromedriver missing and no root apt-get: tests/test_ui_browser.py will be skipped"; fi; \
	fi

test: $(STAMP) browser-deps
	$(PY) -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)
	$(PY) -m benchmarks

.PHONY: install demo test bench browser-deps
