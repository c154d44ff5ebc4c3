# recserve: `make serve` to run the server with the demo model, `make test` to run the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL_REPOSITORY ?= models
MODEL_NAME ?= recommender
GRPC_PORT ?= 8001
STAMP := $(VENV)/.installed
# perf_analyzer (bench/perf_analyzer.py) lives in a venv of its own: bench/requirements-perf-analyzer.txt.
PERF_VENV := .venv-perf

.PHONY: help install native-deps redis-deps perf-deps proto model serve test lint bench bench-live bench-swap bench-perf-analyzer bench-kserve-path bench-workers bench-peers bench-scale bench-light-load bench-ceiling-share bench-exact-search bench-report clean

help:
	@echo "make serve   install, build the demo model if missing, start the server on :$(GRPC_PORT)"
	@echo "make test    install test dependencies and run the whole test suite"
	@echo "make proto   regenerate the protobuf code from protos/"
	@echo "make model   build the demo model into $(MODEL_REPOSITORY)/$(MODEL_NAME)/ if none is there"
	@echo "make lint    ruff"
	@echo "make bench   run every benchmark (~40 min on 2 cores) and write docs/benchmarks.md"
	@echo "make bench-live   live state only: history, ingestion, freshness, rebuild, delta (~12 min; redis-server)"
	@echo "make bench-swap   ten model version swaps under load at c=64 (~2.5 min)"
	@echo "make bench-perf-analyzer   Triton's perf_analyzer vs recserve loadtest (~10 min)"
	@echo "make bench-kserve-path   ModelInfer against Recommend through one load generator (~4 min)"
	@echo "make bench-workers       recserve serve --workers 2 against one worker (~5 min)"
	@echo "make bench-scale   20k / 200k / 1M items: builds the two large demos into $(SCALE_DIR) if missing (~40 min), then ~15 min"
	@echo "make bench-light-load   concurrency 1: server p50 against the pipeline's batch-1 time, and the split (~2 min)"
	@echo "make bench-ceiling-share   concurrency 128: the server's share of its pipeline's ceiling, by thread and stage (~3 min)"
	@echo "make bench-exact-search   exact search of a small catalog against the Annoy index: cost by size, ceiling, served (~8 min)"
	@echo "make bench-peers   recserve vs Triton (PyTriton) on the same pipeline, by perf_analyzer (~15 min)"

