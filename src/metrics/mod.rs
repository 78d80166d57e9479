//! Every metric herald exports, named in one place, with pre-registered handles.
//!
//! Each running app owns its own Prometheus recorder (not the process-global one), so two
//! instances in one test process keep separate figures, and the hot path touches ready handles
//! instead of looking names up per record.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::socketio::{ProtocolError, Stats};

mod labels;

pub use labels::{AudienceKind, AuthRejection, DropReason, PerKind};

pub const SOCKETS: &str = "herald_gateway_sockets";
pub const USERS: &str = "herald_gateway_users";
pub const CONNECTIONS: &str = "herald_gateway_connections_total";
pub const AUTH_REJECTIONS: &str = "herald_gateway_auth_rejections_total";
pub const DELIVERED: &str = "herald_gateway_notifications_delivered_total";
pub const EMIT_FAILURES: &str = "herald_gateway_emit_failures_total";
pub const DELIVERY_LATENCY: &str = "herald_delivery_latency_seconds";
pub const PIPELINE_LATENCY: &str = "herald_pipeline_latency_seconds";
pub const RECORDS_CONSUMED: &str = "herald_source_records_consumed_total";
pub const RECORDS_DROPPED: &str = "herald_records_dropped_total";
pub const KAFKA_CONNECTED: &str = "herald_source_kafka_connected";
pub const KAFKA_RECONNECTS: &str = "herald_source_kafka_reconnects_total";
pub const KAFKA_DISCONNECTED: &str = "herald_source_kafka_disconnected_seconds_total";
pub const COMMIT_FAILURES: &str = "herald_source_commit_failures_total";
pub const ASSIGNED_PARTITIONS: &str = "herald_source_assigned_partitions";
pub const PUBLISHED: &str = "herald_bus_notifications_published_total";
pub const PUBLISH_RETRIES: &str = "herald_bus_publish_retries_total";
pub const RECEIVED: &str = "herald_bus_notifications_received_total";
pub const BUS_LAGGED: &str = "herald_bus_messages_lost_total";
pub const BUS_DECODE_FAILURES: &str = "herald_bus_decode_failures_total";
pub const REDIS_CONNECTED: &str = "herald_bus_redis_connected";
pub const REDIS_RECONNECTS: &str = "herald_bus_redis_reconnects_total";
pub const REDIS_DISCONNECTED: &str = "herald_bus_redis_disconnected_seconds_total";
pub const SUBSCRIPTIONS: &str = "herald_bus_subscriptions";
pub const BUILD_INFO: &str = "herald_build_info";
pub const ROUTE_RELOADS: &str = "herald_route_reloads_total";
pub const ROUTE_SPLIT_BATCHES: &str = "herald_route_split_batches_total";
pub const AUTH_CHECKS: &str = "herald_auth_check_requests_total";
pub const JWKS_FETCHES: &str = "herald_auth_jwks_fetches_total";
pub const EXPIRED_DISCONNECTS: &str = "herald_gateway_expired_disconnects_total";
pub const TOKEN_REFRESHES: &str = "herald_gateway_token_refreshes_total";
pub const LIMIT_EVICTIONS: &str = "herald_gateway_limit_evictions_total";
pub const SLOW_CLIENT_DISCONNECTS: &str = "herald_gateway_slow_client_disconnects_total";
pub const WRITE_TIMEOUTS: &str = "herald_gateway_write_timeouts_total";
pub const PROTOCOL_ERRORS: &str = "herald_gateway_protocol_errors_total";
pub const SESSIONS_OPENED: &str = "herald_gateway_sessions_opened_total";
pub const UPGRADES: &str = "herald_gateway_upgrades_total";
pub const PING_TIMEOUTS: &str = "herald_gateway_ping_timeouts_total";
pub const WEBSOCKET_WRITES: &str = "herald_gateway_websocket_writes_total";
pub const WEBSOCKET_FRAMES: &str = "herald_gateway_websocket_frames_written_total";
pub const DEAD_LETTERED: &str = "herald_source_dead_lettered_total";
pub const HANDED_OFF: &str = "herald_source_offline_handed_off_total";
pub const RECEIPTS: &str = "herald_gateway_receipts_total";
pub const REPLAYED: &str = "herald_replay_notifications_replayed_total";
pub const RETAINED_OFFLINE: &str = "herald_replay_stored_offline_total";
pub const ROUTE_SCRIPT_ERRORS: &str = "herald_route_script_errors_total";

