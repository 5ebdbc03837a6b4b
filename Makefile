# Every target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: venv test demo bench clean

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c requirements/constraints.txt -e ".[all,test]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -n 2 -q tests

demo: venv
	$(VENV)/bin/gpua demo

bench: venv
	$(PY) benchmarks/fit_speed.py

clean:
	rm -rf $(VENV) build src/*.egg-info
