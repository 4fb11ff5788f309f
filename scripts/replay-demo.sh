#!/usr/bin/env bash
# Runs the scoring engine end to end over realistic sample traffic:
# validates the example rules, generates Segment events for 2,000 leads,
# replays them with event time as the clock, prints threshold crossings as
# they happen and the hottest leads at the end.
#
#   scripts/replay-demo.sh [LEADS]
#
# No broker needed: the same core as `leadscore run`, over a file.
set -euo pipefail
cd "$(dirname "$0")/.."
leads="${1:-2000}"
work="${TMPDIR:-/tmp}/leadscore-demo"
mkdir -p "$work"

cargo build --release --quiet --bin leadscore --example generate_events
bin=target/release/leadscore

echo "== leadscore check --config config/leadscore.toml"
"$bin" check --config config/leadscore.toml | tail -n 3

echo "== generating sample events for $leads leads -> $work/events.jsonl"
target/release/examples/generate_events "$leads" > "$work/events.jsonl"
wc -l < "$work/events.jsonl" | xargs echo "events:"

echo "== leadscore replay (threshold crossings as they happen; first 25 shown)"
"$bin" replay --config config/leadscore.toml --input "$work/events.jsonl" \
  --output "$work/outputs.jsonl" --snapshot "$work/snapshot.jsonl"
python3 - "$work" <<'PY'
import collections, json, sys
work = sys.argv[1]
crossings = [o for o in map(json.loads, open(f"{work}/outputs.jsonl")) if o["type"] == "threshold_crossed"]
for o in crossings[:25]:
    why = ", ".join(f'{c["rule"]} {c["points"]:+.1f}' for c in o["contributions"][:3])
    print(f'{o["at"]}  {o["lead_id"]:<12} {o["previous_tier"]:>5} -> {o["tier"]:<5} {o["direction"]:<4} score {o["score"]:5.1f}  ({why})')
print(f"... {len(crossings)} crossings in all, {sum(o['direction'] == 'down' for o in crossings)} of them cool-downs")
snapshot = [json.loads(l) for l in open(f"{work}/snapshot.jsonl")]
print("tiers now:", dict(collections.Counter(s["tier"] for s in snapshot)))
print("hottest leads:")
for s in sorted(snapshot, key=lambda s: -s["score"])[:5]:
    why = ", ".join(f'{c["rule"]} {c["points"]:+.1f}' for c in s["contributions"][:4])
    print(f'  {s["lead_id"]:<12} {s["score"]:5.1f} grade {s["grade"]} {s["tier"]:<5} {why}')
PY
echo "outputs: $work/outputs.jsonl, snapshot: $work/snapshot.jsonl"
