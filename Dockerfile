# herald: Kafka -> Rhai route -> Redis Pub/Sub -> Socket.IO.
#
#   docker build -t herald .
#   docker run -p 3000:3000 -e HERALD_KAFKA_BROKERS=kafka:9092 -e HERALD_REDIS_URL=redis://redis:6379 \
#     -e HERALD_JWT_SECRET=... herald
#
# The config and the route scripts live in /etc/herald: mount your own over them
# (-v ./my-config.yaml:/etc/herald/config.yaml:ro -v ./routes:/etc/herald/routes:ro). Script paths
# in the config are relative to the config file, so routes/ must stay next to it.

# ---------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# `--build-arg FEATURES=oidc`: Kafka OAUTHBEARER tokens fetched by librdkafka from an OIDC
# provider (Confluent Cloud), which links libcurl (build and run time). Empty by default.
ARG FEATURES=""

# rdkafka (feature `ssl`) builds librdkafka from source with its ./configure script (no cmake)
# and links the system OpenSSL and zlib; the rust image already has gcc, make and bash.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config zlib1g-dev \
 && if [ -n "$FEATURES" ]; then apt-get install -y --no-install-recommends libcurl4-openssl-dev; fi \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependencies change far less often than herald's code: build them against stub sources first so
# this layer (librdkafka, aws-lc, rhai... most of the build time) is reused until Cargo.lock
# changes. Every workspace member's manifest is needed to load the workspace, and a stub for each
# target a manifest declares ([[bench]]), or cargo refuses it.
COPY Cargo.toml Cargo.lock ./
COPY crates/socketio/Cargo.toml ./crates/socketio/
COPY crates/herald-bench/Cargo.toml ./crates/herald-bench/
RUN mkdir -p src benches crates/socketio/src crates/socketio/benches crates/herald-bench/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs crates/socketio/src/lib.rs \
 && echo 'fn main() {}' > crates/herald-bench/src/main.rs \
 && echo 'fn main() {}' > benches/route.rs \
 && echo 'fn main() {}' > benches/retention.rs \
 && echo 'fn main() {}' > benches/trace.rs \
 && echo 'fn main() {}' > crates/socketio/benches/deflate.rs \
 && echo 'fn main() {}' > crates/socketio/benches/send_path.rs \
 && cargo build --release --locked --bin herald --features "$FEATURES" \
 && rm -rf src benches crates

COPY src ./src
COPY benches ./benches
COPY crates ./crates
# Compiled in with include_str!: the demo page (its socket.io-client bundle comes from the
# demo-bundle stage below) and the publish API's OpenAPI description.
COPY demo/index.html demo/demo.js ./demo/
COPY docs/openapi.yaml ./docs/
# COPY keeps the files' original mtimes, which can be older than the stub build: touch them so
# cargo sees the crate as changed and does not ship the stub binary.
RUN touch src/main.rs src/lib.rs crates/socketio/src/lib.rs \
 && cargo build --release --locked --bin herald --features "$FEATURES" \
 && cp target/release/herald /usr/local/bin/herald

# ---------------------------------------------------------------------------------------------
# The socket.io-client browser bundle for the demo page (demo.enabled), from the lockfile.
FROM node:20-bookworm-slim AS demo-bundle
WORKDIR /demo
COPY demo/package.json demo/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim
ARG FEATURES=""

# Runtime libraries only: libssl3 and zlib1g for librdkafka (linked dynamically),
# ca-certificates for TLS to Kafka (ssl.*) and Redis (rediss://).
# HEALTHCHECK needs an HTTP client and herald has no "probe" command. wget over curl: on
# bookworm-slim its dependencies (GnuTLS, libidn2, PCRE2) are already installed for apt, so it
# adds about 1 MB, while curl pulls in libcurl with Kerberos, LDAP, SSH and RTMP libraries.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 zlib1g ca-certificates wget \
 && if [ -n "$FEATURES" ]; then apt-get install -y --no-install-recommends libcurl4; fi \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid herald --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin herald

COPY --from=builder /usr/local/bin/herald /usr/local/bin/herald
# Root-owned and read-only for the herald user: the process only reads its config and scripts.
COPY config.yaml /etc/herald/config.yaml
COPY routes /etc/herald/routes
# Where demo.client_bundle points by default, relative to the config.
COPY --from=demo-bundle /demo/node_modules/socket.io-client/dist/socket.io.min.js \
     /etc/herald/demo/node_modules/socket.io-client/dist/socket.io.min.js

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /etc/herald
# So the other subcommands find the config too when CMD is replaced:
# `docker run --rm -i herald route --topic user-notifications < record.json`.
ENV HERALD_CONFIG=/etc/herald/config.yaml

EXPOSE 3000

# Liveness only (/healthz answers while the process runs). /readyz also needs Kafka and Redis,
# which is the orchestrator's readiness question, not a reason to call the container unhealthy.
# The port is the image default; change it here too if you set HERALD_LISTEN. --no-proxy keeps
# an inherited http_proxy from catching a loopback request.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["wget", "--quiet", "--no-proxy", "--tries=1", "--output-document=/dev/null", "http://127.0.0.1:3000/healthz"]

# herald drains records in flight, commits offsets and closes sockets on SIGTERM
# (server.shutdown_grace_secs). Exec form makes herald PID 1, so the signal reaches it directly;
# herald installs its own SIGTERM/SIGINT handlers, so PID 1's default-ignore does not apply.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["--config", "/etc/herald/config.yaml"]
