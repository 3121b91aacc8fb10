# unistream: the two commands a fresh machine needs are `make run` and `make test`.
# Everything Python lives in .venv (rebuilt when a requirements or pyproject file changes);
# scripts/setup-system.sh provides redis-server and chromium (as root, with apt-get).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Libraries the services share, the services (one image each, run by their own unistream-<service>
# script) and the tools (the `unistream` command, evaluate; in .venv, never in an image): no service
# imports another; tools compose the services' cores from outside.
LIBS := common model
SERVICES := ingest aggregator features trainer dashboard
# deploy/.env holds the stack's secrets (never committed; `make deploy/.env` writes one) and
# COMPOSE_PROFILES; PROFILE picks where ticks come from (auto, live or replay: see the compose file).
# CLUSTER=1 adds the Redis Cluster overlay (six Redis nodes: deploy/docker-compose.cluster.yml).
COMPOSE := docker compose -f deploy/docker-compose.yml $(if $(CLUSTER),-f deploy/docker-compose.cluster.yml )--env-file deploy/.env
PROFILE ?= auto
PROFILES := auto live replay
N ?= 3
# Two pytest workers, a file each at a time (some files share state between their tests): most tests
# wait on processes and sockets, so two cut the wall time by ~40 % on 2 cores.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv constraints system run test bench chaos lint up down logs scale-trainer compose-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv with torch (CPU), the dev tools and every package (editable)

# torch is named first so pip resolves it once for features and trainer; the machine's pip
# configuration decides where the wheel comes from. constraints.txt pins every third-party
# package (the images install with the same file).
$(STAMP): constraints.txt requirements-dev.txt $(LIBS:%=libs/%/pyproject.toml) $(SERVICES:%=services/%/pyproject.toml) tools/pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -c constraints.txt torch==2.13.0 -r requirements-dev.txt $(LIBS:%=-e libs/%) $(SERVICES:%=-e services/%) -e tools
	@# A .venv from before the tools package owned the `unistream` script: upgrading unistream-common
	@# there removes the script that unistream-tools has just written, so write it again.
	test -x $(VENV)/bin/unistream || $(VENV)/bin/pip install --no-deps -e tools
	touch $@

# After changing a pin in a pyproject.toml or requirements-dev.txt, change (or delete) its line in
# constraints.txt, `make venv`, then `make constraints` to record what was installed.
constraints: ## rewrite constraints.txt from .venv (pip freeze without the editable unistream packages)
	{ sed -n '/^#/!q;p' constraints.txt; $(VENV)/bin/pip freeze --exclude-editable | grep -v '^#' \
	  | sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*/\1/' | sort -f; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

system: ## make sure redis-server and chromium exist (installs them as root)
	@PYTHON=$(PYTHON) bash scripts/setup-system.sh

run: venv system ## run Redis and every service locally (ARGS="--scale trainer=2" to pass options)
	$(VENV)/bin/unistream run $(ARGS)

test: venv system ## the whole test suite (two workers; TEST_WORKERS=0 runs it in one process)
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: venv system ## one Markdown table: every row beside its same-run reference (medians of 1-5 runs; bench-results/*.json; ~10.5 min)
	$(VENV)/bin/python bench/run.py $(ARGS)

chaos: venv system ## the whole system from a replayed file under kills, Redis restarts and SIGKILLs, poison; fails on any loss (~6 min; ARGS=--cluster: on a Redis Cluster)
	$(VENV)/bin/python chaos/run.py $(ARGS)

lint: venv ## hadolint on deploy/Dockerfile, compose files against the compose spec, ruff
	$(VENV)/bin/hadolint --config .hadolint.yaml deploy/Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml deploy/docker-compose.cluster.yml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Random passwords and token, written once (mode 600); an existing file is never overwritten.
deploy/.env: | deploy/.env.example
	$(PYTHON) scripts/make-env.py deploy/.env.example $@

# `up` checks the engine first (Engine >= 25, Compose >= 2.20: healthchecks use start_interval),
# waits until every container is healthy, then says where the dashboard is.
up: deploy/.env ## build the images, start the stack in Docker and wait until it is healthy (PROFILE=live or replay: other data)
	@$(PYTHON) deploy/check.py --engine-only
	$(COMPOSE) --profile $(PROFILE) up -d --build --wait --wait-timeout 300
	@echo "unistream is up: dashboard at http://$$($(COMPOSE) port dashboard 8501)  (make logs, make scale-trainer N=3, make down)"

down: deploy/.env ## stop the Docker stack, every profile (volumes are kept)
	$(COMPOSE) $(PROFILES:%=--profile %) down

logs: deploy/.env ## follow the Docker stack's logs (every profile)
	$(COMPOSE) $(PROFILES:%=--profile %) logs -f --tail=200

scale-trainer: deploy/.env ## run N trainer replicas in Docker (make scale-trainer N=3; same PROFILE as up)
	$(COMPOSE) --profile $(PROFILE) up -d --no-recreate --scale trainer=$(N) --wait --wait-timeout 300

compose-check: venv system ## build and run the Docker stack for real, on one Redis then on a Redis Cluster, check it as a user would (needs a Docker engine; ~9 min)
	$(VENV)/bin/python deploy/check.py $(ARGS)
	$(VENV)/bin/python deploy/check.py --cluster $(ARGS)
