#!/usr/bin/env bash
# Fetch, start and stop a single-node Apache Kafka broker (KRaft mode) on 127.0.0.1
# for tests, CI and local development. Run `scripts/kafka.sh help` for the commands.
#
# Everything the script writes lives under .cache/kafka in the repository root:
#   libs/               broker jars copied by Maven from scripts/kafka/pom.xml
#   data/               the broker's log.dirs, kept across stop and start
#   server.properties   broker settings, written on every start by write_configs
#   admin.properties    client settings for the readiness check
#   broker.log          output of the storage format and the broker, appended per start
#   broker.pid          pid of the running broker
#   maven.log           output of the last install
#   kafka.lock          lock file that serializes install, start and stop
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$ROOT/scripts/kafka/pom.xml"
LOG4J_CONFIG="$ROOT/scripts/kafka/log4j2.properties"
CACHE="$ROOT/.cache/kafka"
LIBS="$CACHE/libs"
INSTALL_MARKER="$LIBS/.vistream-installed"
DATA="$CACHE/data"
SERVER_CONFIG="$CACHE/server.properties"
ADMIN_CONFIG="$CACHE/admin.properties"
BROKER_LOG="$CACHE/broker.log"
PID_FILE="$CACHE/broker.pid"
LOCK_FILE="$CACHE/kafka.lock"
MAVEN_LOG="$CACHE/maven.log"

PORT="${VISTREAM_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${VISTREAM_KAFKA_CONTROLLER_PORT:-19093}"
START_TIMEOUT_S="${VISTREAM_KAFKA_START_TIMEOUT_S:-60}"
STOP_TIMEOUT_S="${VISTREAM_KAFKA_STOP_TIMEOUT_S:-30}"
BROKER_LOG_MAX_BYTES=$((20 * 1024 * 1024))

# C1-only compilation and the serial collector start the JVM faster on 2 cores. C1 code
# is slower when hot, which a test broker can afford.
BROKER_JAVA_OPTS=(-Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true)
TOOL_JAVA_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dvistream.kafka.log.level=WARN)

usage() {
  cat <<EOF
Usage: scripts/kafka.sh COMMAND

Commands:
  install        Copy the Kafka jars into .cache/kafka/libs with Maven, unless present.
  start [--fresh]
                 Install if needed, then start the broker and wait until it serves
                 requests. A no-op when the broker already runs. Topics and data are
                 kept from the previous run. --fresh deletes them first.
  stop           Stop the broker: SIGTERM, then SIGKILL after the stop timeout.
  status         Exit 0 if the broker runs and serves requests, else 1.
  logs           Print the path of the broker log.

Environment:
  VISTREAM_KAFKA_PORT              PLAINTEXT listener port on 127.0.0.1 (default 19092)
  VISTREAM_KAFKA_CONTROLLER_PORT   KRaft controller port on 127.0.0.1 (default 19093)
  VISTREAM_KAFKA_FRESH=1           same as start --fresh
  VISTREAM_KAFKA_START_TIMEOUT_S   seconds start waits for the broker (default 60)
  VISTREAM_KAFKA_STOP_TIMEOUT_S    seconds stop waits after SIGTERM (default 30)
  VISTREAM_KAFKA_JAVA_OPTS         extra JVM options for the broker, after the defaults
EOF
}

fail() {
  echo "kafka.sh: $*" >&2
  exit 1
}

info() {
  echo "kafka.sh: $*" >&2
}

check_settings() {
  local name value
  for name in VISTREAM_KAFKA_PORT VISTREAM_KAFKA_CONTROLLER_PORT; do
    value="${!name:-}"
    if [[ -n "$value" ]] && ! [[ "$value" =~ ^[0-9]+$ && "$value" -ge 1 && "$value" -le 65535 ]]; then
      fail "invalid $name=$value: expected a TCP port number from 1 to 65535"
    fi
  done
  if [[ "$PORT" == "$CONTROLLER_PORT" ]]; then
    fail "VISTREAM_KAFKA_PORT and VISTREAM_KAFKA_CONTROLLER_PORT are both $PORT: set them to different ports"
  fi
  if ! [[ "${VISTREAM_KAFKA_FRESH:-0}" =~ ^[01]$ ]]; then
    fail "invalid VISTREAM_KAFKA_FRESH=$VISTREAM_KAFKA_FRESH: expected 1 to delete the data on start, or 0"
  fi
  for name in VISTREAM_KAFKA_START_TIMEOUT_S VISTREAM_KAFKA_STOP_TIMEOUT_S; do
    value="${!name:-}"
    if [[ -n "$value" ]] && ! [[ "$value" =~ ^[0-9]+$ && "$value" -ge 1 ]]; then
      fail "invalid $name=$value: expected a whole number of seconds, at least 1"
    fi
  done
}

