# weft — see README.md. Targets that build labs need root.
GO      ?= go
BIN     := bin/weft
PKGS    := ./...
# Packages whose tests exercise concurrency directly (run again under -race).
RACE    := ./engine/... ./encap/... ./lease/... ./capture/... ./daemon/...
# staticcheck, pinned; .ci/run installs it into a cache outside the repo.
STATICCHECK ?= $(shell command -v staticcheck || echo $(HOME)/go/bin/staticcheck)
# Fuzz budgets are counts of inputs, not wall-clock time: under load, Go's
# fuzz coordinator can fail a time budget with "context deadline exceeded"
# (golang/go#75804). Each target's count is sized to take about 10s on an
# idle 2-core machine (the whole target about 2 minutes with builds);
# FUZZCOUNT_SCALE multiplies them all, e.g. make fuzz FUZZCOUNT_SCALE=10.
FUZZCOUNT_SCALE ?= 1
# The -fuzztime of a target without a count of its own.
FUZZTIME ?= 50000x
# Minimizing (each new interesting input, and a crasher) is budgeted in
# inputs too: its default, 60s of wall clock, stalls a run for a minute.
FUZZMINIMIZE ?= 5000x
fuzzcount = $(shell echo $$(( $(1) * $(FUZZCOUNT_SCALE) )))x

.PHONY: all build test unit race fuzz bench demo lint clean soak rootfs kube-apiserver kube-scale scale etcd-load flanneld

all: build

build:
	$(GO) build -o $(BIN) ./cmd/weft

# The whole suite, as CI runs it: unit tests, namespace end-to-end tests,
# the race detector on the concurrent packages, and a short fuzz of every
# parser.
test: lint build unit race fuzz

unit:
	$(GO) test -count=1 -timeout 20m $(PKGS)
	# The kernel backends again, with IPv4 routes by nexthop object (--route-nexthops).
	WEFT_TEST_ROUTE_NEXTHOPS=1 $(GO) test -count=1 -timeout 5m ./encap/kernel/ ./encap/vxlan/ ./encap/hostgw/

race:
	$(GO) test -count=1 -race -timeout 10m $(RACE)

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzTxClassify$$' -fuzztime $(call fuzzcount,200000) -fuzzminimizetime $(FUZZMINIMIZE) ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzRxClassify$$' -fuzztime $(call fuzzcount,200000) -fuzzminimizetime $(FUZZMINIMIZE) ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzAttrsJSON$$' -fuzztime $(call fuzzcount,50000) -fuzzminimizetime $(FUZZMINIMIZE) ./lease/
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(call fuzzcount,50000) -fuzzminimizetime $(FUZZMINIMIZE) ./lease/
	$(GO) test -run '^$$' -fuzz '^FuzzParseSubnetKey$$' -fuzztime $(call fuzzcount,100000) -fuzzminimizetime $(FUZZMINIMIZE) ./lease/
	$(GO) test -run '^$$' -fuzz '^FuzzLooseSubnetKey$$' -fuzztime $(call fuzzcount,100000) -fuzzminimizetime $(FUZZMINIMIZE) ./lease/etcdstore/
	$(GO) test -run '^$$' -fuzz '^FuzzNodeToLease$$' -fuzztime $(call fuzzcount,10000) -fuzzminimizetime $(FUZZMINIMIZE) ./lease/kube/
	$(GO) test -run '^$$' -fuzz '^FuzzProtobufNodes$$' -fuzztime $(call fuzzcount,200000) -fuzzminimizetime $(FUZZMINIMIZE) ./lease/kube/
	$(GO) test -run '^$$' -fuzz '^FuzzParseUDPLeaseV6$$' -fuzztime $(call fuzzcount,50000) -fuzzminimizetime $(FUZZMINIMIZE) ./encap/userspace/
	$(GO) test -run '^$$' -fuzz '^FuzzVXLANDecap$$' -fuzztime $(call fuzzcount,50000) -fuzzminimizetime $(FUZZMINIMIZE) ./encap/vxlan/
	$(GO) test -run '^$$' -fuzz '^FuzzFilter$$' -fuzztime $(call fuzzcount,100000) -fuzzminimizetime $(FUZZMINIMIZE) ./capture/
	$(GO) test -run '^$$' -fuzz '^FuzzCoalesce$$' -fuzztime $(call fuzzcount,50000) -fuzzminimizetime $(FUZZMINIMIZE) ./tunio/
	$(GO) test -run '^$$' -fuzz '^FuzzVirtioRead$$' -fuzztime $(call fuzzcount,100000) -fuzzminimizetime $(FUZZMINIMIZE) ./tunio/
	$(GO) test -run '^$$' -fuzz '^FuzzSplitInPlace$$' -fuzztime $(call fuzzcount,100000) -fuzzminimizetime $(FUZZMINIMIZE) ./tunio/
	$(GO) test -run '^$$' -fuzz '^FuzzGateUpdate$$' -fuzztime $(call fuzzcount,10000) -fuzzminimizetime $(FUZZMINIMIZE) ./encap/admission/

