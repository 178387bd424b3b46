# Ballena. `make demo` is the first thing to run; `make test` is what CI runs.
GO      ?= go
BIN     := bin/ballena
PKGS    := ./...
export CGO_ENABLED := 0

.PHONY: build test test-short fuzz-seeds demo clean bench bench-verify bench-launch

build: ## static binary at bin/ballena
	$(GO) build -trimpath -ldflags='-s -w' -o $(BIN) ./cmd/ballena
	@! readelf -lW $(BIN) | grep -q INTERP || { echo "$(BIN) is not static"; exit 1; }

# Root is needed for cgroup, namespace and runc tests; they skip with a reason otherwise.
test: build ## every test, fuzz seed corpora included
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $(PKGS)

test-short:
	$(GO) test -count=1 -short $(PKGS)

# The demo runs in a throwaway dir: a key, the sample whale (testdata/hello) built
# static, published, inspected and verified against a trust policy.
DEMO := .demo
demo: build ## build, make a key, publish the sample whale, verify it
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(GO) build -trimpath -o $(DEMO)/hello ./testdata/hello
	cd $(DEMO) && export BALLENA_DATA=$$PWD/data && B=../$(BIN) && \
	$$B key generate release && \
	$$B publish --key release.key --name hello --version 1.0.0 ./hello && \
	printf 'keys:\n  - path: release.pub\n    names: ["hello"]\n' > trust.yaml && \
	$$B ls && $$B inspect hello@1.0.0 && \
	$$B verify --trust trust.yaml hello@1.0.0 && \
	$$B sign --key release.key --name hello --version 1.0.0 ./hello && \
	$$B verify --pub release.pub --envelope hello.dsse.json ./hello

bench-verify: ## sha256 + signature verification throughput on a 1 GiB blob
	$(GO) test -run '^$$' -bench BenchmarkVerify1GiB -benchtime 3x ./artifact/

bench-launch: ## launch latency p50/p99 of a whale (200 launches) beside runc run of the same binary; root
	$(GO) test -run '^$$' -bench BenchmarkLaunch -benchtime 1x -timeout 30m ./launcher/

clean:
	rm -rf bin .demo
