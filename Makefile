# The README's two commands: `make demo` (train the default experiment on built-in data, CPU) and
# `make test` (the whole suite). Both create .venv and install the project into it when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SPEC ?= experiments/mnist_dcgan.yaml
DEMO_ARGS ?= --set train.steps=1500
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(PY) -m framework run $(DEMO_SPEC) $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
