# The same commands for people and CI. Each one installs what it needs first (scripts/bootstrap.sh).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bootstrap demo up test test-compose bench lint clean

bootstrap:
	@VENV=$(VENV) bash scripts/bootstrap.sh

## demo: Redis, local LLM, a worker and Flower; submits samples/articles.jsonl; prints summaries; stops all
demo: bootstrap
	$(BIN)/python scripts/demo.py

## up: the same stack, left running (Flower on http://localhost:5555) until Ctrl-C
up: bootstrap
	$(BIN)/python scripts/demo.py --up

## test: the whole suite against real redis-server, Celery workers and HTTP LLM servers
test: bootstrap
	$(BIN)/pytest -q

## test-compose: compose.yaml for real: Docker's engine (installed and started if missing), stand-in base
## images (scripts/standin-images.sh: Docker Hub is not needed), `up --build --scale worker=3`, submit,
## results, Flower auth, Prometheus targets, stop times, `down -v`. Not part of `make test`.
test-compose: bootstrap
	bash scripts/standin-images.sh
	BULK_SUMMARIZE_COMPOSE_UP=1 $(BIN)/pytest -q -s tests/test_compose_up.py

## bench: throughput, rate-limit fidelity, submit rate and memory, as ratios against baselines
bench: bootstrap
	$(BIN)/python -m bench

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
