# One-command entry points. `make run-all` and `make test` each set up what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
KERNEL  := llm-notebooks
PROFILE ?= smoke
NPROC   ?= 1
# Several machines (`make run`): each runs the same command with its own NODE_RANK (0 on the main
# one, which listens on MASTER_ADDR:MASTER_PORT); NPROC processes on each.
NNODES      ?= 1
NODE_RANK   ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
# Projects (run-all) and test workers (test) at once; default: the machine's cores.
JOBS    ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 1)
STAMP   := $(VENV)/.setup-done

# The smoke profile never needs the hub; offline, a stray hub lookup fails at once instead of
# hanging for a minute. Progress bars stay on: in headless runs each writes one plain line when
# it finishes (nbutils.run.quiet), so executed notebooks show them done, not frozen at 0%.
RUN_ENV := $(if $(filter smoke,$(PROFILE)),HF_HUB_OFFLINE=1)

LATEST  := .venv-latest

.PHONY: help setup git-setup fixtures test test-fast test-latest run-all run list bench bench-sandbox bench-distributed gpu-check gpu-wheels lab tensorboard kaggle set-repository clean distclean

help:
	@echo "make run-all [PROFILE=smoke|full] [JOBS=n]   run every project's notebook headless (papermill), JOBS at once (default: the cores)"
	@echo "make run RUN=<project> [PROFILE=..] [PARAMS='key=value ...'] [NPROC=2]   run one project (or a notebook's variants)"
	@echo "    [NNODES=2 NODE_RANK=0|1 MASTER_ADDR=ip MASTER_PORT=29500]   ... on several machines (each runs it)"
	@echo "make list [PROFILE=..]              list the projects of a profile"
	@echo "make bench                          padding/batching benchmark: original recipe vs nbutils.batching"
	@echo "make bench-sandbox                  text-to-pandas sandbox: executions/s and the cost of each layer"
	@echo "make bench-distributed              bytes each of 2 training processes holds: DDP vs FSDP"
	@echo "make gpu-check [TINY=1] [WHEELS=1] [ARGS=..]  every full recipe on this GPU: peak memory vs the estimate, tokens/s, MFU"
	@echo "make gpu-wheels                     download the wheels a lent GPU machine lacks into $(GPU_WHEELS) (Python 3.12, x86_64)"
	@echo "make test [JOBS=n]                  unit tests + smoke runs of every notebook, in JOBS workers (default: the cores)"
	@echo "make test-fast                      the unit tests only (-m 'not slow': no notebook runs, no launched processes)"
	@echo "make test-latest                    the test suite against the newest library releases (not pinned)"
	@echo "make lab [RUN=<project>] [PROFILE=..]  JupyterLab; with RUN, on a copy prepared with the profile's parameters"
	@echo "make tensorboard [PROFILE=..]       training curves of the runs that logged with report_to=tensorboard"
	@echo "make kaggle [PROFILE=full]          Kaggle bundles (needs KAGGLE_USERNAME) under outputs/kaggle/"
	@echo "make set-repository                 write pyproject.toml's [tool.nbutils] repository into the notebooks and README"
	@echo "make setup                          build .venv (idempotent; run-all and test call it)"
	@echo "make clean | distclean              remove outputs and caches | and the venv"

setup: $(STAMP)

# torch first, pinned, so that pip takes the CPU wheel instead of resolving a multi-GB CUDA
# build; then the rest of the pinned set, nbutils itself (editable), the Jupyter kernel, and
# the notebook-aware git setup below.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $$(grep -E '^torch==' requirements.txt)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL))"
	@$(MAKE) --no-print-directory git-setup
	@touch $@

# Notebook-aware git for this clone, calling the venv's tools by absolute path, so it works
# without activating the venv: nbdime's diff and merge drivers (`git diff` shows notebooks cell
# by cell; .gitattributes names the drivers), and nbstripout as a clean filter, so outputs,
# execution counts and the metadata JupyterLab adds never reach a commit (cell ids are kept).
NBSTRIPOUT_KEYS := metadata.papermill cell.metadata.papermill metadata.language_info.codemirror_mode \
  metadata.language_info.file_extension metadata.language_info.mimetype \
  metadata.language_info.nbconvert_exporter metadata.language_info.pygments_lexer metadata.language_info.version
git-setup:
	git config diff.jupyternotebook.command "$(abspath $(VENV))/bin/git-nbdiffdriver diff"
	git config merge.jupyternotebook.name "jupyter notebook merge driver"
	git config merge.jupyternotebook.driver "$(abspath $(VENV))/bin/git-nbmergedriver merge %O %A %B %L %P"
	git config filter.nbstripout.clean '"$(abspath $(PY))" -m nbstripout --keep-id'
	git config filter.nbstripout.smudge cat
	git config filter.nbstripout.required true
	git config filter.nbstripout.extrakeys "$(NBSTRIPOUT_KEYS)"

# Sample data and tiny models for the smoke profile (rebuilt only when their code changes).
fixtures: setup
	@HF_HUB_OFFLINE=1 $(PY) -m tests.fixtures

# In JOBS pytest-xdist workers; `--dist loadgroup` keeps the tests of one xdist_group on one
# worker: the readers of one notebook's smoke run, the tests of a module with module-scoped
# fixtures (tests/conftest.py sets the groups), so that each is built once.
test: fixtures
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(PY) -m pytest -n $(JOBS) --dist loadgroup

# The unit tests alone (every test that runs a notebook or launches processes is marked slow),
# in JOBS workers too: a few units train tiny models for a minute.
test-fast: fixtures
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(PY) -m pytest -m "not slow" -n $(JOBS) --dist loadgroup

