# One entry point for everything: `make help` lists the targets.
# Every target that needs Python creates .venv (Python 3.13, like the Lambda runtime) first.

SHELL := /bin/bash
export SAM_CLI_TELEMETRY := 0
VENV ?= .venv
PY := $(VENV)/bin/python
SCAN_VENV ?= .venv-scan
PORT ?= 3000
WORKERS ?= 2
EVENT ?= events/predict.json

# Python 3.13: pyenv's install if there is one (its shims refuse it unless selected), else python3.13 on PATH.
PYTHON313 ?= $(shell for p in "$$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13 "$$(command -v python3.13)"; do \
	[ -x "$$p" ] && "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null && { echo "$$p"; break; }; done)
# sam build for python3.13 looks for `python3.13` on PATH.
SAM_PATH := $(dir $(PYTHON313)):$(abspath $(VENV))/bin:$(PATH)

.PHONY: help setup browser check test lint format typecheck serve invoke train build build-PredictFunction build-JobWorkerFunction build-JobFinisherFunction build-ExplorerFunction build-RegistryAdminFunction build-TrainingFunction package-model publish-model scan bench bench-analyses bench-fit bench-loop bench-coverage bench-draws bench-explorer bench-registry bench-jobs load openapi events docs docs-build clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# The first run installs ~150 packages (a few minutes): it says so, shows pip's progress, and how long it took.
$(VENV)/.installed: requirements.txt requirements-gpy.txt requirements-worker.txt requirements-finisher.txt requirements-dev.txt client/pyproject.toml
	@test -n "$(PYTHON313)" || { echo "Python 3.13 not found: install it (pyenv install 3.13) or put python3.13 on PATH" >&2; exit 1; }
	@set -e; started=$$(date +%s); \
	echo "setup: creating $(VENV) with $(PYTHON313) and installing requirements-dev.txt (the first time: a few minutes)"; \
	$(PYTHON313) -m venv $(VENV); \
	$(PY) -m pip install --quiet --upgrade pip; \
	$(PY) -m pip install --progress-bar on -r requirements-dev.txt; \
	touch $@; \
	echo "setup: $(VENV) ready in $$(( $$(date +%s) - started )) s"

$(SCAN_VENV)/.installed: requirements-scan.txt
	@test -n "$(PYTHON313)" || { echo "Python 3.13 not found: install it (pyenv install 3.13) or put python3.13 on PATH" >&2; exit 1; }
	$(PYTHON313) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SCAN_VENV)/bin/python -m pip install --quiet -r requirements-scan.txt
	touch $@

setup: $(VENV)/.installed  ## Create .venv with runtime and development dependencies

# The browser tests (tests/test_explorer.py) drive Debian's headless Chromium through its driver: installed here
# when missing and we may (root, apt-get), as on CI's fresh machine; elsewhere the tests say what to install.
browser:  ## Headless Chromium and chromedriver for the browser tests (apt-get install chromium chromium-driver if missing)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver (apt-get) for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "warning: no chromium/chromedriver: the browser tests will fail (install Debian's chromium and chromium-driver, or your system's)" >&2; fi

check: lint typecheck scan docs-build test  ## Lint, type-check, scan the template, build the docs strict and run the whole test suite (what CI runs)

scan: setup $(SCAN_VENV)/.installed  ## sam validate --lint, cfn-lint and checkov (offline) on template.yaml: no unexplained finding
	PATH="$(SAM_PATH)" $(VENV)/bin/sam validate --lint
	$(VENV)/bin/cfn-lint template.yaml
	$(SCAN_VENV)/bin/checkov --file template.yaml --framework cloudformation --skip-download --compact --quiet

# The documentation site (mkdocs.yml): built with --strict, so a broken link or anchor fails, into a temporary
# folder so that the tree stays clean; tests/test_docs.py runs its examples.
docs-build: setup  ## Build the documentation site with --strict (a broken link or anchor fails) into a temporary folder
	@site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir "$$site"

docs: setup  ## Serve the documentation site on http://127.0.0.1:8000, rebuilt on every save
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

test: setup browser  ## Run the test suite
	PATH="$(SAM_PATH)" $(PY) -m pytest

lint: setup  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup  ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: setup  ## mypy on the handler, scripts and the client
	$(VENV)/bin/mypy handler scripts client/src

