# visiontool — make demo | make test | make bench | make lint
# Every target bootstraps the virtual environment at .venv (python3 -m venv + pip).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
BASE   := $(VENV)/.installed-base

.PHONY: venv base demo test bench bench-detect bench-detectors bench-evaluate bench-segment bench-segment-family bench-video bench-scale bench-runtimes lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# the base install only (no optional extras): what `pip install visiontool` gives a user
$(BASE): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e .
	@touch $(BASE)

base: $(BASE)

demo: base
	./examples/demo.sh

# two workers (pytest-xdist): a test file stays on one worker, every Ray test file on the same one
# (tests/conftest.py); serially the suite left one of this machine's two cores idle most of the time
test: venv
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: bench-detect bench-detectors bench-evaluate bench-segment bench-segment-family bench-video bench-scale bench-runtimes

bench-detect: venv
	$(PY) benchmarks/detect.py

bench-detectors: venv
	$(PY) benchmarks/detectors.py

bench-evaluate: venv
	$(PY) benchmarks/evaluate.py

bench-segment: venv
	$(PY) benchmarks/segment.py

bench-video: venv
	$(PY) benchmarks/video.py

bench-segment-family: venv
	$(PY) benchmarks/segment_family.py

bench-scale: venv
	$(PY) benchmarks/scale.py

bench-runtimes: venv
	$(PY) benchmarks/runtimes.py

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