$(STAMP): pyproject.toml setup.py $(wildcard native/*.h native/*.cc)
	@$(MAKE) --no-print-directory native-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# grpc++ for the native gRPC front end (server/frontend): installed from Debian/Ubuntu packages when we are
# root; otherwise the server runs on grpc.aio and says so at startup.
native-deps:
	@if pkg-config --exists grpc++ 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing libgrpc++-dev for the native gRPC front end"; \
		DEBIAN_FRONTEND=noninteractive apt-get install --yes --quiet libgrpc++-dev pkg-config >/dev/null 2>&1 \
		|| { apt-get update --quiet >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install --yes --quiet libgrpc++-dev pkg-config >/dev/null 2>&1; } \
		|| echo "could not install libgrpc++-dev: the server will run on grpc.aio"; \
	else \
		echo "note: libgrpc++-dev is not installed, so the server will run on grpc.aio;" \
			"for the native front end: sudo apt-get install libgrpc++-dev pkg-config, then make install"; \
	fi

# redis-server for the tests of the shared state backend (state.backend: redis); they start a real server.
# Installed from Debian/Ubuntu packages when we are root; under CI a missing redis-server fails those tests.
redis-deps:
	@if command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing redis-server for the tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install --yes --quiet redis-server >/dev/null 2>&1 \
		|| { apt-get update --quiet >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install --yes --quiet redis-server >/dev/null 2>&1; } \
		|| echo "could not install redis-server: the Redis tests will fail under CI and skip elsewhere"; \
	else \
		echo "note: redis-server is not installed, so the Redis tests skip; sudo apt-get install redis-server"; \
	fi

proto: $(STAMP)
	$(BIN)/python protos/generate.py

model: $(STAMP)
	@if ls $(MODEL_REPOSITORY)/$(MODEL_NAME)/[0-9]*/manifest.json >/dev/null 2>&1; then \
		echo "model repository already has $(MODEL_NAME) version(s): $$(ls -d $(MODEL_REPOSITORY)/$(MODEL_NAME)/[0-9]* | xargs -n1 basename | tr '\n' ' ')"; \
	else \
		$(BIN)/recserve build-demo --model-repository $(MODEL_REPOSITORY) --model-name $(MODEL_NAME); \
	fi

# The demo's write services need a token like any other deployment's: one is made on the first `make serve`
# (its hash in $(DEMO_AUTH)/tokens.yaml, the token itself in $(DEMO_AUTH)/token, both owner-only).
DEMO_AUTH ?= demo-auth

serve: proto model $(DEMO_AUTH)/token
	@echo "writes (Events, Catalog) need the demo token, admin role: it is in $(DEMO_AUTH)/token"
	$(BIN)/recserve serve --grpc-port $(GRPC_PORT) --model-repository $(MODEL_REPOSITORY) --enable-events --enable-catalog --tokens-file $(DEMO_AUTH)/tokens.yaml

$(DEMO_AUTH)/token: | $(STAMP)
	@mkdir -p $(DEMO_AUTH) && chmod 700 $(DEMO_AUTH)
	@umask 077 && $(BIN)/recserve token create --name demo --role admin --tokens-file $(DEMO_AUTH)/tokens.yaml > $(DEMO_AUTH)/token.new && mv $(DEMO_AUTH)/token.new $(DEMO_AUTH)/token

test: $(STAMP) redis-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: model redis-deps
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/pipeline_ceiling.py
	$(BIN)/python bench/annoy_sweep.py
	$(BIN)/python bench/server_load.py
	$(BIN)/python bench/tracing_overhead.py
	$(BIN)/python bench/loadtest_ceiling.py | tee bench/results/loadtest_ceiling.md
	$(BIN)/python bench/live_state.py
	$(BIN)/python bench/model_swap.py --seconds 132
	$(BIN)/python bench/report.py

# The live-state benchmarks alone (they start their own redis-server); rewrites only that section of
# docs/benchmarks.md, so the other sections stay as the last `make bench` left them.
bench-live: model redis-deps
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/live_state.py
	$(BIN)/python bench/report.py --only live_state

# Version swaps under load alone; rewrites only that section of docs/benchmarks.md.
bench-swap: model
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/model_swap.py --seconds 132
	$(BIN)/python bench/report.py --only model_swap

$(PERF_VENV)/bin/perf_analyzer: bench/requirements-perf-analyzer.txt
	test -x $(PERF_VENV)/bin/python || $(PYTHON) -m venv $(PERF_VENV)
	$(PERF_VENV)/bin/python -m pip install --quiet -r bench/requirements-perf-analyzer.txt
	touch $@

# libb64 for perf_analyzer (tritonclient's binary links it): installed from Debian/Ubuntu packages when we
# are root, else the perf_analyzer benchmarks stop with the command to run.
perf-deps:
	@if ldconfig -p 2>/dev/null | grep -q libb64.so.0d; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing libb64-0d for perf_analyzer"; \
		DEBIAN_FRONTEND=noninteractive apt-get install --yes --quiet libb64-0d >/dev/null 2>&1 \
		|| { apt-get update --quiet >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install --yes --quiet libb64-0d >/dev/null 2>&1; } \
		|| echo "could not install libb64-0d: perf_analyzer will not start"; \
	else \
		echo "note: perf_analyzer needs libb64: sudo apt-get install libb64-0d"; \
	fi

bench-perf-analyzer: model perf-deps $(PERF_VENV)/bin/perf_analyzer
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/perf_analyzer.py
	$(BIN)/python bench/report.py

bench-kserve-path: model
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/kserve_path.py
	$(BIN)/python bench/report.py --only kserve_path

bench-workers: model redis-deps
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/workers.py
	$(BIN)/python bench/report.py --only workers

# Demo builds at 200k and 1M items for bench/scale.py (gitignored build outputs; ~10 and ~25 min).
SCALE_DIR ?= build/scale
SCALE_SIZES := 200000 1000000

$(SCALE_DIR)/%/.built: | $(STAMP)
	mkdir -p $(SCALE_DIR)/$*/recommender
	cp $(MODEL_REPOSITORY)/$(MODEL_NAME)/config.yaml $(SCALE_DIR)/$*/recommender/config.yaml
	$(BIN)/recserve build-demo --model-repository $(SCALE_DIR)/$* --num-items $* --num-users $* --no-progress
	touch $@

bench-scale: model $(foreach size,$(SCALE_SIZES),$(SCALE_DIR)/$(size)/.built)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/scale.py --size 20000=$(MODEL_REPOSITORY) $(foreach size,$(SCALE_SIZES),--size $(size)=$(SCALE_DIR)/$(size))
	$(BIN)/python bench/annoy_sweep.py --model-repository $(SCALE_DIR)/1000000 --queries 500 --n-trees 32 64 \
		--search-k 3000 5000 8000 12000 20000 --recall-target 0.9 --result annoy_sweep_1m
	$(BIN)/python bench/delta_scale.py --model-repository $(SCALE_DIR)/1000000 --search-k 5000
	$(BIN)/python bench/report.py --only scale

bench-light-load: model
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/light_load.py
	$(BIN)/python bench/report.py --only light_load

bench-ceiling-share: model
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/ceiling_share.py
	$(BIN)/python bench/report.py --only ceiling_share

bench-exact-search: model
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/exact_search.py
	$(BIN)/python bench/report.py --only exact_search

# PyTriton (bench/peers.py) in a venv of its own, with recserve beside it: bench/requirements-peers.txt.
PEERS_VENV := .venv-peers

$(PEERS_VENV)/bin/pytriton: bench/requirements-peers.txt pyproject.toml
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/requirements-peers.txt -e .
	touch $@

bench-peers: model perf-deps $(PERF_VENV)/bin/perf_analyzer $(PEERS_VENV)/bin/pytriton
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	mkdir -p bench/results
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/report.py --only peers

bench-report:
	$(BIN)/python bench/report.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(PERF_VENV) .pytest_cache .ruff_cache *.egg-info
