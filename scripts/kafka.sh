#!/usr/bin/env bash
# Apache Kafka (KRaft, one node) from its Maven jars, for tests and the demo.
#
#   scripts/kafka.sh install            fetch the jars once per machine
#   scripts/kafka.sh start [--watch PID] [--tls]
#                                       start on free loopback ports; prints
#                                       KAFKA_BOOTSTRAP=, KAFKA_PID=, KAFKA_DIR=
#                                       and returns once the broker is ready.
#                                       With --watch, the broker stops when PID exits.
#                                       With --tls, also a TLS listener with a fresh
#                                       self-signed certificate for 127.0.0.1:
#                                       KAFKA_TLS_BOOTSTRAP=, KAFKA_TLS_CA= (PEM).
#   scripts/kafka.sh stop DIR           stop the broker started in DIR
#
# Jars go to ${LEADSCORE_CACHE:-~/.cache/leadscore}/kafka-<version>, outside
# the work tree. Needs Java 17+ and Maven.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
cache="${LEADSCORE_CACHE:-$HOME/.cache/leadscore}"
jars="$cache/kafka-$version"

install() {
  if [ -f "$jars/.complete" ]; then
    return
  fi
  echo "kafka.sh: fetching Apache Kafka $version jars into $jars" >&2
  mkdir -p "$jars"
  (cd "$here/kafka" && mvn -q -B -Dstyle.color=never \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DoutputDirectory="$jars" -DincludeScope=runtime >&2)
  touch "$jars/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local watch="" tls=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --watch) watch="$2"; shift 2 ;;
      --tls) tls=1; shift ;;
      *) echo "kafka.sh: unknown option $1" >&2; exit 2 ;;
    esac
  done
  install
  local dir port cport cluster
  dir="$(mktemp -d "${TMPDIR:-/tmp}/leadscore-kafka.XXXXXX")"
  port="$(free_port)"
  cport="$(free_port)"
  while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  local tls_props="" tport=""
  if [ -n "$tls" ]; then
    tport="$(free_port)"
    while [ "$tport" = "$port" ] || [ "$tport" = "$cport" ]; do tport="$(free_port)"; done
    keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 7 \
      -dname "CN=localhost" -ext "SAN=ip:127.0.0.1,dns:localhost" \
      -keystore "$dir/broker.p12" -storetype PKCS12 -storepass leadscore -keypass leadscore \
      >/dev/null 2>&1
    keytool -exportcert -rfc -alias broker -keystore "$dir/broker.p12" -storepass leadscore \
      -file "$dir/ca.pem" >/dev/null 2>&1
    listeners="$listeners,SSL://127.0.0.1:$tport"
    protocols="$protocols,SSL:SSL"
    tls_props="ssl.keystore.location=$dir/broker.p12
ssl.keystore.type=PKCS12
ssl.keystore.password=leadscore
ssl.key.password=leadscore"
  fi
  # May begin with "-", hence --cluster-id=... below.
  cluster="$(python3 -c 'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=${listeners/,CONTROLLER:\/\/127.0.0.1:$cport/}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$dir/data
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
transaction.abort.timed.out.transaction.cleanup.interval.ms=2000
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=1000
group.classic.min.session.timeout.ms=1000
log.flush.interval.messages=9223372036854775807
$tls_props
PROPS
  cat > "$dir/log4j2.properties" <<'LOG'
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.ready.name = kafka.server.KafkaRaftServer
logger.ready.level = INFO
LOG
  local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC "-Dlog4j2.configurationFile=$dir/log4j2.properties")
  java "${java_opts[@]}" -cp "$jars/*" kafka.tools.StorageTool format \
    "--cluster-id=$cluster" -c "$dir/server.properties" > "$dir/format.log" 2>&1 || {
      cat "$dir/format.log" >&2; exit 1; }
  nohup java "${java_opts[@]}" -cp "$jars/*" kafka.Kafka "$dir/server.properties" \
    > "$dir/broker.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/pid"
  if [ -n "$watch" ]; then
    # Stop the broker when the process that asked for it is gone.
    nohup bash -c "while kill -0 $watch 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 1; done;
                   kill $pid 2>/dev/null; sleep 5; kill -9 $pid 2>/dev/null; rm -rf '$dir'" \
      > /dev/null 2>&1 &
  fi
  local waited=0
  until grep -q "Kafka Server started" "$dir/broker.log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "kafka.sh: broker exited during start-up:" >&2
      tail -n 40 "$dir/broker.log" >&2
      exit 1
    fi
    if [ "$waited" -ge 1200 ]; then
      echo "kafka.sh: broker not ready after 120 s:" >&2
      tail -n 40 "$dir/broker.log" >&2
      kill "$pid" || true
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  if [ -n "$tls" ]; then
    echo "KAFKA_TLS_BOOTSTRAP=127.0.0.1:$tport"
    echo "KAFKA_TLS_CA=$dir/ca.pem"
  fi
  echo "KAFKA_BOOTSTRAP=127.0.0.1:$port"
  echo "KAFKA_PID=$pid"
  echo "KAFKA_DIR=$dir"
}

stop() {
  local dir="$1" pid
  pid="$(cat "$dir/pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -rf "$dir"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) stop "$2" ;;
  *) echo "usage: $0 install | start [--watch PID] | stop DIR" >&2; exit 2 ;;
esac
