# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing, installs CPU torch and ksrnet with its test extras, then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ksrnet-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
		echo "python3-venv missing: installing it with apt-get"; \
		apt-get update -qq && apt-get install -y -qq python3-venv; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU torch first, pinned, so the range in pyproject never pulls a multi-GB CUDA build here.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ksrnet demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache demo-out
