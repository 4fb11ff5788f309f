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
. scripts/system-openssl.sh
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
def who(o):
    return o["lead_id"] or f'account {o["account_id"]}'
def why(o, n):
    return ", ".join(f'{c["rule"]} {c["points"]:+.1f}' for c in o["contributions"][:n])
crossings = [o for o in map(json.loads, open(f"{work}/outputs.jsonl")) if o["type"] == "threshold_crossed"]
for o in crossings[:25]:
    print(f'{o["at"]}  {who(o):<12} {o["previous_tier"]:>7} -> {o["tier"]:<7} {o["direction"]:<4} score {o["score"]:5.1f}  ({why(o, 3)})')
accounts = sum(o["lead_id"] is None for o in crossings)
print(f"... {len(crossings)} crossings in all ({accounts} of accounts), {sum(o['direction'] == 'down' for o in crossings)} of them cool-downs")
snapshot = [json.loads(l) for l in open(f"{work}/snapshot.jsonl")]
leads = [s for s in snapshot if "lead_id" in s]
accounts = [s for s in snapshot if "lead_id" not in s]
print("lead tiers now:", dict(collections.Counter(s["tier"] for s in leads)))
print("account tiers now:", dict(collections.Counter(s["tier"] for s in accounts)))
print("hottest leads:")
for s in sorted(leads, key=lambda s: -s["score"])[:5]:
    print(f'  {s["lead_id"]:<12} {s["score"]:5.1f} grade {s["grade"]} {s["tier"]:<7} {why(s, 4)}')
print("hottest accounts:")
for s in sorted(accounts, key=lambda s: -s["score"])[:5]:
    print(f'  {s["account_id"]:<22} {s["score"]:5.1f} grade {s["grade"]} {s["tier"]:<7} {s["members"]} leads, {s["engaged_leads"]} engaged')
PY
echo "outputs: $work/outputs.jsonl, snapshot: $work/snapshot.jsonl"