/// The histograms among them: Prometheus shows only their `_bucket`, `_sum` and `_count` series.
pub const HISTOGRAMS: &[&str] = &[DELIVERY_LATENCY, PIPELINE_LATENCY];

/// Every metric name, for documentation checks.
pub const ALL_NAMES: &[&str] = &[
    SOCKETS,
    USERS,
    CONNECTIONS,
    AUTH_REJECTIONS,
    DELIVERED,
    EMIT_FAILURES,
    DELIVERY_LATENCY,
    PIPELINE_LATENCY,
    RECORDS_CONSUMED,
    RECORDS_DROPPED,
    KAFKA_CONNECTED,
    KAFKA_RECONNECTS,
    KAFKA_DISCONNECTED,
    COMMIT_FAILURES,
    ASSIGNED_PARTITIONS,
    PUBLISHED,
    PUBLISH_RETRIES,
    RECEIVED,
    BUS_LAGGED,
    BUS_DECODE_FAILURES,
    REDIS_CONNECTED,
    REDIS_RECONNECTS,
    REDIS_DISCONNECTED,
    SUBSCRIPTIONS,
    BUILD_INFO,
    ROUTE_RELOADS,
    ROUTE_SPLIT_BATCHES,
    ROUTE_SCRIPT_ERRORS,
    AUTH_CHECKS,
    JWKS_FETCHES,
    EXPIRED_DISCONNECTS,
    TOKEN_REFRESHES,
    LIMIT_EVICTIONS,
    SLOW_CLIENT_DISCONNECTS,
    WRITE_TIMEOUTS,
    PROTOCOL_ERRORS,
    SESSIONS_OPENED,
    UPGRADES,
    PING_TIMEOUTS,
    WEBSOCKET_WRITES,
    WEBSOCKET_FRAMES,
    REPLAYED,
    RETAINED_OFFLINE,
    DEAD_LETTERED,
    HANDED_OFF,
    RECEIPTS,
];

/// Buckets for the delivery latency histogram, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for herald's own share, in seconds: fine below a few milliseconds, where it should be.
const PIPELINE_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Handles to every metric of one running herald.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub sockets: Gauge,
    pub users: Gauge,
    pub connections: Counter,
    auth_rejections: HashMap<AuthRejection, Counter>,
    /// By audience kind.
    pub delivered: PerKind,
    pub emit_failures: Counter,
    pub delivery_latency: Histogram,
    pub pipeline_latency: Histogram,
    records_consumed: HashMap<String, Counter>,
    dropped: HashMap<DropReason, Counter>,
    /// Kafka reachability: `herald_source_kafka_connected`, reconnects, time disconnected.
    pub kafka: Outage,
    pub commit_failures: Counter,
    pub assigned_partitions: Gauge,
    /// By audience kind.
    pub published: PerKind,
    pub publish_retries: Counter,
    pub received: Counter,
    pub bus_lagged: Counter,
    pub bus_decode_failures: Counter,
    /// Redis connection: `herald_bus_redis_connected` and time disconnected (reconnects are
    /// counted from the client's own events, in `redis_reconnects`).
    pub redis: Outage,
    pub redis_reconnects: Counter,
    pub subscriptions: Gauge,
    reloads_applied: Counter,
    reloads_rejected: Counter,
    pub route_split_batches: Counter,
    pub expired_disconnects: Counter,
    pub limit_evictions: Counter,
    pub slow_client_disconnects: Counter,
    pub write_timeouts: Counter,
    pub replayed: Counter,
    pub retained_offline: Counter,
    pub handed_off: Counter,
    /// The transport's counters, copied from its [`Stats`] at each scrape.
    transport: TransportCounters,
}

/// The transport counters other than the protocol errors.
const FIXED_TRANSPORT: usize = 7;

