# unistream: the two commands a fresh machine needs are `make run` and `make test`.
# Everything Python lives in .venv (rebuilt when a requirements or pyproject file changes);
# scripts/setup-system.sh provides redis-server and chromium (as root, with apt-get).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
SERVICES := ingest aggregator features trainer dashboard
COMPOSE := docker compose -f deploy/docker-compose.yml
N ?= 3

.DEFAULT_GOAL := help
.PHONY: help venv system run test bench lint up down logs scale-trainer

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv with torch (CPU), the dev tools and every package (editable)

# torch is named first so pip resolves it once for features and trainer; the machine's pip
# configuration decides where the wheel comes from.
$(STAMP): requirements-dev.txt libs/common/pyproject.toml $(SERVICES:%=services/%/pyproject.toml) | system
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install torch==2.13.0 -r requirements-dev.txt -e libs/common $(SERVICES:%=-e services/%)
	touch $@

system: ## make sure redis-server and chromium exist (installs them as root)
	@PYTHON=$(PYTHON) bash scripts/setup-system.sh

run: venv system ## run Redis and every service locally (ARGS="--scale trainer=2" to pass options)
	$(VENV)/bin/unistream run $(ARGS)

test: venv system ## the whole test suite
	$(VENV)/bin/pytest -q

bench: venv system ## measured rows beside their references (medians of 5 runs, features and trainer rows 2-3; bench-results/*.json)
	$(VENV)/bin/python bench/run.py $(ARGS)

lint: venv ## hadolint on deploy/Dockerfile, compose file against the compose spec, ruff
	$(VENV)/bin/hadolint --config .hadolint.yaml deploy/Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

up: ## build the images and start the stack in Docker (detached)
	$(COMPOSE) up -d --build

down: ## stop the Docker stack (volumes are kept)
	$(COMPOSE) down

logs: ## follow the Docker stack's logs
	$(COMPOSE) logs -f --tail=200

scale-trainer: ## run N trainer replicas in Docker (make scale-trainer N=3)
	$(COMPOSE) up -d --no-recreate --scale trainer=$(N)
