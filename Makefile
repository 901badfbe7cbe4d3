# Distpotify: every target creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NODE_ID ?= 1
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

run: venv
	$(BIN)/twistd -n distpotify --node-id $(NODE_ID) --data-dir data/node$(NODE_ID) \
	    --http-port 800$(NODE_ID) --amp-port 900$(NODE_ID)

lint: venv
	$(BIN)/ruff check distpotify proxy tests bench twisted
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/replica.py

clean:
	rm -rf $(VENV) build *.egg-info

# The network-namespace lab (root only): a scenario in 3 replicas, its report printed and
# saved under /tmp/distpotify-lab-results/. `make lab SCENARIO=list` lists the scenarios.
SCENARIO ?= follower-crash
LAB_ARGS ?=

.PHONY: lab
lab: venv
	@if [ "$(SCENARIO)" = list ]; then $(BIN)/python -m distpotify.testing.lab list; \
	else $(BIN)/python -m distpotify.testing.lab scenario $(SCENARIO) $(LAB_ARGS); fi
