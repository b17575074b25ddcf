# identityd build/test entry points. `make` (or `make help`) lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO ?= go
# Newest golangci-lint v2 release on the module proxy that builds with Go 1.26.
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT ?= $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
TEST_TIMEOUT ?= 20m

.PHONY: help run build test test-faults test-faults-cluster bench test-short bench-rebuild lint vet fmt nats-server clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## Run the identityd server (go run ./cmd/identityd)
	$(GO) run ./cmd/identityd

build: ## Build all commands into bin/
	$(GO) build -o bin/ ./cmd/...

test: ## Run all tests with -race against PostgreSQL (deploy/test-postgres.sh)
	dsn="$$(bash deploy/test-postgres.sh)"; \
	test -n "$$dsn"; \
	export IDENTITYD_TEST_DATABASE_URL="$$dsn"; \
	echo "IDENTITYD_TEST_DATABASE_URL=$$dsn"; \
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

test-faults: ## Fault tests (NATS/PostgreSQL/identityd/a cluster node killed under load, concurrency, security); run by CI
	dsn="$$(bash deploy/test-postgres.sh)"; \
	test -n "$$dsn"; \
	export IDENTITYD_TEST_DATABASE_URL="$$dsn"; \
	$(GO) test -tags faults -run 'Fault' -count=1 -timeout 30m ./cmd/identityd/

test-faults-cluster: ## Only the three-node NATS cluster fault test (part of test-faults)
	dsn="$$(bash deploy/test-postgres.sh)"; \
	test -n "$$dsn"; \
	export IDENTITYD_TEST_DATABASE_URL="$$dsn"; \
	$(GO) test -tags faults -run 'FaultCluster' -count=1 -timeout 30m ./cmd/identityd/

bench: ## Side-by-side benchmarks against a fresh deployment; prints figures and ratios, writes bench/results/latest.json
	$(GO) run ./bench/cmd/identityd-bench

test-short: ## Run all tests without -race (same PostgreSQL DSN)
	dsn="$$(bash deploy/test-postgres.sh)"; \
	test -n "$$dsn"; \
	export IDENTITYD_TEST_DATABASE_URL="$$dsn"; \
	$(GO) test -count=1 ./...

bench-rebuild: ## Benchmark rebuilding the read models from a 100,000-event stream (events/s)
	dsn="$$(bash deploy/test-postgres.sh)"; \
	export IDENTITYD_TEST_DATABASE_URL="$$dsn"; \
	$(GO) test -run '^$$' -bench Rebuild -benchtime 1x -timeout 30m ./projections/

lint: ## gofmt check, go vet, then golangci-lint (.golangci.yml)
	unformatted="$$(gofmt -l .)"; \
	if [[ -n "$$unformatted" ]]; then echo "gofmt needed on:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...

vet: ## Run go vet
	$(GO) vet ./...

fmt: ## Format all Go files (gofmt -s)
	gofmt -s -w .

nats-server: ## Build bin/nats-server from the version pinned in go.mod
	$(GO) build -o bin/nats-server github.com/nats-io/nats-server/v2

clean: ## Remove build output and local data
	rm -rf bin data
