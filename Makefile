# sipedge: `make` lists the targets.
SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
GO ?= go
PKGS := ./...
FUZZTIME ?= 20s

.PHONY: help build run test unit lint fuzz interop natlab bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/sipedge with the version stamped in
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/sipedge ./cmd/sipedge

run: build ## run sipedge on the shipped config (phones: 127.0.0.1:5060, core: 127.0.0.1:5070)
	./bin/sipedge run -config configs/sipedge.toml

test: lint unit interop natlab ## everything CI runs: lint, unit tests with -race, interop with Kamailio and sipp, the NAT lab

unit: ## unit and in-process tests with -race, then the allocation and memory checks that -race cannot make
	$(GO) test -race -count=1 $(PKGS)
	$(GO) test -count=1 -run 'Allocs$$|FloodMemory$$' ./nat/ ./nat/rawudp/ ./ratelimit/ ./edge/

lint: ## gofmt, go vet, staticcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) vet -tags interop,bench,natlab $(PKGS)
	$(GO) tool staticcheck $(PKGS)

fuzz: ## run every fuzz target for FUZZTIME each (crashers land in testdata/fuzz and stay as regression tests)
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./nat/
	$(GO) test -run '^$$' -fuzz '^FuzzRoundTrip$$' -fuzztime $(FUZZTIME) ./nat/
	$(GO) test -run '^$$' -fuzz '^FuzzDemux$$' -fuzztime $(FUZZTIME) ./nat/
	$(GO) test -run '^$$' -fuzz '^FuzzFramer$$' -fuzztime $(FUZZTIME) ./nat/
	$(GO) test -run '^$$' -fuzz '^FuzzRegister$$' -fuzztime $(FUZZTIME) ./edge/
	$(GO) test -run '^$$' -fuzz '^FuzzLooksLikeSIP$$' -fuzztime $(FUZZTIME) ./edge/
	$(GO) test -run '^$$' -fuzz '^FuzzDecisions$$' -fuzztime $(FUZZTIME) ./ratelimit/
	$(GO) test -run '^$$' -fuzz '^FuzzBindingRecord$$' -fuzztime $(FUZZTIME) ./edge/state/
	$(GO) test -run '^$$' -fuzz '^FuzzMatchesSipgo$$' -fuzztime $(FUZZTIME) ./edge/sipwire/
	$(GO) test -run '^$$' -fuzz '^FuzzParseMatchesSipgo$$' -fuzztime $(FUZZTIME) ./edge/sipwire/
	$(GO) test -run '^$$' -fuzz '^FuzzParseSparse$$' -fuzztime $(FUZZTIME) ./edge/sipwire/

interop: ## real Kamailio core and sipp phones through the built binary (needs kamailio, sip-tester)
	$(GO) test -race -count=1 -tags interop -v -timeout 25m -p 1 -run Interop ./cmd/sipedge/ ./edge/admin/

natlab: ## real Linux NAT (netns + nftables) between phones and sipedge; needs root
	$(GO) test -count=1 -tags natlab -v -timeout 15m -run NATLab ./cmd/sipedge/

bench: ## Go benchmarks, sipp throughput straight to Kamailio vs through sipedge, then sipedge vs Kamailio as the edge (CPU ratio, profiles)
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)
	$(GO) test -count=1 -tags bench -v -timeout 30m -run Throughput ./cmd/sipedge/
	$(GO) test -count=1 -tags bench -v -timeout 60m -run EdgeCompare ./cmd/sipedge/

clean: ## remove build output
	rm -rf bin
