# ratethrottle: the single entry point. `make demo` and `make test` are the
# two commands of the README; each target installs what it needs.

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# Nightly-only jobs (miri, fuzz) use this toolchain and skip with a stated
# reason when it cannot be installed.
NIGHTLY ?= nightly
FUZZ_SECONDS ?= 30
LOOM_MAX_PREEMPTIONS ?= 3
export PROPTEST_CASES ?= 256

.PHONY: all demo test test-core test-lint test-unit test-loom test-c test-nightly \
        test-go test-node test-python test-nginx lib \
        bench bench-go bench-node bench-python bench-nginx fuzz header toolchain clean

all: test

## The demo: a real WebSocket server with the engine embedded, flooded by clients.
demo: toolchain
	$(CARGO) run --release --example demo

## Every check of every part (CI runs this through .ci/run).
test: test-core test-loom test-c test-go test-python test-node test-nginx test-nightly
	@echo "make test: all parts passed"

## Stable toolchain components the checks need.
toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

## Formatting, lints, unit, doc, proptest, behaviour, multi-process,
## zero-allocation and header-staleness tests; benches must compile.
test-core: test-lint test-unit

test-lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test-unit: toolchain
	$(CARGO) test --all-targets
	$(CARGO) test --doc

## loom models of every lock-free protocol (a crate of its own: see tests/loom).
test-loom: toolchain
	cd tests/loom && RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=$(LOOM_MAX_PREEMPTIONS) \
	  CARGO_TARGET_DIR=$(CURDIR)/target/loom $(CARGO) test --release

## C tests of the ABI under gcc ASan+UBSan and valgrind.
test-c: toolchain
	bash tests/c/run.sh

## The release static library and cdylib the bindings link
## (target/release/libratethrottle.{a,so}; honours CARGO_TARGET_DIR).
lib: toolchain
	$(CARGO) build --release --lib

## Each binding's tests: its script installs what it needs when missing.
test-go: lib
	bash bindings/go/test.sh

test-node: toolchain
	bash bindings/node/test.sh

test-python: toolchain
	bash bindings/python/test.sh

test-nginx: lib
	bash bindings/nginx/test.sh

## Miri over the engine and ABI tests, and a time-bounded fuzz smoke run.
test-nightly:
	NIGHTLY=$(NIGHTLY) FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/nightly.sh

## criterion benchmarks with their peers in the same run (see BENCHMARKS.md).
bench: toolchain
	$(CARGO) bench --bench engine
	$(CARGO) bench --bench processes

## Each binding's benchmarks, with its ecosystem's peer in the same run.
bench-go: lib
	bash bindings/go/bench.sh

bench-node: toolchain
	bash bindings/node/bench.sh

bench-python: toolchain
	bash bindings/python/bench.sh

bench-nginx: lib
	bash bindings/nginx/bench.sh

## Every fuzz target for FUZZ_SECONDS each (nightly + cargo-fuzz, installed if missing).
fuzz:
	NIGHTLY=$(NIGHTLY) FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/nightly.sh fuzz

## Regenerate include/ratethrottle.h from src/ffi (cbindgen, pinned in Cargo.toml).
header: toolchain
	$(CARGO) build --message-format=json-render-diagnostics \
	  | python3 -c 'import json,sys; [print(m["out_dir"]) for m in map(json.loads, sys.stdin) if m.get("reason")=="build-script-executed" and m["package_id"].find("ratethrottle")>=0]' \
	  | tail -n 1 | xargs -I{} cp {}/ratethrottle.h include/ratethrottle.h
	@echo "include/ratethrottle.h regenerated"

clean:
	$(CARGO) clean