/// The Socket.IO transport keeps plain atomics ([`Stats`]); these follow them.
struct TransportCounters {
    protocol_errors: Vec<(ProtocolError, Counter)>,
    opened_websocket: Counter,
    opened_polling: Counter,
    upgrades: Counter,
    ping_timeouts: Counter,
    websocket_writes: Counter,
    websocket_frames: Counter,
    /// The figures last copied, so `write_timeouts` (also counted by the HTTP server) gets
    /// increments rather than a value.
    last: Mutex<[u64; FIXED_TRANSPORT + ProtocolError::ALL.len()]>,
}

impl Metrics {
    /// Metrics no endpoint serves: for a dry run, tests and benchmarks, where what is counted
    /// is not looked at.
    pub fn detached() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::new(&[]))
    }

    /// Registers every metric at zero, so dashboards see them before the first event.
    pub fn new(topics: &[String]) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(PIPELINE_LATENCY.into()), PIPELINE_BUCKETS))
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        describe(r, SOCKETS, Unit::Count, "Socket.IO sockets connected to this instance.", Kind::Gauge);
        describe(r, USERS, Unit::Count, "Distinct users with at least one socket on this instance.", Kind::Gauge);
        describe(r, CONNECTIONS, Unit::Count, "Sockets accepted since start.", Kind::Counter);
        describe(r, AUTH_REJECTIONS, Unit::Count, "Connections refused at the handshake, by reason.", Kind::Counter);
        describe(
            r,
            DELIVERED,
            Unit::Count,
            "Notifications emitted to sockets (one per socket), by audience kind (user, group, broadcast).",
            Kind::Counter,
        );
        describe(r, EMIT_FAILURES, Unit::Count, "Emits that failed (socket buffer full or closed).", Kind::Counter);
        describe(r, DELIVERY_LATENCY, Unit::Seconds, "From the Kafka record timestamp to the emit on this instance.", Kind::Histogram);
        describe(
            r,
            PIPELINE_LATENCY,
            Unit::Seconds,
            "herald's own share: from the consuming instance taking the record (or the publish API accepting it) to the emit on this instance.",
            Kind::Histogram,
        );
        describe(r, RECORDS_CONSUMED, Unit::Count, "Kafka records consumed, by topic.", Kind::Counter);
        describe(r, RECORDS_DROPPED, Unit::Count, "Records or notifications not delivered to the bus, by reason.", Kind::Counter);
        describe(r, KAFKA_CONNECTED, Unit::Count, "1 while the Kafka cluster answers, else 0.", Kind::Gauge);
        describe(r, ASSIGNED_PARTITIONS, Unit::Count, "Kafka partitions assigned to this instance.", Kind::Gauge);
        describe(r, COMMIT_FAILURES, Unit::Count, "Offset stores or commits that Kafka refused.", Kind::Counter);
        describe(r, PUBLISHED, Unit::Count, "Notifications accepted by the bus, by audience kind (user, group, broadcast).", Kind::Counter);
        describe(r, PUBLISH_RETRIES, Unit::Count, "Bus publishes retried after a transient failure.", Kind::Counter);
        describe(r, RECEIVED, Unit::Count, "Notifications this instance received from the bus for its users.", Kind::Counter);
        describe(r, BUS_LAGGED, Unit::Count, "Pub/Sub messages lost because herald fell behind the Redis client buffer.", Kind::Counter);
        describe(r, BUS_DECODE_FAILURES, Unit::Count, "Bus messages that were not herald envelopes.", Kind::Counter);
        describe(r, REDIS_CONNECTED, Unit::Count, "1 while Redis is connected (absent without Redis).", Kind::Gauge);
        describe(r, REDIS_RECONNECTS, Unit::Count, "Redis reconnections.", Kind::Counter);
        describe(r, REDIS_DISCONNECTED, Unit::Seconds, "Whole seconds Redis was disconnected since it was first connected.", Kind::Counter);
        describe(r, KAFKA_RECONNECTS, Unit::Count, "Times the Kafka cluster answered again after an outage.", Kind::Counter);
        describe(r, KAFKA_DISCONNECTED, Unit::Seconds, "Whole seconds the Kafka cluster did not answer since it first did.", Kind::Counter);
        describe(
            r,
            SLOW_CLIENT_DISCONNECTS,
            Unit::Count,
            "Sockets disconnected because their send buffer was full (server.slow_client: disconnect).",
            Kind::Counter,
        );
        describe(
            r,
            WRITE_TIMEOUTS,
            Unit::Count,
            "Connections closed because the client accepted no data for server.write_timeout_ms.",
            Kind::Counter,
        );
        describe(
            r,
            PROTOCOL_ERRORS,
            Unit::Count,
            "Connections or sessions closed because the client broke HTTP, WebSocket, Engine.IO or Socket.IO rules, by kind.",
            Kind::Counter,
        );
        describe(r, SESSIONS_OPENED, Unit::Count, "Engine.IO sessions opened, by first transport (websocket, polling).", Kind::Counter);
        describe(r, UPGRADES, Unit::Count, "Long-polling sessions upgraded to WebSocket.", Kind::Counter);
        describe(r, PING_TIMEOUTS, Unit::Count, "Sessions closed because the client missed a heartbeat.", Kind::Counter);
        describe(r, WEBSOCKET_WRITES, Unit::Count, "Writes (system calls) to WebSocket connections.", Kind::Counter);
        describe(
            r,
            WEBSOCKET_FRAMES,
            Unit::Count,
            "WebSocket frames those writes completed (several per write under load).",
            Kind::Counter,
        );
        describe(
            r,
            SUBSCRIPTIONS,
            Unit::Count,
            "Bus channels (per user, per group, broadcast) this instance is subscribed to.",
            Kind::Gauge,
        );
        describe(r, ROUTE_RELOADS, Unit::Count, "Route script reloads, by result (applied, rejected).", Kind::Counter);
        describe(r, ROUTE_SPLIT_BATCHES, Unit::Count, "Batches routed in parts on several threads (routes.threads).", Kind::Counter);
        describe(
            r,
            ROUTE_SCRIPT_ERRORS,
            Unit::Count,
            "Records a route script failed on (runtime error, limit hit, bad return value), by script.",
            Kind::Counter,
        );
        describe(
            r,
            AUTH_CHECKS,
            Unit::Count,
            "User-check endpoint answers, by result (allowed, denied, unavailable, cached).",
            Kind::Counter,
        );
        describe(r, JWKS_FETCHES, Unit::Count, "JWKS fetches, by result (ok, error).", Kind::Counter);
        describe(r, EXPIRED_DISCONNECTS, Unit::Count, "Sockets disconnected because their token expired.", Kind::Counter);
        describe(r, TOKEN_REFRESHES, Unit::Count, "Token refreshes over an open socket, by result (ok, refused).", Kind::Counter);
        describe(
            r,
            LIMIT_EVICTIONS,
            Unit::Count,
            "Oldest sockets disconnected to make room under auth.max_sockets_per_user.",
            Kind::Counter,
        );
        describe(r, DEAD_LETTERED, Unit::Count, "Records produced to the dead-letter topic, by result (ok, failed).", Kind::Counter);
        describe(r, HANDED_OFF, Unit::Count, "Notifications for offline users produced to kafka.offline_topic.", Kind::Counter);
        describe(r, RECEIPTS, Unit::Count, "Receipts from clients, by result (ok, invalid, rate_limited, failed).", Kind::Counter);
        describe(r, REPLAYED, Unit::Count, "Retained notifications sent to reconnecting sockets.", Kind::Counter);
        describe(r, RETAINED_OFFLINE, Unit::Count, "Retained notifications stored for a user with no socket anywhere.", Kind::Counter);
        describe(r, BUILD_INFO, Unit::Count, "Always 1; the version label names the build.", Kind::Gauge);

        let counter = |name: &'static str, labels: Vec<Label>| r.register_counter(&Key::from_parts(name, labels), &META);
        let gauge = |name: &'static str| r.register_gauge(&Key::from_name(name), &META);
        let per_kind = |name: &'static str| PerKind(AudienceKind::ALL.map(|k| counter(name, vec![Label::new("kind", k.as_str())])));
        r.register_gauge(&Key::from_parts(BUILD_INFO, vec![Label::new("version", env!("CARGO_PKG_VERSION"))]), &META).set(1.0);
        Metrics {
            sockets: gauge(SOCKETS),
            users: gauge(USERS),
            connections: counter(CONNECTIONS, vec![]),
            auth_rejections: AuthRejection::ALL
                .iter()
                .map(|r| (*r, counter(AUTH_REJECTIONS, vec![Label::new("reason", r.as_str())])))
                .collect(),
            delivered: per_kind(DELIVERED),
            emit_failures: counter(EMIT_FAILURES, vec![]),
            delivery_latency: r.register_histogram(&Key::from_name(DELIVERY_LATENCY), &META),
            pipeline_latency: r.register_histogram(&Key::from_name(PIPELINE_LATENCY), &META),
            records_consumed: topics.iter().map(|t| (t.clone(), counter(RECORDS_CONSUMED, vec![Label::new("topic", t.clone())]))).collect(),
            dropped: DropReason::ALL.iter().map(|d| (*d, counter(RECORDS_DROPPED, vec![Label::new("reason", d.as_str())]))).collect(),
            kafka: Outage::new(gauge(KAFKA_CONNECTED), counter(KAFKA_DISCONNECTED, vec![]), Some(counter(KAFKA_RECONNECTS, vec![]))),
            commit_failures: counter(COMMIT_FAILURES, vec![]),
            assigned_partitions: gauge(ASSIGNED_PARTITIONS),
            published: per_kind(PUBLISHED),
            publish_retries: counter(PUBLISH_RETRIES, vec![]),
            received: counter(RECEIVED, vec![]),
            bus_lagged: counter(BUS_LAGGED, vec![]),
            bus_decode_failures: counter(BUS_DECODE_FAILURES, vec![]),
            redis: Outage::new(gauge(REDIS_CONNECTED), counter(REDIS_DISCONNECTED, vec![]), None),
            redis_reconnects: counter(REDIS_RECONNECTS, vec![]),
            subscriptions: gauge(SUBSCRIPTIONS),
            reloads_applied: counter(ROUTE_RELOADS, vec![Label::new("result", "applied")]),
            reloads_rejected: counter(ROUTE_RELOADS, vec![Label::new("result", "rejected")]),
            route_split_batches: counter(ROUTE_SPLIT_BATCHES, vec![]),
            expired_disconnects: counter(EXPIRED_DISCONNECTS, vec![]),
            limit_evictions: counter(LIMIT_EVICTIONS, vec![]),
            slow_client_disconnects: counter(SLOW_CLIENT_DISCONNECTS, vec![]),
            write_timeouts: counter(WRITE_TIMEOUTS, vec![]),
            replayed: counter(REPLAYED, vec![]),
            retained_offline: counter(RETAINED_OFFLINE, vec![]),
            handed_off: counter(HANDED_OFF, vec![]),
            transport: TransportCounters {
                protocol_errors: ProtocolError::ALL
                    .iter()
                    .map(|k| (*k, counter(PROTOCOL_ERRORS, vec![Label::new("kind", k.label())])))
                    .collect(),
                opened_websocket: counter(SESSIONS_OPENED, vec![Label::new("transport", "websocket")]),
                opened_polling: counter(SESSIONS_OPENED, vec![Label::new("transport", "polling")]),
                upgrades: counter(UPGRADES, vec![]),
                ping_timeouts: counter(PING_TIMEOUTS, vec![]),
                websocket_writes: counter(WEBSOCKET_WRITES, vec![]),
                websocket_frames: counter(WEBSOCKET_FRAMES, vec![]),
                last: Mutex::new([0; FIXED_TRANSPORT + ProtocolError::ALL.len()]),
            },
            recorder,
            handle,
        }
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[&reason].increment(n);
    }

    pub fn auth_rejected(&self, reason: AuthRejection) {
        self.auth_rejections[&reason].increment(1);
    }

    /// `n` records consumed from `topic`.
    pub fn consumed(&self, topic: &str, n: u64) {
        if let Some(c) = self.records_consumed.get(topic) {
            c.increment(n);
        }
    }

    pub fn reload(&self, applied: bool) {
        if applied { self.reloads_applied.increment(1) } else { self.reloads_rejected.increment(1) }
    }

    pub fn auth_check(&self, result: &'static str) {
        self.labelled(AUTH_CHECKS, "result", result).increment(1);
    }

    pub fn jwks_fetch(&self, ok: bool) {
        self.labelled(JWKS_FETCHES, "result", if ok { "ok" } else { "error" }).increment(1);
    }

    pub fn receipt(&self, result: &'static str) {
        self.labelled(RECEIPTS, "result", result).increment(1);
    }

    pub fn dead_lettered(&self, ok: bool) {
        self.labelled(DEAD_LETTERED, "result", if ok { "ok" } else { "failed" }).increment(1);
    }

    pub fn token_refresh(&self, ok: bool) {
        self.labelled(TOKEN_REFRESHES, "result", if ok { "ok" } else { "refused" }).increment(1);
    }

    /// A counter with one label whose value is a fixed word (never from client input).
    fn labelled(&self, name: &'static str, label: &'static str, value: &'static str) -> Counter {
        self.recorder.register_counter(&Key::from_parts(name, vec![Label::new(label, value)]), &META)
    }

    /// Counts a failure of the route script `route` (the script's file name).
    pub fn script_error(&self, route: &str) {
        self.route_counter(route).increment(1);
    }

    /// Makes a script's error counter visible at zero before its first error.
    pub fn register_route(&self, route: &str) {
        self.route_counter(route).increment(0);
    }

    fn route_counter(&self, route: &str) -> Counter {
        self.recorder.register_counter(&Key::from_parts(ROUTE_SCRIPT_ERRORS, vec![Label::new("route", route.to_owned())]), &META)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Brings the transport's counters up to `stats` (call before rendering).
    pub fn observe_transport(&self, stats: &Stats) {
        let t = &self.transport;
        let (websocket, polling) = stats.opened_sessions();
        let (writes, frames) = stats.writes();
        let mut now = [0u64; FIXED_TRANSPORT + ProtocolError::ALL.len()];
        now[..FIXED_TRANSPORT].copy_from_slice(&[
            websocket,
            polling,
            stats.upgrades(),
            stats.ping_timeouts(),
            stats.write_timeouts(),
            writes,
            frames,
        ]);
        for (i, (kind, _)) in t.protocol_errors.iter().enumerate() {
            now[FIXED_TRANSPORT + i] = stats.protocol_errors(*kind);
        }
        let mut last = t.last.lock().unwrap_or_else(|p| p.into_inner());
        let fixed = [
            &t.opened_websocket,
            &t.opened_polling,
            &t.upgrades,
            &t.ping_timeouts,
            &self.write_timeouts,
            &t.websocket_writes,
            &t.websocket_frames,
        ];
        let counters = fixed.into_iter().chain(t.protocol_errors.iter().map(|(_, c)| c));
        for ((counter, now), last) in counters.zip(now).zip(last.iter_mut()) {
            counter.increment(now.saturating_sub(*last));
            *last = now;
        }
    }

    /// Drains histogram buffers; run every few seconds so memory stays flat between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// How often [`Metrics::upkeep`] should run.
    pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
}

