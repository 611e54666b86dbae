# Two commands a fresh clone needs (README "Quick start"):
#   make demo   set up .venv if missing, then run the main job
#   make test   set up .venv if missing, then run the test suite
# Every pip resolve goes through constraints.txt: an unpinned torch pulls GBs of CUDA packages.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= results/demo

.PHONY: setup demo test bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m interp.trace --task existence --model all-MiniLM-L6-v2 --target text --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m interp.bench trace

clean-venv:
	rm -rf $(VENV)
