#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property and
# integration tests. Installs nothing the machine lacks beyond the Rust
# toolchain's own components.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --all-targets --locked

echo "== benches and examples build"
cargo build --release --benches --examples --locked