/// One dependency's connection as the metrics show it: an up gauge, the time spent disconnected
/// (a counter of whole seconds; the fraction is carried to the next observation), and
/// optionally the recoveries. Outages count only once the dependency was first up, so a slow
/// start is not reported as an outage.
pub struct Outage {
    up: Gauge,
    disconnected_secs: Counter,
    recoveries: Option<Counter>,
    state: Mutex<OutageState>,
}

#[derive(Default)]
struct OutageState {
    was_up: bool,
    down_since: Option<Instant>,
    carried: Duration,
}

impl Outage {
    fn new(up: Gauge, disconnected_secs: Counter, recoveries: Option<Counter>) -> Self {
        Self { up, disconnected_secs, recoveries, state: Mutex::default() }
    }

    /// Records the connection state seen now; call it on every check, up or down, so the time
    /// disconnected grows during an outage, not only when it ends.
    pub fn observe(&self, up: bool) {
        self.observe_at(up, Instant::now());
    }

    fn observe_at(&self, up: bool, now: Instant) {
        self.up.set(if up { 1.0 } else { 0.0 });
        let Ok(mut s) = self.state.lock() else { return };
        if let Some(since) = s.down_since.take() {
            s.carried += now.saturating_duration_since(since);
            let whole = s.carried.as_secs();
            if whole > 0 {
                self.disconnected_secs.increment(whole);
                s.carried -= Duration::from_secs(whole);
            }
            if up {
                if let Some(r) = &self.recoveries {
                    r.increment(1);
                }
            } else {
                s.down_since = Some(now);
            }
        } else if !up && s.was_up {
            s.down_since = Some(now);
        }
        s.was_up |= up;
    }
}

