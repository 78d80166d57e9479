#!/usr/bin/env bash
# Runs the measurements of docs/benchmarks.md against release builds, on loopback only.
#   scripts/bench.sh memory|single|pair|five|smoke [runs]   (results appended to bench/results.jsonl)
# Starts its own broker (herald-bench broker), redis-server and herald instances on ports that
# do not clash with a developer's herald (3101.., 19092, 16390), and stops exactly those PIDs.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
BIN=target/release
OUT=${OUT:-bench/results.jsonl}
BROKER=127.0.0.1:19092
REDIS_PORT=16390
SCENARIO=${1:-smoke}
RUNS=${2:-3}
PIDS=()

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
# start_herald PORT [redis]: prints the PID.
start_herald() {
  local port=$1 redis=${2:-}
  HERALD_LISTEN=127.0.0.1:$port HERALD_KAFKA_BROKERS=$BROKER HERALD_REDIS_URL=$redis \
    "$BIN/herald" -c bench/herald.yaml run >/dev/null 2>"bench/herald-$port.log" &
  local pid=$!
  PIDS+=($pid)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  LAST_PID=$pid
}

bench() { "$BIN/herald-bench" run --brokers "$BROKER" --json "$OUT" "$@"; }

case "$SCENARIO" in
  smoke)
    start_broker; start_herald 3101
    bench --label smoke --servers 127.0.0.1:3101 --pids "$LAST_PID" --users 50 --rates 200 --secs 2 --probe --strict
    ;;
  memory)
    start_broker
    for run in $(seq 1 "$RUNS"); do
      for n in 1000 10000 19000; do
        start_herald 3101; pid=$LAST_PID
        bench --label "memory-$n" --servers 127.0.0.1:3101 --pids "$pid" --users "$n" --idle-only --settle-secs 3
        kill "$pid"; wait "$pid" 2>/dev/null || true
      done
    done
    ;;
  single)
    start_broker
    for run in $(seq 1 "$RUNS"); do
      start_herald 3101; pid=$LAST_PID
      bench --label single --servers 127.0.0.1:3101 --pids "$pid" --users 1000 --probe --rates 1000,5000,20000 --secs 5
      bench --label single-max --servers 127.0.0.1:3101 --pids "$pid" --users 1000 --rates 0 --max-count 300000 --linger-ms 5
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
    ;;
  pair)
    start_broker; start_redis
    for run in $(seq 1 "$RUNS"); do
      start_herald 3101 "redis://127.0.0.1:$REDIS_PORT"; a=$LAST_PID
      start_herald 3102 "redis://127.0.0.1:$REDIS_PORT"; b=$LAST_PID
      sleep 4 # both in the consumer group before the warm-up
      bench --label pair --servers 127.0.0.1:3101 --pids "$a,$b" --users 1000 --probe --rates 1000,5000,20000 --secs 5
      bench --label pair-max --servers 127.0.0.1:3101 --pids "$a,$b" --users 1000 --rates 0 --max-count 300000 --linger-ms 5
      kill "$a" "$b"; wait "$a" "$b" 2>/dev/null || true
    done
    ;;
  five)
    start_broker; start_redis
    servers=(); pids=()
    for i in 1 2 3 4 5; do
      start_herald $((3100 + i)) "redis://127.0.0.1:$REDIS_PORT"; servers+=("127.0.0.1:$((3100 + i))"); pids+=("$LAST_PID")
    done
    sleep 4
    for run in $(seq 1 "$RUNS"); do
      bench --label five --servers "$(IFS=,; echo "${servers[*]}")" --pids "$(IFS=,; echo "${pids[*]}")" --users 95000 \
        --rates 10000 --secs 10 --settle-secs 5 --drain-secs 15
    done
    ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 64 ;;
esac