serve: setup  ## Serve the API on http://127.0.0.1:$(PORT) like `sam local start-api`, without Docker (API_KEY= to require a key, ADMIN_API_KEY= to keep registry writes to one)
	$(PY) scripts/local_lambda.py serve --port $(PORT) --workers $(WORKERS) $(if $(API_KEY),--api-key "$(API_KEY)") \
		$(if $(ADMIN_API_KEY),--admin-api-key "$(ADMIN_API_KEY)")

invoke: setup  ## Run one event through the Lambda runtime like `sam local invoke -e`, without Docker
	$(PY) scripts/local_lambda.py invoke --event $(EVENT)

train: setup  ## Retrain the Park example and package it: model_artifacts/pretrained-model.npz and its manifest
	$(PY) scripts/train_model.py --output model_artifacts/pretrained-model.npz

load: setup  ## Load the local server: concurrent clients for a bounded time, throughput and latency
	$(PY) benchmarks/load.py

events: setup  ## Regenerate events/ for the packaged model (sam local generate-event)
	PATH="$(SAM_PATH)" $(PY) scripts/generate_events.py

openapi: setup  ## Regenerate docs/openapi.json from the schemas
	$(PY) scripts/export_openapi.py

bench: setup  ## Full benchmark run (~10 min): writes benchmarks/results.md
	$(PY) benchmarks/performance.py

bench-analyses: setup  ## Seconds per /sensitivity, /propagate, /suggest request, typical and largest, on one thread
	$(PY) benchmarks/analyses.py

bench-fit: setup  ## Fit quality: our training's defaults against GPy's and scikit-learn's, hold-out R2 and CPU time (QUICK=1: 1 seed)
	$(PY) benchmarks/fit_quality.py $(if $(QUICK),--quick,--output benchmarks/results.md)

bench-loop: setup  ## Active learning over HTTP vs Emukit's OuterLoop vs a space-filling design: RMSE and s per round (QUICK=1: Branin)
	$(PY) benchmarks/loop.py $(if $(QUICK),--quick,--output benchmarks/results.md)

bench-coverage: setup  ## Sobol' intervals against Ishigami's analytic indices: coverage, width, error (QUICK=1: 4 seeds)
	$(PY) benchmarks/sensitivity_coverage.py $(if $(QUICK),--quick)

bench-draws: setup  ## Pathwise posterior draws against the exact posterior: mean, variance, correlation errors
	$(PY) benchmarks/posterior_draws.py

bench-registry: setup  ## Registry: first request vs packaged, 20 models in a budget for 5, resident_bytes vs RSS (~5 min; QUICK=1)
	$(PY) benchmarks/registry.py $(if $(QUICK),--quick)

bench-jobs: setup  ## Jobs end to end on the local server: 10^5-10^7-point designs (csv, npy, parquet), Lambda projection, memory (~15 min; QUICK=1: 10^5 and 10^6)
	$(PY) benchmarks/jobs.py $(if $(QUICK),--quick,--scaling --output benchmarks/results.md)

bench-explorer: setup browser  ## The explorer page's redraw time per slider move, with and without training points
	$(PY) benchmarks/explorer_redraw.py

build: setup  ## sam build (arm64, python3.13) into .aws-sam/build
	PATH="$(SAM_PATH)" $(VENV)/bin/sam build

# Called by `sam build` (the template's BuildMethod: makefile) with ARTIFACTS_DIR set: handler/, the model
# and the runtime wheels for arm64, without tests, docs, scripts or caches (scripts/build_function.py).
build-PredictFunction:
	$(if $(wildcard $(PY)),$(PY),python3) scripts/build_function.py "$(ARTIFACTS_DIR)" --arch arm64 --package predict

# The registry's admin function checks what is published with the API's own loader: the same package.
build-RegistryAdminFunction:
	$(if $(wildcard $(PY)),$(PY),python3) scripts/build_function.py "$(ARTIFACTS_DIR)" --arch arm64 --package predict

build-JobWorkerFunction:
	$(if $(wildcard $(PY)),$(PY),python3) scripts/build_function.py "$(ARTIFACTS_DIR)" --arch arm64 --package worker

build-JobFinisherFunction:
	$(if $(wildcard $(PY)),$(PY),python3) scripts/build_function.py "$(ARTIFACTS_DIR)" --arch arm64 --package finisher