static META: Metadata<'static> = Metadata::new("herald", Level::INFO, Some(module_path!()));

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn describe(r: &PrometheusRecorder, name: &'static str, unit: Unit, help: &'static str, kind: Kind) {
    let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
    match kind {
        Kind::Counter => r.describe_counter(name, Some(unit), help),
        Kind::Gauge => r.describe_gauge(name, Some(unit), help),
        Kind::Histogram => r.describe_histogram(name, Some(unit), help),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_at_zero_before_any_event() {
        let m = Metrics::new(&["user-notifications".into()]);
        let text = m.render();
        // These carry a label only known at the first event (a route's file, a check's result),
        // so they appear then; every other series is there from the start.
        let on_first_event = [ROUTE_SCRIPT_ERRORS, AUTH_CHECKS, JWKS_FETCHES, TOKEN_REFRESHES, DEAD_LETTERED, RECEIPTS];
        let missing: Vec<_> =
            ALL_NAMES.iter().filter(|name| !on_first_event.contains(name) && !text.contains(&format!("\n{name}"))).collect();
        assert!(missing.is_empty(), "{missing:?} missing from:\n{text}");
        assert!(text.contains("herald_records_dropped_total{reason=\"offline\"} 0"), "{text}");
    }

    #[test]
    fn the_readme_documents_every_metric_and_drop_reason() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for name in ALL_NAMES {
            assert!(readme.contains(&format!("`{name}")), "README.md does not document {name}");
        }
        for reason in DropReason::ALL {
            assert!(readme.contains(&format!("`{}`", reason.as_str())), "README.md does not document drop reason {}", reason.as_str());
        }
    }

    #[test]
    fn an_outage_counts_its_seconds_while_it_lasts_and_one_recovery_when_it_ends() {
        let m = Metrics::new(&[]);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        m.kafka.observe_at(false, at(0)); // before the first connection: not an outage
        m.kafka.observe_at(true, at(5_000));
        m.kafka.observe_at(false, at(6_000));
        m.kafka.observe_at(false, at(7_600));
        let text = m.render();
        assert!(text.contains("herald_source_kafka_connected 0"), "{text}");
        assert!(text.contains("herald_source_kafka_disconnected_seconds_total 1"), "{text}");
        assert!(text.contains("herald_source_kafka_reconnects_total 0"), "{text}");
        m.kafka.observe_at(true, at(9_200)); // 3.2 s down in all: 3 whole seconds, 0.2 carried
        m.kafka.observe_at(false, at(10_000));
        m.kafka.observe_at(true, at(10_900)); // 0.9 s more: 1.1 s carried, 1 more second
        let text = m.render();
        assert!(text.contains("herald_source_kafka_connected 1"), "{text}");
        assert!(text.contains("herald_source_kafka_disconnected_seconds_total 4"), "{text}");
        assert!(text.contains("herald_source_kafka_reconnects_total 2"), "{text}");
    }

    #[test]
    fn counters_move() {
        let m = Metrics::new(&["t".into()]);
        m.dropped(DropReason::BadJson, 2);
        m.consumed("t", 1);
        m.consumed("unknown-topic", 1);
        let text = m.render();
        assert!(text.contains("herald_records_dropped_total{reason=\"bad_json\"} 2"), "{text}");
        assert!(text.contains("herald_source_records_consumed_total{topic=\"t\"} 1"), "{text}");
    }
}
