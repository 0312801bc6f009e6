# Two commands do everything on a fresh machine with Python 3.11, make and git:
#   make demo   - set up .venv, then run the main job
#   make test   - set up .venv, then ruff + the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# pyproject.toml states version ranges; constraints.txt pins the exact versions make installs (torch and
# torchvision as a working pair: the regular PyPI (CUDA) build, which also runs on CPU).
PIN    := -c constraints.txt
TIMM   := $(shell sed -n 's/^timm==//p' constraints.txt)
MODEL  ?=
TASK   ?=
ARGS   ?=
# test workers (pytest-xdist processes, one torch thread each; tests/conftest.py): one per core of the 2-core CI
JOBS   ?= 2

.PHONY: setup demo test test-heavy lint bench clean

setup: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIN) torch torchvision
	$(BIN)/pip install --quiet $(PIN) -e '.[dev]'
	@# natten is optional (fused kernels on CUDA); it builds from source against the installed torch.
	$(BIN)/pip install --quiet $(PIN) --no-build-isolation natten \
		|| echo "natten could not be installed: optional, the zoo runs without it"
	@# timm's own model tests (tests/test_models.py from timm's sdist) run against the zoo's models.
	rm -rf $(VENV)/timm-sdist && $(BIN)/pip download --quiet --no-deps --no-binary :all: timm==$(TIMM) -d $(VENV)/timm-sdist
	tar -xzf $(VENV)/timm-sdist/timm-$(TIMM).tar.gz -C $(VENV)/timm-sdist timm-$(TIMM)/tests/test_models.py
	cp $(VENV)/timm-sdist/timm-$(TIMM)/tests/test_models.py tests/timm_suite/test_models.py
	touch $@

demo: setup
	$(BIN)/python tools/demo.py $(if $(TASK),--task $(TASK)) $(if $(MODEL),--model $(MODEL)) $(ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 -n $(JOBS) -m "not heavy" tests

# the slow export checks (tiny variants, dynamo exporter, detection/segmentation heads): minutes each on CPU
test-heavy: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1800 -m heavy tests

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python tools/bench_ops.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
