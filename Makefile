# make lab   set up the environment and open JupyterLab on notebooks/
# make test  set up the environment and run the whole test suite
# The environment is a venv in .venv (override with VENV=...). TORCH pins the torch build: on the
# project's CPU machines torch==2.13.0 resolves to the CPU wheel on disk; elsewhere it is PyPI's.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.msa-lab-installed

.PHONY: lab test setup info bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[lab,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (msa-lab)" >/dev/null
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/msa-lab lab

test: $(STAMP)
	$(PY) -m pytest -q

info: $(STAMP)
	$(VENV)/bin/msa-lab info

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
