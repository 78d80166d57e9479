#!/usr/bin/env bash
# Runs the measurements of docs/benchmarks.md against release builds, on loopback only.
#   scripts/bench.sh memory|memory-moved|memory-polling|single|single-max|pair|pair-max|cluster-max|forward|move|deflate|trace|trace-split|ab|ab-pair|overload|five|broadcast|group|scale|smoke|profile|profile-single [runs]
# (results appended to $OUT, bench/results.jsonl by default)
# Starts its own broker (herald-bench broker), redis-server and herald instances on ports that
# do not clash with a developer's herald (3101.., 19092, 16390), and stops exactly those PIDs.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
BIN=target/release
# The herald under test; another build can be measured with this tree's herald-bench
# (HERALD=../other/target/release/herald), as docs/benchmarks.md's before/after rows were.
HERALD=${HERALD:-$BIN/herald}
CONFIG=${CONFIG:-bench/herald.yaml}
OUT=${OUT:-bench/results.jsonl}
BROKER=127.0.0.1:19092
REDIS_PORT=16390
SCENARIO=${1:-smoke}
RUNS=${2:-3}
PIDS=()
for built in "$HERALD" "$BIN/herald-bench"; do
  [ -x "$built" ] || { echo "no $built: build it first (nice cargo build --release --workspace)" >&2; exit 2; }
done

cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap cleanup EXIT

start_broker() {
  "$BIN/herald-bench" broker --listen "$BROKER" --max-secs 3600 >/dev/null &
  PIDS+=($!)
  sleep 1
}
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
  PIDS+=($!)
  sleep 0.5
}
# A three-master Redis Cluster on 16391-16393 (cluster bus on +10000), joined and checked.
start_cluster() {
  local dir
  dir=$(mktemp -d)
  for port in 16391 16392 16393; do
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --cluster-enabled yes \
      --cluster-config-file "$dir/nodes-$port.conf" --dir "$dir" >/dev/null &
    PIDS+=($!)
  done
  sleep 0.5
  redis-cli --cluster create 127.0.0.1:16391 127.0.0.1:16392 127.0.0.1:16393 --cluster-yes >/dev/null
  for _ in $(seq 1 100); do
    ok=1
    for port in 16391 16392 16393; do redis-cli -p "$port" cluster info | grep -q cluster_state:ok || ok=0; done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
}
# start_herald PORT [redis]: prints the PID.
start_herald() {
  local port=$1 redis=${2:-}
  HERALD_LISTEN=127.0.0.1:$port HERALD_KAFKA_BROKERS=$BROKER HERALD_REDIS_URL=$redis \
    "$HERALD" -c "$CONFIG" run >/dev/null 2>"bench/herald-$port.log" &
  local pid=$!
  PIDS+=($pid)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  LAST_PID=$pid
}

# Where notifications went, per instance: published, received, delivered, and every loss counter.
loss_counters() {
  for s in "${SERVERS[@]}"; do
    curl -fs "http://$s/metrics" | grep -E '^herald_(gateway_emit_failures|gateway_notifications_delivered|gateway_websocket_|bus_notifications_(published|received)|records_dropped)' | sed "s/^/$s /" || true
  done
}

bench() { "$BIN/herald-bench" run --brokers "$BROKER" --json "$OUT" "$@"; }

# Every measurement gets a fresh broker (and Redis and herald): the mock cluster scans its log
# linearly, so a broker that already holds hundreds of thousands of records slows down.
fresh() { # fresh INSTANCES [redis]
  cleanup
  start_broker
  local url=""
  if [ "${2:-}" = redis ]; then start_redis; url="redis://127.0.0.1:$REDIS_PORT"; fi
  if [ "${2:-}" = cluster ]; then start_cluster; url="redis-cluster://127.0.0.1:16391?node=127.0.0.1:16392&node=127.0.0.1:16393"; fi
  SERVERS=(); HPIDS=()
  for i in $(seq 1 "$1"); do
    start_herald $((3100 + i)) "$url"; SERVERS+=("127.0.0.1:$((3100 + i))"); HPIDS+=("$LAST_PID")
  done
  [ "$1" -gt 1 ] && sleep 4 # every instance in the consumer group before the warm-up
  PIDLIST=$(IFS=,; echo "${HPIDS[*]}")
  return 0
}

