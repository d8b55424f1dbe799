# greg-ood — every target bootstraps the virtual environment itself.
#   make mini    the main job: install, prepare the offline data, run the `mini` suite through DVC (JOBS=2 stages at a time)
#   make test    the test suite (unit, real DVC/MLflow end to end on a tiny `mini`, the paper suites' rehearsal)
#   make bench   speed benchmark -> reports/bench/<device>.{md,json}
#   make fmnist  the offline evidence suite (3-4 h on 2 cores) -> reports/fmnist/
#   make bench-pipeline  where a stage's wall time goes -> reports/bench/pipeline.{md,json}
#   make gpu-check  CUDA benchmark, bf16 check, epoch slice, CIFAR-10 projection -> reports/bench/gpu-check.{md,json}
#   make rehearsal  the paper suites' `dvc repro` on tiny format-true stand-ins (~17 min; part of `make test`)
#   make plots   dvc plots show as a page that opens offline (SUITE=mini for one suite)
#   make plots-diff REV=HEAD   the same page comparing the workspace with a revision or DVC experiment
#   make mlflow-ui PORT=5000   browse the MLflow runs on 127.0.0.1
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1
# stages run side by side by `make mini`/`make fmnist` (greg_ood.cli.repro: each stage is still `dvc repro -s`;
# results do not depend on it); JOBS=1 runs them one after the other, like `dvc repro report_mini`
JOBS ?= 2
# GPUS=all or GPUS=0,1,3: each stage that needs a GPU runs on free devices of its own (docs/scale-out.md); empty: no
# placement, every stage sees every device
GPUS ?=

.PHONY: setup mini fmnist repro test test-fast bench bench-pipeline gpu-check rehearsal mlflow-ui mlflow-server dvc.yaml fashion-mnist readme plots plots-diff summary dvc

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python >= 3.11 required"' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -r requirements.txt 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import torch, mlflow, dvc, greg_ood; print('torch', torch.__version__, '| cuda', torch.cuda.is_available())"
	touch $@

# Fashion-MNIST for the offline suite comes from the Debian package; without it the download stage falls back to
# the official URLs (internet needed).
fashion-mnist:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	else echo "note: 'sudo apt-get install dataset-fashion-mnist' gives Fashion-MNIST offline; otherwise it is downloaded."; fi

mini: setup fashion-mnist
	@git rev-parse HEAD >/dev/null 2>&1 || (echo "error: run inside the git clone of greg-ood"; exit 2)
	time $(BIN)/python -m greg_ood.cli.repro report_mini --jobs $(JOBS) $(if $(GPUS),--gpus $(GPUS))
	@$(BIN)/python -m greg_ood.cli.summary --suite mini

fmnist: setup fashion-mnist
	@git rev-parse HEAD >/dev/null 2>&1 || (echo "error: run inside the git clone of greg-ood"; exit 2)
	time $(BIN)/python -m greg_ood.cli.repro report_fmnist --jobs $(JOBS) $(if $(GPUS),--gpus $(GPUS))
	@$(BIN)/python -m greg_ood.cli.summary --suite fmnist

# a finished suite's answer from its report files: claims with verdicts, each method's headline, where things are
summary: setup
	@$(BIN)/python -m greg_ood.cli.summary --suite $(or $(SUITE),mini)

# DVC from the project's environment without activating it: make dvc ARGS="status"
dvc: setup
	@$(BIN)/dvc $(ARGS)

repro: setup
	dvc repro

# everything, the paper suites' dress rehearsal included (about 17 of its minutes on 2 idle cores)
test: setup fashion-mnist
	$(BIN)/python -m pytest -q tests

# the paper suites' real `dvc repro report_<suite>` on tiny stand-ins served from 127.0.0.1 (cifar10, cifar100,
# imagenet: 128 stages, about 17 min on 2 idle cores); part of `make test`
rehearsal: setup
	$(BIN)/python -m pytest -q tests/test_paper_suites_e2e.py -m rehearsal

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not slow"

bench: setup
	$(BIN)/python -m bench.step_cost --out reports/bench

bench-pipeline: setup
	$(BIN)/python -m bench.pipeline $(if $(BEFORE),--rev $(BEFORE)) --rev HEAD --out reports/bench

# paste the generated result tables into README.md (tests/test_readme.py checks they match)
readme: setup
	$(BIN)/python tools/readme_sync.py
# on a machine without CUDA: one line saying so, then the CPU smoke run of the same script (exit 0)
gpu-check: setup
	$(BIN)/python -m bench.gpu_check --out reports/bench

PORT ?= 5000
mlflow-ui: setup
	MLFLOW_TRACKING_URI=sqlite:///$(abspath mlflow.db) $(BIN)/python -m greg_ood.run.tracking classic
	@echo "open http://127.0.0.1:$(PORT) and click 'Model training' (top left) once: experiments then open on their runs table (docs/browsing.md)"
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(PORT) --backend-store-uri sqlite:///$(abspath mlflow.db)

# `dvc plots show` as a page that opens offline (Vega inlined) -> dvc_plots/index.html; SUITE=mini for one suite.
# Legends name method · seed · λ; only runs params.yaml declares. plots-diff: the workspace against REV (a git
# revision or a DVC experiment name; several: REV="HEAD exp-a") -> dvc_plots/diff/index.html
plots: setup
	$(BIN)/python -m greg_ood.cli.plots_page -o dvc_plots $(if $(SUITE),--suite $(SUITE))

REV ?= HEAD
plots-diff: setup
	$(BIN)/python -m greg_ood.cli.plots_page -o dvc_plots/diff --diff $(REV) $(if $(SUITE),--suite $(SUITE))

dvc.yaml: setup
	$(BIN)/python -m greg_ood.run.dvcgen params.yaml

# Team tracking server (PostgreSQL backend; see docs/team-server.md)
mlflow-server: setup
	tools/mlflow_server.sh
