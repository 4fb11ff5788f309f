#!/usr/bin/env bash
# Calibrates the hand-written X Education rules on the 9,240 real leads of
# ../shared/data/x-education-leads.csv (or the CSV given as $1): converts
# the export into events and outcomes, runs `leadscore calibrate`, and
# leaves the report, charts and suggested rules in target/x-education/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/system-openssl.sh
csv="${1:-../shared/data/x-education-leads.csv}"
out=target/x-education
[ -f "$csv" ] || { echo "no $csv: pass the X Education leads CSV as the first argument" >&2; exit 1; }
cargo build --release --quiet --bin leadscore --example x_education
target/release/examples/x_education "$csv" "$out"
target/release/leadscore calibrate \
    --config examples/x-education/rules.toml \
    --events "$out/events.jsonl" --outcomes "$out/outcomes.csv" \
    --out-rules "$out/rules.calibrated.toml" --report "$out/report" \
    --target-precision 0.8 --capacity 1000
echo "== report: $out/report/report.md; suggested rules: $out/rules.calibrated.toml" >&2