# Serialize install, start and stop across processes, for example two test sessions
# that both run `start`. The lock is released when this script exits.
take_lock() {
  mkdir -p "$CACHE"
  exec 9>"$LOCK_FILE"
  if ! flock -w 300 9; then
    fail "timed out after 300 s waiting for $LOCK_FILE, which another kafka.sh holds"
  fi
}

# --- install -------------------------------------------------------------------------

kafka_version() {
  sed -n 's|.*<kafka.version>\(.*\)</kafka.version>.*|\1|p' "$POM"
}

# The marker names the Kafka version and the pom's checksum, so any change to the pom
# triggers a new install.
expected_marker() {
  echo "kafka_2.13 $(kafka_version) pom-sha256 $(sha256sum "$POM" | cut -d' ' -f1)"
}

is_installed() {
  [[ -f "$INSTALL_MARKER" && "$(cat "$INSTALL_MARKER")" == "$(expected_marker)" ]]
}

# Check that java is 17 or newer and set JAVA_VM_VERSION, for example 17.0.15+6-Debian-1deb12u1.
require_java() {
  command -v java >/dev/null || fail "java not found on PATH: install a JDK 17 or newer (Debian package openjdk-17-jre-headless)"

  local settings version major
  settings="$(java -XshowSettings:properties -version 2>&1)"
  version="$(sed -n 's/^ *java.specification.version = //p' <<<"$settings")"
  major="${version%%.*}"
  if ! [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]]; then
    fail "java on PATH is version ${version:-unknown}, but Kafka $(kafka_version) needs Java 17 or newer"
  fi
  JAVA_VM_VERSION="$(sed -n 's/^ *java.vm.version = //p' <<<"$settings")"
}

install_libs() {
  if is_installed; then
    return 0
  fi
  if broker_pid >/dev/null; then
    fail "the jars in $LIBS are outdated but the broker runs from them: run 'scripts/kafka.sh stop' first"
  fi
  command -v mvn >/dev/null || fail "mvn not found on PATH: install Maven (Debian package maven)"
  require_java

  # Copy into a new folder and swap it in whole, so an interrupted install never
  # leaves a mix of old and new jars on the class path.
  local staging="$LIBS.staging"
  rm -rf "$staging"
  info "installing Kafka $(kafka_version) jars into $LIBS with Maven"
  if ! mvn -B -ntp -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -Dkafka.libs.dir="$staging" >"$MAVEN_LOG" 2>&1; then
    tail -n 40 "$MAVEN_LOG" >&2
    fail "Maven failed to copy the Kafka jars of $POM. Its output is in $MAVEN_LOG"
  fi
  expected_marker >"$staging/.vistream-installed"
  rm -rf "$LIBS"
  mv "$staging" "$LIBS"
}

# --- process checks ------------------------------------------------------------------

# Print the PLAINTEXT port of the running broker, from the server.properties it was started with.
running_port() {
  sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9]*\)$|\1|p' "$SERVER_CONFIG" 2>/dev/null
}

# Print the broker's pid and return 0 if the pid file names a live broker started with
# this repository's server.properties. A reused pid or a zombie does not count.
broker_pid() {
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  is_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $SERVER_CONFIG" || return 1
  echo "$pid"
}

is_alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != "Z" ]]
}

is_port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Send a metadata request through the admin client (TopicCommand --list). Kafka 4.4
# processes requests only after the controller has unfenced the broker, so success means
# that clients can use it.
is_serving() {
  local port="$1" timeout_s="$2"
  timeout "$timeout_s" java "${TOOL_JAVA_OPTS[@]}" -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
    -cp "$LIBS/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$port" --command-config "$ADMIN_CONFIG" --list \
    >/dev/null 2>&1
}

# --- start ---------------------------------------------------------------------------

