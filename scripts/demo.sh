#!/usr/bin/env bash
# The engine end to end on a local Apache Kafka: starts a broker (fetching
# its jars on first use), runs `leadscore run` with the example rules,
# feeds it realistic Segment events for LEADS leads over the last 30 days,
# and prints threshold crossings as the processor commits them.
#
#   scripts/demo.sh [LEADS]
#
# Needs Java 17+ and Maven (for the broker) and Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
leads="${1:-300}"
work="$(mktemp -d "${TMPDIR:-/tmp}/leadscore-demo.XXXXXX")"

cargo build --release --quiet --bin leadscore \
  --example generate_events --example produce_events --example print_crossings

eval "$(scripts/kafka.sh start --watch $$)"
echo "== Apache Kafka on $KAFKA_BOOTSTRAP"
trap 'kill "${processor:-}" 2>/dev/null || true; scripts/kafka.sh stop "$KAFKA_DIR" >/dev/null 2>&1 || true' EXIT

# The example config as it is; the broker address comes from the environment.
export LEADSCORE_KAFKA_BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP"
export LEADSCORE_KAFKA_TRANSACTIONAL_ID="leadscore-demo"

echo "== leadscore run --config config/leadscore.toml (log: $work/leadscore.log)"
target/release/leadscore run --config config/leadscore.toml > "$work/leadscore.log" 2>&1 &
processor=$!
for _ in $(seq 1 100); do
  grep -q "partitions restored" "$work/leadscore.log" && break
  sleep 0.2
done

start="$(python3 -c 'import datetime as d; print((d.datetime.now(d.timezone.utc) - d.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"))')"
target/release/examples/generate_events "$leads" 7 "$start" > "$work/events.jsonl"
echo "== feeding $(wc -l < "$work/events.jsonl") events for $leads leads into tracking-events"
target/release/examples/produce_events "$KAFKA_BOOTSTRAP" tracking-events < "$work/events.jsonl"

echo "== threshold crossings (read_committed from lead-scores)"
target/release/examples/print_crossings "$KAFKA_BOOTSTRAP" lead-scores 8

kill -TERM "$processor"
wait "$processor" && echo "== leadscore stopped cleanly on SIGTERM"
grep '"progress"\|progress ' "$work/leadscore.log" | tail -n 1 || true