# The training function: requirements-training.txt (requirements.txt and GPy, scipy, paramz), handler/, no model.
build-TrainingFunction:
	$(if $(wildcard $(PY)),$(PY),python3) scripts/build_function.py "$(ARTIFACTS_DIR)" --arch arm64 --package training

# The explorer's open page: handler/explorer_app.py, what it imports, handler/explorer/ and Powertools; no model.
build-ExplorerFunction:
	$(if $(wildcard $(PY)),$(PY),python3) scripts/build_function.py "$(ARTIFACTS_DIR)" --arch arm64 --package explorer

# DESCRIPTION reaches the script through the environment, so quotes in it cannot break the shell line.
package-model: export DESCRIPTION := $(DESCRIPTION)
package-model: setup  ## Package your GPy model: make package-model MODEL=my.pkl FEATURES=a,b,c [OUTPUTS=y1,y2 BOUNDS=a=0:1 LIMITS=a=0: UNITS=a=m,y1=kg HOLDOUT=h.csv NAME= VERSION= DESCRIPTION= PUBLISH=inputs|inputs_and_outputs FORCE=1 OUTPUT=elsewhere.npz]
	@test -n "$(MODEL)" || { echo "usage: make package-model MODEL=path/to/model.pkl FEATURES=a,b,c [OUTPUTS=y1,y2] [BOUNDS=a=LOW:HIGH,...] [LIMITS=a=LOW:,b=LOW:HIGH,...] [UNITS=a=m,y1=kg,...] [HOLDOUT=holdout.csv] [NAME=name] [VERSION=1] [DESCRIPTION='one line'] [PUBLISH=inputs|inputs_and_outputs] [FORCE=1] [OUTPUT=elsewhere.npz] (FEATURES may be left out to convert a packaged pickle with its manifest beside it; FORCE=1 packages a model that fails the quality gate)" >&2; exit 2; }
	$(PY) scripts/package_model.py "$(MODEL)" $(if $(FEATURES),--features "$(FEATURES)") \
		$(if $(OUTPUTS),--outputs "$(OUTPUTS)") $(if $(BOUNDS),--bounds "$(BOUNDS)") \
		$(if $(LIMITS),--limits "$(LIMITS)") $(if $(UNITS),--units "$(UNITS)") \
		$(if $(HOLDOUT),--holdout "$(HOLDOUT)") $(if $(NAME),--name "$(NAME)") $(if $(VERSION),--version "$(VERSION)") \
		$(if $(DESCRIPTION),--description "$$DESCRIPTION") \
		$(if $(PUBLISH),--publish-training-data "$(PUBLISH)") $(if $(FORCE),--force) $(if $(OUTPUT),--output "$(OUTPUT)")
	$(if $(OUTPUT),@echo "package-model: written to $(OUTPUT) (model_artifacts/, events/ and the OpenAPI document unchanged); make publish-model MODEL=$(OUTPUT) NAME=... publishes it",PATH="$(SAM_PATH)" $(PY) scripts/generate_events.py && $(PY) scripts/export_openapi.py)

# The admin key reaches the script through the environment, so that make does not echo it; REASON too, so that
# quotes in it cannot break the shell line.
publish-model: export GPR_SURROGATE_ADMIN_KEY := $(or $(ADMIN_KEY),$(GPR_SURROGATE_ADMIN_KEY))
publish-model: export REASON := $(REASON)
publish-model: setup  ## Publish a packaged model to the registry: make publish-model MODEL=m.npz NAME=name [URL=(make serve's) ADMIN_KEY= PROMOTE=1 ALIAS=live REASON=]
	@test -n "$(MODEL)" -a -n "$(NAME)" || { echo "usage: make publish-model MODEL=path/to/model.npz NAME=name [URL=http://127.0.0.1:$(PORT)] [ADMIN_KEY=key] [PROMOTE=1 [ALIAS=live] [REASON='why']] (the manifest beside the model; PROMOTE=1 points ALIAS at the new version)" >&2; exit 2; }
	$(PY) scripts/publish_model.py "$(MODEL)" --name "$(NAME)" --url "$(or $(URL),http://127.0.0.1:$(PORT))" \
		$(if $(PROMOTE),--promote) $(if $(ALIAS),--alias "$(ALIAS)") $(if $(REASON),--reason "$$REASON")

clean:  ## Remove the virtualenv and build output
	rm -rf $(VENV) $(SCAN_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