write_configs() {
  cat >"$SERVER_CONFIG" <<EOF
# scripts/kafka.sh writes this file on each start, so edits are lost.
node.id=1
process.roles=broker,controller
# A static voter set, so the data folder stays valid when the controller port changes.
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA

# One broker, so every internal topic has one replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions make the first consumer group and transaction start faster.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1

num.partitions=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
EOF

  # Bounds each readiness check, which otherwise waits up to the admin client's 60 s default.
  cat >"$ADMIN_CONFIG" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

new_cluster_id() {
  # A Kafka cluster id is 16 random bytes in URL-safe base64 without padding. Kafka's
  # own generator also avoids ids that start with '-', which look like an option.
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    [[ "$id" != -* ]] && break
  done
  echo "$id"
}

format_storage() {
  if [[ -f "$DATA/meta.properties" ]]; then
    return 0
  fi

  # A data folder without meta.properties is left over from a failed format.
  rm -rf "$DATA"
  local cluster_id
  cluster_id="$(new_cluster_id)"
  info "formatting $DATA with cluster id $cluster_id"
  if ! java "${TOOL_JAVA_OPTS[@]}" -Dlog4j2.configurationFile="$LOG4J_CONFIG" -cp "$LIBS/*" \
      kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$SERVER_CONFIG" \
      >>"$BROKER_LOG" 2>&1; then
    print_log_tail
    fail "formatting the storage in $DATA failed. The broker log is $BROKER_LOG"
  fi
}

rotate_log() {
  if [[ -f "$BROKER_LOG" ]] && (($(stat -c %s "$BROKER_LOG") > BROKER_LOG_MAX_BYTES)); then
    mv -f "$BROKER_LOG" "$BROKER_LOG.1"
  fi
}

check_ports_free() {
  local port
  for port in "$PORT" "$CONTROLLER_PORT"; do
    if is_port_open "$port"; then
      fail "port $port on 127.0.0.1 is in use by another process: stop it, or set VISTREAM_KAFKA_PORT and VISTREAM_KAFKA_CONTROLLER_PORT to free ports"
    fi
  done
}

# Launch kafka.Kafka in its own session, so that Ctrl-C in the terminal or the end of the
# calling process does not stop it, and print its pid.
start_broker() {
  local cds_opts=(-Xlog:cds=off -Xlog:cds+dynamic=off)
  if [[ -f "$(cds_archive)" ]]; then
    cds_opts+=(-XX:SharedArchiveFile="$(cds_archive)")
  else
    # The JVM writes the archive when the broker exits. stop_broker moves it into place
    # only after a clean exit, because a broker killed during the write may leave a truncated file.
    rm -f "$LIBS"/broker-*.jsa "$LIBS"/broker-*.jsa.pending
    cds_opts+=(-XX:ArchiveClassesAtExit="$(cds_archive).pending")
  fi

  # shellcheck disable=SC2086  # VISTREAM_KAFKA_JAVA_OPTS is a list of words.
  setsid java "${BROKER_JAVA_OPTS[@]}" "${cds_opts[@]}" ${VISTREAM_KAFKA_JAVA_OPTS:-} \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" -cp "$LIBS/*" \
    kafka.Kafka "$SERVER_CONFIG" </dev/null >>"$BROKER_LOG" 2>&1 9>&- &
  echo $!
}

# Print the path of the class-data-sharing archive of the classes the broker loads. With it
# `start` takes about 1.7 s in place of 2.9 s (OpenJDK 17.0.15, idle 2-core machine). An
# archive works only with the JVM build that wrote it, so its name contains the JVM version.
cds_archive() {
  echo "$LIBS/broker-${JAVA_VM_VERSION//[^A-Za-z0-9._-]/_}.jsa"
}

print_log_tail() {
  echo "--- last 40 lines of $BROKER_LOG ---" >&2
  tail -n 40 "$BROKER_LOG" >&2 || true
  echo "--- end of $BROKER_LOG ---" >&2
}

# Stop a broker that failed to start, so that no half-started broker keeps the ports,
# then print the end of its log and exit.
fail_start() {
  stop_broker
  print_log_tail
  fail "$1. The broker log is $BROKER_LOG"
}

# Wait until the broker serves a metadata request. Fail early if it exits.
wait_until_serving() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT_S))

  while ! is_port_open "$PORT"; do
    if ! is_alive "$pid"; then
      fail_start "the broker (pid $pid) exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      fail_start "timed out after $START_TIMEOUT_S s waiting for port $PORT to open. Raise VISTREAM_KAFKA_START_TIMEOUT_S if the machine is slow"
    fi
    sleep 0.1
  done

  while ! is_serving "$PORT" "$((deadline - SECONDS > 1 ? deadline - SECONDS : 1))"; do
    if ! is_alive "$pid"; then
      fail_start "the broker (pid $pid) exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      fail_start "timed out after $START_TIMEOUT_S s waiting for the broker on 127.0.0.1:$PORT to respond to a metadata request. Raise VISTREAM_KAFKA_START_TIMEOUT_S if the machine is slow"
    fi
    sleep 0.5
  done
}

cmd_start() {
  local fresh="${VISTREAM_KAFKA_FRESH:-0}" pid
  case "${1:-}" in
    "") ;;
    --fresh) fresh=1 ;;
    *) fail "unknown option for start: $1 (expected --fresh)" ;;
  esac

  take_lock
  if [[ "$fresh" == 1 ]]; then
    stop_broker
    info "deleting $DATA because of --fresh"
    rm -rf "$DATA"
    : >"$BROKER_LOG"
  elif pid="$(broker_pid)"; then
    if [[ "$(running_port)" != "$PORT" ]]; then
      fail "the broker already runs (pid $pid) on 127.0.0.1:$(running_port), not on port $PORT: run 'scripts/kafka.sh stop' first"
    fi
    info "the broker already runs (pid $pid) on 127.0.0.1:$PORT"
    return 0
  fi

  install_libs
  require_java
  check_ports_free
  rotate_log
  echo "==== kafka.sh start at $(date -u +%Y-%m-%dT%H:%M:%SZ) ====" >>"$BROKER_LOG"
  write_configs
  format_storage

  pid="$(start_broker)"
  echo "$pid" >"$PID_FILE"
  wait_until_serving "$pid"
  info "the broker runs (pid $pid) on 127.0.0.1:$PORT and logs to $BROKER_LOG"
}

# --- stop ----------------------------------------------------------------------------

wait_for_exit() {
  local pid="$1" timeout_s="$2" deadline
  deadline=$((SECONDS + timeout_s))
  while is_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 0.1
  done
}

stop_broker() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    return 0
  fi

  info "stopping the broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if wait_for_exit "$pid" "$STOP_TIMEOUT_S"; then
    keep_cds_archive
  else
    info "the broker (pid $pid) did not exit within $STOP_TIMEOUT_S s of SIGTERM, so kafka.sh sends SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for_exit "$pid" 10 || fail "the broker (pid $pid) is still alive 10 s after SIGKILL"
    rm -f "$LIBS"/broker-*.jsa.pending
  fi
  rm -f "$PID_FILE"
}

# Move the archive that a cleanly stopped broker wrote into place for the next start.
keep_cds_archive() {
  local pending
  for pending in "$LIBS"/broker-*.jsa.pending; do
    if [[ -f "$pending" ]]; then
      mv -f "$pending" "${pending%.pending}"
    fi
  done
}

cmd_stop() {
  take_lock
  if ! broker_pid >/dev/null; then
    info "the broker is not running"
  fi
  stop_broker
}

# --- status and logs -----------------------------------------------------------------

cmd_status() {
  local pid port
  if ! pid="$(broker_pid)"; then
    info "the broker is not running"
    return 1
  fi
  port="$(running_port)"
  if ! is_serving "$port" 15; then
    info "the broker runs (pid $pid) but did not respond to a metadata request on 127.0.0.1:$port within 15 s. The broker log is $BROKER_LOG"
    return 1
  fi
  info "the broker runs (pid $pid) and serves 127.0.0.1:$port"
}

main() {
  local command="${1:-help}"
  shift || true
  check_settings

  case "$command" in
    install)
      take_lock
      install_libs
      info "Kafka $(kafka_version) jars are in $LIBS"
      ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) echo "$BROKER_LOG" ;;
    help | -h | --help) usage ;;
    *)
      usage >&2
      fail "unknown command: $command"
      ;;
  esac
}

main "$@"
