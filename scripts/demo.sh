#!/usr/bin/env bash
# The engine end to end on a local Apache Kafka: starts a broker (fetching
# its jars on first use), runs `leadscore run` with the example rules,
# feeds it realistic Segment events for LEADS leads over the last 30 days,
# prints lead and account threshold crossings as the processor commits
# them, then keeps the processor serving its HTTP API (with the curl lines
# to try) until Ctrl-C, or for SECONDS with --for, and stops it cleanly.
#
#   scripts/demo.sh [LEADS] [--for SECONDS] [--keep]
#
# --keep leaves the work folder (events, log) in place; otherwise it is
# removed on exit. Needs Java 17+ and Maven (for the broker) and Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/system-openssl.sh
leads=300 serve_for="" keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --for) serve_for="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    [0-9]*) leads="$1"; shift ;;
    *) echo "usage: scripts/demo.sh [LEADS] [--for SECONDS] [--keep]" >&2; exit 2 ;;
  esac
done
work="$(mktemp -d "${TMPDIR:-/tmp}/leadscore-demo.XXXXXX")"
cleanup() {
  kill "${processor:-}" 2>/dev/null || true
  if [ -n "${KAFKA_DIR:-}" ]; then scripts/kafka.sh stop "$KAFKA_DIR" >/dev/null 2>&1 || true; fi
  if [ -n "$keep" ]; then echo "== kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The broker's jars download (first run) while the code compiles.
scripts/kafka.sh install &
fetching=$!
cargo build --release --quiet --bin leadscore \
  --example generate_events --example produce_events --example print_crossings
wait "$fetching"

eval "$(scripts/kafka.sh start --watch $$)"
echo "== Apache Kafka on $KAFKA_BOOTSTRAP"

# The example config as it is; the broker address comes from the environment.
export LEADSCORE_KAFKA_BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP"
export LEADSCORE_KAFKA_TRANSACTIONAL_ID="leadscore-demo"

echo "== leadscore run --config config/leadscore.toml"
target/release/leadscore run --config config/leadscore.toml > "$work/leadscore.log" 2>&1 &
processor=$!
for _ in $(seq 1 100); do
  grep -q "partitions restored" "$work/leadscore.log" && break
  if ! kill -0 "$processor" 2>/dev/null; then
    cat "$work/leadscore.log" >&2
    echo "demo.sh: leadscore run exited before it was ready" >&2
    exit 1
  fi
  sleep 0.2
done

start="$(python3 -c 'import datetime as d; print((d.datetime.now(d.timezone.utc) - d.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"))')"
target/release/examples/generate_events "$leads" 7 "$start" > "$work/events.jsonl"
echo "== feeding $(wc -l < "$work/events.jsonl") events for $leads leads into tracking-events"
target/release/examples/produce_events "$KAFKA_BOOTSTRAP" tracking-events < "$work/events.jsonl"

echo "== threshold crossings of leads and accounts (read_committed from lead-scores)"
target/release/examples/print_crossings "$KAFKA_BOOTSTRAP" lead-scores 8 | tee "$work/crossings.txt"

lead="$(grep -o -m1 ' lead-[0-9]*' "$work/crossings.txt" | tr -d ' ' || true)"
account="$(sed -n 's/.* account \([^ ]*\) .*/\1/p' "$work/crossings.txt" | head -n 1)"
echo "== leadscore is serving on 127.0.0.1:9464; try, in another terminal:"
echo "  curl -s localhost:9464/metrics | grep '^leadscore_'"
echo "  curl -s localhost:9464/v1/leads/${lead:-lead-000001}"
if [ -n "$account" ]; then echo "  curl -s localhost:9464/v1/accounts/$account"; fi
echo "  curl -s localhost:9464/readyz"
if [ -n "$serve_for" ]; then
  echo "== stopping in $serve_for s (or on Ctrl-C)"
  sleep "$serve_for" &
else
  echo "== Ctrl-C stops it"
  sleep infinity &
fi
sleeper=$!
# A non-interactive shell's background jobs ignore Ctrl-C: the script takes
# it, and stops the processor the way an orchestrator would, with SIGTERM.
trap 'kill "$sleeper" 2>/dev/null || true' INT TERM
wait "$sleeper" 2>/dev/null || true
trap - INT TERM

kill -TERM "$processor"
if wait "$processor"; then
  echo "== leadscore stopped cleanly on SIGTERM"
else
  tail -n 20 "$work/leadscore.log" >&2
  echo "demo.sh: leadscore run exited with an error" >&2
  exit 1
fi
processor=""
grep '"progress"\|progress ' "$work/leadscore.log" | tail -n 1 || true
