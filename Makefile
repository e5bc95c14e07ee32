# The same commands for people and CI. Each one installs what it needs first (scripts/bootstrap.sh).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bootstrap demo up test coverage test-compose bench lint lock clean

bootstrap:
	@VENV=$(VENV) bash scripts/bootstrap.sh

## demo: Redis, local LLM, a worker and Flower; submits samples/articles.jsonl; prints summaries; stops all
demo: bootstrap
	$(BIN)/python scripts/demo.py

## up: the same stack, left running (Flower on http://localhost:5555) until Ctrl-C
up: bootstrap
	$(BIN)/python scripts/demo.py --up

## test: the whole suite against real redis-server, Celery workers and HTTP LLM servers, three test processes
## (each test module stays in one, with its own Redis and worker stacks; the scenarios mostly wait, so three keep
## two cores about 80% busy)
test: bootstrap
	$(BIN)/pytest -q -n 3 --dist loadfile

## coverage: the same suite measuring the product code, worker and server subprocesses included ([tool.coverage.run]
## in pyproject.toml); tracing every process costs a third more CPU, so it is not part of `make test`
coverage: bootstrap
	$(BIN)/pytest -q -n 3 --dist loadfile --cov --cov-report=term:skip-covered

## test-compose: compose.yaml for real: Docker's engine (installed and started if missing), stand-in base
## images (scripts/standin-images.sh: Docker Hub is not needed), `up --build --scale worker=3`, submit,
## results, Flower auth, Prometheus targets, stop times, `down -v`. Not part of `make test`.
test-compose: bootstrap
	bash scripts/standin-images.sh
	BULK_SUMMARIZE_COMPOSE_UP=1 $(BIN)/pytest -q -s tests/test_compose_up.py

## bench: throughput, rate-limit fidelity, submit rate and memory, as ratios against baselines
bench: bootstrap
	$(BIN)/python -m bench

## lint: formatting, ruff's rules with the complexity gate (C901 <= 12 on product code), mypy --strict over the whole tree,
## and the docs built strictly (mkdocs.yml): a broken link or anchor, or a page left out of the nav, fails it
lint: bootstrap
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet -d /tmp/bulk-summarize-site

## lock: re-resolve pyproject.toml's dependencies into the pinned requirements*.lock that bootstrap and the image install
lock: bootstrap
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links --extra dev -o requirements-dev.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
