# Distpotify: every target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv test run lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat mode puts the checkout on sys.path, where twisted.plugins finds our drop-in
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test,lint]'
	touch $@

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Three replicas (8001-8003) and the proxy (http://127.0.0.1:8080/); Ctrl-C stops them all.
run: venv
	$(BIN)/distpotify-cluster

lint: venv
	$(BIN)/ruff check distpotify proxy lab tests bench twisted
	$(BIN)/mypy
	$(BIN)/mypy bench  # on its own: bench/proxy.py would shadow the proxy package

bench: venv
	$(BIN)/python bench/replica.py

clean:
	rm -rf $(VENV) build *.egg-info

# The network-namespace lab (root only): a scenario in 3 replicas, its report printed and
# saved under /tmp/distpotify-lab-results/. `make lab SCENARIO=list` lists the scenarios;
# `make lab SCENARIO=random SEED=7 DURATION=1800` runs 30 minutes of random faults.
SCENARIO ?= follower-crash
SEED ?= 0
DURATION ?= 120
LAB_ARGS ?=

.PHONY: lab
lab: venv
	@if [ "$(SCENARIO)" = list ]; then $(BIN)/python -m lab list; \
	else $(BIN)/python -m lab scenario $(SCENARIO) --seed $(SEED) --duration $(DURATION) \
	    $(LAB_ARGS); fi
