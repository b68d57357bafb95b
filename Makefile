# Developer entry points. `make verify` changes nothing; `make fix` rewrites formatting
# and applies clippy's suggestions.
SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: build check test verify fix cluster

build:
	$(ENV) cargo build --workspace

check:
	$(ENV) cargo check --workspace --all-targets

test:
	./scripts/test.sh

verify:
	$(ENV) cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

fix:
	$(ENV) cargo fmt --all && cargo clippy --workspace --all-targets --fix --allow-dirty --allow-staged -- -D warnings