case "$SCENARIO" in
  smoke)
    fresh 1
    bench --label smoke --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 50 --rates 200 --secs 2 --probe --strict
    ;;
  memory)
    for run in $(seq 1 "$RUNS"); do
      for n in ${SIZES:-1000 10000 19000}; do
        fresh 1
        bench --label "memory-$n" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users "$n" --idle-only --settle-secs 3
      done
    done
    ;;
  memory-moved)
    # Idle WebSockets on the second of two instances with Redis: opened there directly
    # (memory-redis), or opened over long-polling on the first and moved to the second with their
    # upgrade (memory-moved, issue #27). Memory per connection on the second; interleaved.
    for run in $(seq 1 "$RUNS"); do
      for n in ${SIZES:-1000 10000}; do
        fresh 2 redis
        bench --label "memory-redis-$n" --servers "${SERVERS[1]}" --pids "${HPIDS[1]}" --users "$n" --idle-only --settle-secs "${SETTLE:-3}"
        fresh 2 redis
        bench --label "memory-moved-$n" --servers "${SERVERS[1]}" --open-on "${SERVERS[0]}" --pids "${HPIDS[1]}" --users "$n" \
          --idle-only --settle-secs "${SETTLE:-3}"
      done
    done
    ;;
  deflate)
    # permessage-deflate (issue #24), interleaved with the same runs without it: idle memory per
    # WebSocket at 10,000 connections, then the single-max burst with ~2 KiB notifications (above
    # the 1 KiB threshold) and with the short ones (below it), each with clients that offer the
    # extension and clients that do not.
    for run in $(seq 1 "$RUNS"); do
      for variant in plain deflate; do
        flag=""; [ "$variant" = deflate ] && flag="--deflate"
        fresh 1
        bench --label "memory-$variant-10000" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 10000 --idle-only --settle-secs 3 $flag
        fresh 1
        # 30,000 records (60 MB): the mock broker scans its log linearly, and fetches from a
        # larger one slow down enough to stall the burst.
        bench --label "single-max-2k-$variant" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 30000 \
          --linger-ms 5 --payload-bytes 2048 --drain-secs 20 $flag
        fresh 1
        bench --label "single-max-short-$variant" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 100000 \
          --linger-ms 5 $flag
      done
    done
    ;;
  trace)
    # Traces (issue #24): the single-max and pair-max bursts, interleaved: `before` (the herald of
    # HERALD_BEFORE, a build without tracing), `off` (export off, plain records), `propagate`
    # (export off, every record with a traceparent, which then travels to the clients) and
    # `sampled` (exporting to a local OTLP sink, 1% of the plain records traced).
    SINK_PORT=14318
    for run in $(seq 1 "$RUNS"); do
      for scen in single pair; do
        n=1; bus=""; [ "$scen" = pair ] && { n=2; bus=redis; }
        for variant in before off propagate sampled; do
          if [ "$variant" = before ] && [ -z "${HERALD_BEFORE:-}" ]; then continue; fi
          flag=""; [ "$variant" = propagate ] && flag="--traceparent"
          # The herald instances read these as they start.
          if [ "$variant" = sampled ]; then
            export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$SINK_PORT OTEL_TRACES_SAMPLER_ARG=0.01
          else
            unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_TRACES_SAMPLER_ARG
          fi
          SAVED=$HERALD
          if [ "$variant" = before ]; then HERALD=$HERALD_BEFORE; fi
          fresh $n $bus
          HERALD=$SAVED
          if [ "$variant" = sampled ]; then python3 scripts/otlp_sink.py "$SINK_PORT" & PIDS+=($!); fi
          bench --label "$scen-max-trace-$variant" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 \
            --max-count 200000 --linger-ms 5 $flag
        done
      done
    done
    ;;
  trace-split)
    # Where the cost of records that carry a traceparent goes (issue #24), interleaved: `off`
    # (no header), `header` (a header herald does not read, x-request-id, as long as a
    # traceparent) and `propagate` (a traceparent, which herald carries to the clients); export
    # off. With HERALD_BEFORE (a build without tracing) also `before-off` and `before-header`.
    variants="off header propagate"
    [ -n "${HERALD_BEFORE:-}" ] && variants="before-off before-header $variants"
    for run in $(seq 1 "$RUNS"); do
      for scen in single pair; do
        n=1; bus=""; [ "$scen" = pair ] && { n=2; bus=redis; }
        for variant in $variants; do
          flag=""
          case "$variant" in *header) flag="--other-header" ;; propagate) flag="--traceparent" ;; esac
          SAVED=$HERALD
          case "$variant" in before-*) HERALD=$HERALD_BEFORE ;; esac
          fresh $n $bus
          HERALD=$SAVED
          bench --label "$scen-max-trace-$variant" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 \
            --max-count 200000 --linger-ms 5 $flag
        done
      done
    done
    ;;
  ab|ab-pair)
    # A build against this one (HERALD_BEFORE), interleaved: idle memory per WebSocket at
    # 10,000 connections, the single-max and the pair-max bursts; labels end -before / -after
    # (issue #25: the per-core flushers, the inline first frame, the copied broadcast walk).
    # `ab-pair` runs the pair-max burst alone, for more pairs where `ab` leaves the
    # two-instance figure in doubt. ORDER="after before" runs each pair the other way round, to
    # tell a difference of builds from one of going second.
    parts="memory single pair"; [ "$SCENARIO" = ab-pair ] && parts=pair
    for run in $(seq 1 "$RUNS"); do
      for variant in ${ORDER:-before after}; do
        SAVED=$HERALD
        if [ "$variant" = before ]; then HERALD=${HERALD_BEFORE:?set HERALD_BEFORE to the other build}; fi
        for part in $parts; do
          case "$part" in
            memory)
              fresh 1
              bench --label "memory-10000-$variant" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 10000 --idle-only --settle-secs 3 ;;
            single)
              fresh 1
              bench --label "single-max-$variant" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 200000 --linger-ms 5 ;;
            pair)
              fresh 2 redis
              bench --label "pair-max-$variant" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 200000 --linger-ms 5 ;;
          esac
        done
        HERALD=$SAVED
      done
    done
    ;;
  memory-polling)
    # Idle long-polling sessions: each holds two connections (a waiting GET, a keep-alive for
    # POSTs), so at most ~9,000 per herald process (20,000 open files).
    for run in $(seq 1 "$RUNS"); do
      for n in ${SIZES:-1000 5000}; do
        fresh 1
        bench --label "memory-polling-$n" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users "$n" --idle-only --settle-secs 3 --polling --per-worker 4500
      done
    done
    ;;
  single|pair)
    n=1; bus=""; [ "$SCENARIO" = pair ] && { n=2; bus=redis; }
    for run in $(seq 1 "$RUNS"); do
      fresh $n $bus
      bench --label "$SCENARIO" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --probe --rates 1000,5000,10000 --secs 5 --linger-ms 1
      fresh $n $bus
      bench --label "$SCENARIO-max" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 200000 --linger-ms 5
    done
    ;;
  single-max)
    # Only the burst of the single scenario: 200,000 records as fast as they go, in-process bus.
    for run in $(seq 1 "$RUNS"); do
      fresh 1
      bench --label single-max --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 200000 --linger-ms 5
      loss_counters
    done
    ;;
  pair-max)
    # Only the burst of the pair scenario: 200,000 records as fast as they go, 2 instances + Redis.
    for run in $(seq 1 "$RUNS"); do
      fresh 2 redis
      bench --label pair-max --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 200000 --linger-ms 5
      loss_counters
    done
    ;;
  cluster-max)
    # The pair burst on a three-master Redis Cluster (sharded Pub/Sub): 200,000 records, 2 instances.
    for run in $(seq 1 "$RUNS"); do
      fresh 2 cluster
      bench --label cluster-max --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 200000 --linger-ms 5
      loss_counters
    done
    ;;
  forward)
    # A long-polling round trip (POST of an event with an ack, GET of the ack) sent to the
    # instance holding the session, or to the other, which forwards it over Redis (issue #27).
    for run in $(seq 1 "$RUNS"); do
      fresh 2 redis
      OUT=${FORWARD_OUT:-bench/results-forward.jsonl} python3 scripts/forward_bench.py "http://${SERVERS[0]}" "http://${SERVERS[1]}" "$REDIS_PORT" bench-secret-not-for-production "${ROUNDS:-1000}"
    done
    ;;
  move)
    # A WebSocket upgrade to the instance holding its session, or to another, which moves the
    # session there over Redis (issue #27).
    for run in $(seq 1 "$RUNS"); do
      fresh 2 redis
      OUT=${MOVE_OUT:-bench/results-move.jsonl} python3 scripts/move_bench.py "http://${SERVERS[0]}" "http://${SERVERS[1]}" "$REDIS_PORT" bench-secret-not-for-production "${ROUNDS:-300}"
    done
    ;;
  overload)
    # The pair burst to 50 users (4,000 records each), 5 of them connected but never reading: their
    # notifications fill herald's per-socket queues and are dropped there (counted); the others
    # must lose nothing, and RSS after the burst shows memory stays bounded.
    for run in $(seq 1 "$RUNS"); do
      fresh 2 redis
      bench --label overload --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 50 --stalled 5 --rates 0 --max-count 200000 \
        --linger-ms 5 --drain-secs 5
      loss_counters
    done
    ;;
  five)
    for run in $(seq 1 "$RUNS"); do
      fresh 5 redis
      bench --label five --servers "$(IFS=,; echo "${SERVERS[*]}")" --pids "$PIDLIST" --users 95000 \
        --rates 10000 --secs 10 --settle-secs 5 --drain-secs 15
    done
    ;;
  profile|profile-single)
    # perf profile during an as-fast-as-possible run (pair: both instances and Redis; single: one
    # instance, in-process bus); then the loss counters. PROFILE_FLAGS: more herald-bench flags
    # (--traceparent, --other-header, --payload-bytes 2048 ...).
    if [ "$SCENARIO" = profile ]; then fresh 2 redis; label=profile-pair-max; else fresh 1; label=profile-single-max; fi
    perf record -F ${PERF_HZ:-499} -g -o bench/perf.data -p "$PIDLIST" -- sleep 25 >/dev/null 2>&1 &
    perf_pid=$!
    bench --label "$label" --servers "${SERVERS[0]}" --pids "$PIDLIST" --users 1000 --rates 0 --max-count 200000 --linger-ms 5 ${PROFILE_FLAGS:-}
    wait "$perf_pid" || true
    loss_counters
    perf report -i bench/perf.data --no-children --sort dso,symbol -g none --stdio 2>/dev/null | grep -v "^#" | grep -v "^$" | head -40 > "bench/perf-top-$label.txt" || true
    ;;
  broadcast|group|scale)
    # Fan-out (issue #25), with bench/herald-fanout.yaml and Redis: per record, the time from
    # produce to the first and to the last socket, herald CPU per delivered notification, lost
    # and duplicated (herald-bench fanout). broadcast: 5 instances x 19,000 sockets, one
    # broadcast a second for 30 s. group: the same sockets, a 10,000-member group spread over
    # them, 10 group records a second for 30 s. scale: 10 instances x 19,000 (190,000), one
    # per-user record to every user, then 10 broadcasts 2 s apart.
    CONFIG=bench/herald-fanout.yaml
    OUT=${FANOUT_OUT:-bench/results-fanout-scale.jsonl}
    for run in $(seq 1 "$RUNS"); do
      case "$SCENARIO" in
        broadcast) fresh 5 redis; args=(--audience broadcast --records 30 --rate 1) ;;
        group) fresh 5 redis; args=(--audience group --group-members 10000 --records 300 --rate 10) ;;
        scale) fresh 10 redis; args=(--audience broadcast --records 10 --rate 0.5 --per-user-rate 10000) ;;
      esac
      "$BIN/herald-bench" fanout --brokers "$BROKER" --json "$OUT" --label "$SCENARIO" \
        --servers "$(IFS=,; echo "${SERVERS[*]}")" --pids "$PIDLIST" --users $((19000 * ${#SERVERS[@]})) "${args[@]}"
      loss_counters
    done
    ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 64 ;;
esac
