# trunkline — see README.md. Targets that touch the network need root.
GO       ?= go
BIN      := bin
GOFLAGS  ?=
LDFLAGS  := -s -w
PKGS     := ./...

.PHONY: all build deps kube-apiserver kubectl test test-short soak demo bench bench-quick generate lint clean sweep image

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS) -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# The programs the bed and the tests run; installed from Debian's packages
# when missing (as root).
TOOLS := ip:iproute2 ss:iproute2 ethtool:ethtool iperf3:iperf3 etcd:etcd-server promtool:prometheus tmux:tmux bpftool:bpftool iptables:iptables nft:nftables
deps:
	@missing=""; for t in $(TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@test -x $(BIN)/cnitool || GOBIN=$(abspath $(BIN)) $(GO) install github.com/containernetworking/cni/cnitool@v1.3.1
	@test -x $(BIN)/host-local || GOBIN=$(abspath $(BIN)) $(GO) install github.com/containernetworking/plugins/plugins/ipam/host-local@v1.10.0

# The whole suite: pure tests, dataplane tests over in-memory ports, and the
# privileged tests on real namespaces (they refuse to skip when CI=true).
# Each benchmark runs once so they keep compiling and running.
test: build deps kube-apiserver kubectl
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 12m -p 1 $(PKGS)
	$(GO) test -count=1 -run '^$$' -bench . -benchtime=1x -timeout 5m $(PKGS)
	$(BIN)/trunkline bed sweep

# The kube-apiserver the Kubernetes watch is tested against, built once from
# the module proxy (internal/kubetest/apiserver; about 10 minutes the first
# time on 2 cores, then cached).
kube-apiserver:
	$(GO) run ./internal/kubetest/cmd/build-apiserver

# The kubectl the deploy tests dry-run the manifests with: the machine's, or
# one built once from the module proxy (deploy/tools/kubectl) into bin/.
kubectl:
	@command -v kubectl >/dev/null 2>&1 || test -x $(BIN)/kubectl || (cd deploy/tools/kubectl && $(GO) build -o $(abspath $(BIN))/kubectl .)

# The soak (about 13 minutes, not in `make test`, which runs its 15 s short
# form): 10 minutes of mixed traffic with pod and Service churn through the
# agent, its RSS, goroutines, UMEM frames and conntrack sampled; the curve
# is printed and written to soak.csv.
soak: build deps
	TRUNKLINE_SOAK=10m TRUNKLINE_SOAK_OUT=$(abspath soak.csv) $(GO) test -v -count=1 -run TestSoak -timeout 20m ./e2e/

# Pure tests only (no root needed).
test-short:
	$(GO) test -short -count=1 $(PKGS)

# The main job on the embedded default: a bed with 3 pods, the agent, real traffic.
demo: build deps
	$(BIN)/trunkline demo

# The full comparison (under 20 minutes): every scenario, every dataplane,
# 3 rounds; results as a table, bench.json and bench.svg.
bench: build deps
	$(BIN)/trunkline bench --json bench.json --chart bench.svg

# The smoke run (under a minute).
bench-quick: build deps
	$(BIN)/trunkline bench --quick --json bench-quick.json --chart bench-quick.svg

# Regenerate the BPF objects from their C sources (needs clang and libbpf-dev).
generate:
	$(GO) generate ./...

lint:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1; }

# The container image (Dockerfile: the binaries of `make build`, built the
# same way, on distroless static); needs a Docker engine, or DOCKER=podman.
# deploy/ runs it: docs/install.md.
image: IMAGE ?= trunkline/trunkline:latest
image: DOCKER ?= docker
image:
	$(DOCKER) build -t $(IMAGE) .

# Remove every bed this machine still has (after a crash).
sweep: build
	$(BIN)/trunkline bed sweep

clean:
	rm -rf $(BIN)
