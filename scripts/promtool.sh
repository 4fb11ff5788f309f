#!/usr/bin/env bash
# promtool, Prometheus's checker, for the tests that check the metrics
# exposition and the alert rules. Unpacked from Debian's `prometheus`
# package into ~/.cache/leadscore (nothing is installed system-wide).
#
#   scripts/promtool.sh install   fetch and unpack once; prints the path
#   scripts/promtool.sh path      the path (after install)
set -euo pipefail
cache="${LEADSCORE_CACHE:-$HOME/.cache/leadscore}"
dir="$cache/prometheus-deb"
bin="$dir/usr/bin/promtool"

install() {
  if [ -x "$bin" ]; then
    echo "$bin"
    return
  fi
  echo "promtool.sh: fetching Debian's prometheus package for promtool" >&2
  local work
  work="$(mktemp -d)"
  (
    cd "$work"
    if ! apt-get download prometheus >/dev/null 2>&1; then
      # A fresh machine may not have the package lists yet.
      apt-get update >/dev/null 2>&1 || true
      apt-get download prometheus >&2
    fi
  )
  mkdir -p "$dir"
  dpkg-deb -x "$work"/prometheus_*.deb "$dir"
  rm -rf "$work"
  "$bin" --version >&2
  echo "$bin"
}

case "${1:-}" in
  install) install ;;
  path) echo "$bin" ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
