# Push cluster. `make run` brings it up on this machine, `make test` runs
# every test (installing what they need first). See README.md.
SHELL := /bin/bash
GO    ?= go
BIN   := bin

.PHONY: all build run test test-short bench faults fuzz vet fmt proto deps clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/... ./bench/cmd/...

# Ports and state directory: see scripts/run.sh (PUSH_RUN_PORT_OFFSET,
# PUSH_RUN_DIR); a second run beside a running cluster refuses.
run: build
	PUSH_RUN_BIN=$(BIN) ./scripts/run.sh

# The README's test command; .ci/run calls it.
test: deps
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) test -race -count=1 -timeout 15m $$($(GO) list ./... | grep -v /test/faults$$)
	@# The short fault suite runs alone: it times real processes against
	@# lease TTLs, and the race-enabled packages beside it starve them.
	$(GO) test -count=1 -timeout 10m ./test/faults
	cd web && npm test

test-short:
	$(GO) test -count=1 -short ./...

# Benchmarks: the standard set (under 30 minutes on 2 cores), or SCENARIO=conns
# N=200000 for one scenario at a size (see bench/README.md).
SCENARIO ?= all
N ?=
bench: build deps
	./scripts/bench.sh "$(SCENARIO)" "$(N)"

# The fault suite at full size (about 6 minutes): real edge, router, pushctl
# and etcd processes on loopback, 1,000 users, 800 msg/s; one table row per
# scenario, results in bench/results (see test/faults).
faults: build
	$(GO) build -o $(BIN)/ ./test/faults/etcdserver
	$(BIN)/pushfault --scenario all --bin $(BIN) --out bench/results

# Fuzzing: each target for FUZZTIME (go test -fuzz runs one target at a
# time). `go test` alone runs every target's seeds and testdata/fuzz
# corpus; a crasher found here is written to <pkg>/testdata/fuzz/<target>/
# and then runs with the normal tests. The last line per target gives its
# executions.
FUZZTIME ?= 30s
FUZZ_TARGETS := \
	pkg/httphead:FuzzParse \
	pkg/edge:FuzzRequest \
	pkg/edge:FuzzFrameReader \
	pkg/wire:FuzzMachine \
	pkg/router:FuzzExtractKey \
	pkg/proxyproto:FuzzParse \
	pkg/ring:FuzzParseDocument \
	pkg/auth:FuzzVerify
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; fn=$${t##*:}; \
	  out=$$($(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) ./$$pkg 2>&1) || { echo "$$out"; echo "FAIL $$pkg $$fn"; exit 1; }; \
	  echo "$$pkg $$fn: $$(echo "$$out" | grep -o 'elapsed: [^,]*, execs: [0-9]*' | tail -1)"; \
	done

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

proto:
	./proto/gen.sh

deps:
	./scripts/deps.sh
	./scripts/browser-deps.sh

clean:
	rm -rf $(BIN) .run
