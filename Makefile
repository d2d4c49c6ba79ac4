# Two commands on a fresh Debian machine with Python 3.11 (no GPU needed):
#   make demo   set up, then run the main job offline on Fashion-MNIST
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup data demo test figures clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# neural-tangents 0.6.5 (the last release) declares TensorFlow-era dependencies it does
# not need for what we use; install it without them (see docs/theory.md and docs/design.md).
# The torch extra (CPU PyTorch) makes the export and torchattacks tests run instead of
# skipping. PyPI's torch wheel is a multi-GB CUDA build: where no local CPU wheel is found,
# run `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`. torchattacks and
# robustbench (whose WideResNet class the export test loads by path) come without their
# dependencies: their torchvision is not used and PyPI's does not import beside CPU torch.
TORCH_INDEX ?=
setup: $(PY) data
	$(PY) -m pip install --quiet -e ".[test,torch]" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet --no-deps "neural-tangents==0.6.5" "frozendict>=2.3,<3"
	$(PY) -m pip install --quiet --no-deps "torchattacks==3.5.1" "robustbench==1.1.1"

# Fashion-MNIST ships in Debian's dataset-fashion-mnist package; installed where apt
# exists and we may use it, skipped (with a note) elsewhere.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: no apt; put Fashion-MNIST in \$$NT_ROBUST_DATA_DIR (see README)"; fi

# The main job: the quick width x lambda study on Fashion-MNIST, offline: trains every
# run (skipping finished ones), then writes figures/quick_fmnist/ with report.md.
demo: setup
	$(VENV)/bin/nt-robust study experiments/study_quick_fmnist.toml

# The machine first: float kernels and summation orders differ between CPU families, so a
# failure report should say which CPU and ISA it came from. Two pytest-xdist workers, one
# test module (scope) per worker at a time, so module fixtures are built once.
test: setup
	@$(PY) -c "from nt_robust.environment import describe_cpu; print('machine: CPU', describe_cpu())"
	$(PY) -m pytest -q -n 2 --dist loadscope tests

# Every committed figure, from scratch: both quick studies trained anew into
# runs/make_figures/<time>/ (no existing run is reused or deleted), then the theory
# figures. Roughly 75-90 min on an idle 2-core machine (README); RESUME=runs/make_figures/<time>
# continues an interrupted build.
figures: setup
	$(PY) experiments/make_figures.py $(if $(RESUME),--resume $(RESUME))

clean:
	rm -rf $(VENV) build *.egg-info