# Compatibility watch: the same suite in a second venv with the newest releases of every library
# (torch excepted: it stays on the pinned CPU wheel, a newer one is a multi-GB CUDA download),
# so a rename in transformers, TRL, PEFT or datasets shows up before users meet it.
# Not part of CI's required run.
test-latest: fixtures
	@test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet $$(grep -E '^torch==' requirements.txt)
	$(LATEST)/bin/python -m pip install --quiet --upgrade \
	  $$(grep -vE '^(#|torch==|$$)' requirements.txt | sed 's/==.*//')
	$(LATEST)/bin/python -m pip install --quiet --no-deps -e .
	$(LATEST)/bin/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python ($(KERNEL), latest)"
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE '^(transformers|trl|peft|datasets|accelerate|tokenizers)=='
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(LATEST)/bin/python -m pytest \
	  --deselect tests/test_environment.py::test_installed_versions_match_the_pins

run-all: fixtures
	$(RUN_ENV) $(PY) -m tools.runner run-all --profile $(PROFILE) --jobs $(JOBS)

run: fixtures
	@test -n "$(RUN)" || { echo "usage: make run RUN=<project> [PROFILE=smoke|full] [PARAMS='key=value ...']"; \
	  $(PY) -m tools.runner list --profile $(PROFILE); exit 2; }
	$(RUN_ENV) $(PY) -m tools.runner run $(RUN) --profile $(PROFILE) --nproc $(NPROC) \
	  --nnodes $(NNODES) --node-rank $(NODE_RANK) --master-addr $(MASTER_ADDR) --master-port $(MASTER_PORT) \
	  $(foreach p,$(PARAMS),-p $(p))

list: setup
	@$(PY) -m tools.runner list --profile $(PROFILE)

# Same model, same examples, one pass: padded to 512 in random order vs the project's batching.
# Minutes on two CPU cores; run it on a quiet machine. Results: outputs/bench/bench.json.
bench: setup
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(PY) -m tools.bench --out outputs/bench/bench.json

# Executions per second of the code sandbox (2 workers, short snippets) and the cost of each of
# its layers, in one run (about a minute); OLD=<git revision> measures that revision's sandbox in
# the same run. Results: outputs/bench/sandbox.json.
bench-sandbox: setup
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(PY) -m tools.bench_sandbox --out outputs/bench/sandbox.json $(if $(OLD),--old $(OLD))

# What each of 2 training processes (gloo, CPU) holds after one step of the bench's Llama, under
# DDP and under FSDP, in one launch (about a minute). Results: outputs/bench/distributed.json.
bench-distributed: setup
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(PY) -m tools.bench_distributed --out outputs/bench/distributed.json

# Every full recipe at real width on this machine's GPU(s), a few optimizer steps each: peak memory
# (allocated, reserved) beside the notebook's memory estimate, tokens/s, MFU, a finite loss; one
# table, and JSON in outputs/gpu-check/gpu_check.json. TINY=1: the same code at tiny width on a CPU
# (CI runs it). WHEELS=1: first install the carried wheels from $(GPU_WHEELS) (no index). It runs
# without the project's venv, on the machine's own torch and transformers, where there is none:
# a lent GPU machine has torch, transformers, peft and accelerate, not the notebooks' other tools.
# ARGS passes more (--only PROJECT ..., --steps N, --budget-s S).
GPU_WHEELS := .cache/gpu-wheels
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	HF_HUB_OFFLINE=1 TQDM_DISABLE=1 $(GPU_PY) -m tools.gpu_check $(if $(TINY),--tiny) \
	  $(if $(WHEELS),--install-wheels $(GPU_WHEELS)) $(ARGS)

# The wheels a lent GPU machine lacks (tools/gpu_check.py GPU_WHEELS: bitsandbytes, trl, datasets
# and datasets' dill and multiprocess), for its Python 3.12 on x86_64 Linux, about 43 MB: carry
# $(GPU_WHEELS) with the working tree (it is ignored, under .cache/).
gpu-wheels: setup
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_24_x86_64 --dest $(GPU_WHEELS) \
	  $$($(PY) -c "from tools.gpu_check import GPU_WHEELS; print(*GPU_WHEELS)")
	@du -sh $(GPU_WHEELS)

# With RUN: a copy of the project's notebook prepared with PROFILE's parameters (paths made
# absolute, so they resolve in the notebook's folder, where Lab starts the kernel), opened in
# Lab; smoke runs offline (HF_HUB_OFFLINE=1). LAB_ARGS passes more (e.g. --no-browser --port 8890).
# Without RUN: the stored notebooks (defaults: the full recipe). As root (Kaggle, Colab, most
# containers) Lab refuses to start without --allow-root: both add it for uid 0.
lab: fixtures
	$(if $(RUN),$(PY) -m tools.lab $(RUN) --profile $(PROFILE) $(foreach p,$(PARAMS),-p $(p)) $(LAB_ARGS),\
	  $(VENV)/bin/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) notebooks/)

# Training curves of the runs (report_to=tensorboard) in TensorBoard: http://localhost:6006
tensorboard: setup
	$(VENV)/bin/tensorboard --logdir outputs/$(PROFILE) --port 6006

# One folder per project for `kaggle kernels push`, plus the nbutils wheel as a dataset.
kaggle: setup
	$(PY) -m tools.kaggle --profile $(if $(filter command line,$(origin PROFILE)),$(PROFILE),full) --out outputs/kaggle

# Colab installs nbutils from `repository` under [tool.nbutils] in pyproject.toml: after changing
# it (to a fork), this writes it into every notebook's install cell and the README's badges.
set-repository: setup
	$(PY) -m tools.repository

clean:
	rm -rf outputs .cache build dist *.egg-info .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(LATEST)
