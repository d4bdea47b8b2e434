# The two set-up commands of README.md: `make demo` and `make test`. Both create .venv on a
# fresh machine (python3 -m venv + pip) and need nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qail_ros-installed
DURATION ?= 30

.PHONY: setup demo test test-fast bench-transport clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Main job: the orin_vla launch on the embedded runtime, for DURATION seconds (Ctrl-C stops it).
demo: $(STAMP)
	$(BIN)/qail-ros launch orin_vla --duration $(DURATION)

# Every test tier that runs on a machine without GPU or ROS.
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra test

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m 'not slow' test

bench-transport: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH bash bench/transport.sh

clean:
	rm -rf $(VENV) build *.egg-info
