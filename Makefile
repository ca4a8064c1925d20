# weft — see README.md. Targets that build labs need root.
GO      ?= go
BIN     := bin/weft
PKGS    := ./...
# Packages whose tests exercise concurrency directly (run again under -race).
RACE    := ./engine/... ./encap/... ./lease/... ./capture/... ./daemon/...
# staticcheck, pinned; .ci/run installs it into a cache outside the repo.
STATICCHECK ?= $(shell command -v staticcheck || echo $(HOME)/go/bin/staticcheck)
FUZZTIME ?= 10s

.PHONY: all build test unit race fuzz bench demo lint clean soak kube-apiserver kube-scale

all: build

build:
	$(GO) build -o $(BIN) ./cmd/weft

# The whole suite, as CI runs it: unit tests, namespace end-to-end tests,
# the race detector on the concurrent packages, and a short fuzz of every
# parser.
test: lint build unit race fuzz

unit:
	$(GO) test -count=1 -timeout 20m $(PKGS)

race:
	$(GO) test -count=1 -race -timeout 10m $(RACE)

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzTxClassify$$' -fuzztime $(FUZZTIME) ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzRxClassify$$' -fuzztime $(FUZZTIME) ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzAttrsJSON$$' -fuzztime $(FUZZTIME) ./lease/
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(FUZZTIME) ./lease/
	$(GO) test -run '^$$' -fuzz '^FuzzParseSubnetKey$$' -fuzztime 100000x ./lease/
	$(GO) test -run '^$$' -fuzz '^FuzzVXLANDecap$$' -fuzztime $(FUZZTIME) ./encap/vxlan/
	$(GO) test -run '^$$' -fuzz '^FuzzFilter$$' -fuzztime $(FUZZTIME) ./capture/

# Micro-benchmarks (for benchstat: run twice, compare), then the namespace
# bench of every backend.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./engine/... ./encap/... ./bench/wakeup/ | tee bench-micro.txt
	./$(BIN) bench

# The long fault tests (issue 9): restarts, etcd outage and partition,
# lease churn, overload, hostile input, for minutes. Figures go to
# bench/soak/latest.txt and docs/reliability.md. Needs root.
soak:
	GO=$(GO) ./bench/soak/soak.sh

# The pinned kube-apiserver that lease/kube's and the e2e kube tests run
# against, built once into a cache outside the repo (a no-op when there;
# .ci/run calls it). docs/kubernetes.md.
kube-apiserver:
	./hack/kube-apiserver.sh

# Kube mode at scale (issue 16): RSS and convergence with 5,000 Nodes on a
# real API server; figures for docs/kubernetes.md. Needs root.
kube-scale: kube-apiserver
	WEFT_KUBE_SCALE=5000 $(GO) test -count=1 -v -run '^TestKubeScale$$' -timeout 40m ./test/e2e/ | grep -E 'FIGURE|^(ok|FAIL|---)'

demo: build
	./$(BIN) demo

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)

clean:
	rm -rf bin bench-micro.txt
