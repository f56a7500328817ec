# Forest Bus over gRPC. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

# Pinned code generators, installed into ./bin with `go install`.
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0

# The binaries record the commit they are built from (fbnode -version,
# forestbus_build_info), also where GOFLAGS turns that off, when git
# answers here (not in a tarball, nor where git refuses the directory:
# there GOFLAGS is left to decide).
BUILDVCS ?= $(shell git status --porcelain >/dev/null 2>&1 && echo -buildvcs=auto)

# `make run` settings.
RUN_ADDR ?= 127.0.0.1:3000
RUN_DATA ?= ./fbdata

.PHONY: help build generate checkgenerate lint test test-short integration fuzz bench run cluster tools clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build every package and the binaries into ./bin
	$(GO) build ./...
	$(GO) build $(BUILDVCS) -o $(BIN)/fbnode ./cmd/fbnode
	$(GO) build $(BUILDVCS) -o $(BIN)/fbctl ./cmd/fbctl
	$(GO) build $(BUILDVCS) -o $(BIN)/fbbench ./cmd/fbbench

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc ## install pinned generators into ./bin

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

generate: tools ## regenerate gen/ from proto/
	$(BIN)/buf generate

checkgenerate: generate ## fail when gen/ differs from what proto/ generates
	@git diff --exit-code -- gen/ || (echo "gen/ is stale: run make generate and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain -- gen/)" || (git status --porcelain -- gen/; echo "gen/ has untracked files" >&2; exit 1)

lint: tools ## buf lint, go vet, gofmt
	$(BIN)/buf lint
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'))" || (gofmt -l $$(git ls-files '*.go' | grep -v '^gen/'); exit 1)

test: checkgenerate ## gen/ up to date, then unit and integration tests with -race (what CI runs)
	$(GO) test -race -count=1 -timeout 15m ./...

test-short: ## unit tests only
	$(GO) test -race -short -count=1 ./...

integration: ## multi-process tests only
	$(GO) test -race -count=1 -timeout 20m ./integration_test/...

fuzz: ## run each fuzz target for 30 s
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime 30s ./server/commitlog/

bench: build ## run the fbbench workloads against a fresh local 3-node cluster (scripts/bench.sh; env knobs at its top)
	./scripts/bench.sh

run: ## start a one-node cluster with topic "default" on $(RUN_ADDR)
	$(GO) build $(BUILDVCS) -o $(BIN)/fbnode ./cmd/fbnode
	$(BIN)/fbnode -listen $(RUN_ADDR) -data $(RUN_DATA)

clean: ## remove ./bin, make run's data ($(RUN_DATA)) and make cluster's ($(CLUSTER_DIR))
	rm -rf $(BIN) $(RUN_DATA) $(CLUSTER_DIR)

CLUSTER_DIR ?= ./fbcluster
CLUSTER_PORT ?= 3000
CLUSTER_HTTP_PORT ?= 8080
cluster: build ## start a local 3-node cluster (127.0.0.1:3001-3003, /metrics and /status on :8081-8083; node i listens on CLUSTER_PORT+i and CLUSTER_HTTP_PORT+i; data in ./fbcluster) in the foreground; Ctrl-C stops it
	@mkdir -p $(CLUSTER_DIR); \
	IC=n1=127.0.0.1:$$(($(CLUSTER_PORT)+1)),n2=127.0.0.1:$$(($(CLUSTER_PORT)+2)),n3=127.0.0.1:$$(($(CLUSTER_PORT)+3)); \
	trap 'kill $$(jobs -p) 2>/dev/null; wait' INT TERM EXIT; \
	for i in 1 2 3; do \
	  $(BIN)/fbnode -name n$$i -listen 127.0.0.1:$$(($(CLUSTER_PORT)+i)) -http 127.0.0.1:$$(($(CLUSTER_HTTP_PORT)+i)) -data $(CLUSTER_DIR)/n$$i -initial-cluster $$IC & \
	done; \
	wait
