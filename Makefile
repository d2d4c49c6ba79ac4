# Two commands on a fresh Debian machine with Python 3.11 (no GPU needed):
#   make demo   set up, then run the main job offline on Fashion-MNIST
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup data demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

setup: $(PY) data
	$(PY) -m pip install --quiet -e ".[test]"

# Fashion-MNIST ships in Debian's dataset-fashion-mnist package; installed where apt
# exists and we may use it, skipped (with a note) elsewhere.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: no apt; put Fashion-MNIST in \$$NT_ROBUST_DATA_DIR (see README)"; fi

demo: setup
	$(PY) -m nt_robust.demo

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