# Micro-benchmarks (for benchstat: run twice, compare), then the namespace
# bench of every backend.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./engine/... ./encap/... ./bench/wakeup/ | tee bench-micro.txt
	./$(BIN) bench

# The scale benchmark (issue 19): one real host and SCALE_HOSTS-1 simulated
# peers in etcd, per backend; start time, CPU per lease event, convergence
# and RSS. Figures in docs/scale.md. Needs root. make scale SCALE_HOSTS=5000
SCALE_HOSTS ?= 1000
scale: build
	./$(BIN) bench --scale --hosts $(SCALE_HOSTS)

# What N hosts cost etcd (issue 19): ETCD_LOAD_HOSTS simulated hosts, each
# with its own connection, against weft etcd on loopback. Figures in
# docs/scale.md. No root needed. make etcd-load ETCD_LOAD_HOSTS=1000
ETCD_LOAD_HOSTS ?= 5000
etcd-load: build
	./$(BIN) bench --etcd-load --hosts $(ETCD_LOAD_HOSTS)

# The long fault tests (issue 9): restarts, etcd outage and partition,
# lease churn, overload, hostile input, for minutes. Figures go to
# bench/soak/latest.txt and docs/reliability.md. Needs root.
soak:
	GO=$(GO) ./bench/soak/soak.sh

# The container image's root filesystem, laid out in DIR (the Dockerfile
# copies exactly this): /opt/bin/weft, and links to it where
# kube-flannel.yml runs flannel's image: /opt/bin/flanneld (weft run) and
# /opt/bin/install-conf (the install-cni init container's copy of the CNI
# config). A static binary, so any base image with iptables and nft (and
# cp, which older kube-flannel.yml releases' install-cni runs) will do.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
rootfs:
	@test -n "$(DIR)" || { echo "usage: make rootfs DIR=/path/to/root"; exit 2; }
	mkdir -p $(DIR)/opt/bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(DIR)/opt/bin/weft ./cmd/weft
	ln -sfn weft $(DIR)/opt/bin/flanneld
	ln -sfn weft $(DIR)/opt/bin/install-conf

# The pinned kube-apiserver that lease/kube's and the e2e kube tests run
# against, built once into a cache outside the repo (a no-op when there;
# .ci/run calls it). docs/kubernetes.md.
kube-apiserver:
	./hack/kube-apiserver.sh

# The pinned flanneld (v0.28.9, the recordings' version) that the interop
# tests run beside weft, built once into a cache outside the repo (a no-op
# when there; .ci/run calls it). hack/flanneld.sh says what is left out.
flanneld:
	./hack/flanneld.sh

# Kube mode at scale (issue 16): RSS and convergence with 5,000 Nodes on a
# real API server; figures for docs/kubernetes.md. Needs root.
# KUBE_SCALE_MEMORY_MAX=50MiB runs weft run in a memory cgroup of that
# hard limit (kube-flannel.yml's), reporting its peak charge and OOM kills.
KUBE_SCALE_MEMORY_MAX ?=
kube-scale: kube-apiserver
	WEFT_KUBE_SCALE=5000 WEFT_KUBE_SCALE_MEMORY_MAX=$(KUBE_SCALE_MEMORY_MAX) $(GO) test -count=1 -v -run '^TestKubeScale$$' -timeout 40m ./test/e2e/ | grep -E 'FIGURE|^(ok|FAIL|---)|kube_scale_test.go:[0-9]+: [^F]'

demo: build
	./$(BIN) demo

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(STATICCHECK) $(PKGS)

clean:
	rm -rf bin bench-micro.txt
