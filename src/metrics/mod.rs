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

use socketio::{Cutoff, ProtocolError, Stats};

mod labels;

pub use labels::{AudienceKind, ByLabel, LabelValue, PerKind};

/// One exported metric: its name, type, unit and help text, written only here.
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

/// How Prometheus shows a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Shown only as its `_bucket`, `_sum` and `_count` series.
    Histogram,
}

/// Declares each metric once: a name constant for the code that registers its handle, and its
/// row in [`CATALOG`], which describes it to the recorder and is what the docs are checked against.
macro_rules! catalog {
    ($($ident:ident = $name:literal, $kind:ident, $unit:ident, $help:literal;)*) => {
        $(pub const $ident: &str = $name;)*
        /// Every metric herald exports.
        pub const CATALOG: &[Spec] = &[$(Spec { name: $name, kind: Kind::$kind, unit: Unit::$unit, help: $help }),*];
    };
}

catalog! {
    SOCKETS = "herald_gateway_sockets", Gauge, Count,
        "Socket.IO sockets connected to this instance.";
    USERS = "herald_gateway_users", Gauge, Count,
        "Distinct users with at least one socket on this instance.";
    CONNECTIONS = "herald_gateway_connections_total", Counter, Count,
        "Sockets accepted since start.";
    AUTH_REJECTIONS = "herald_gateway_auth_rejections_total", Counter, Count,
        "Connections refused at the handshake, by reason.";
    DELIVERED = "herald_gateway_notifications_delivered_total", Counter, Count,
        "Notifications emitted to sockets (one per socket), by audience kind (user, group, broadcast).";
    EMIT_FAILURES = "herald_gateway_emit_failures_total", Counter, Count,
        "Emits that failed (socket buffer full or closed).";
    DELIVERY_LATENCY = "herald_delivery_latency_seconds", Histogram, Seconds,
        "From the Kafka record timestamp to the emit on this instance.";
    PIPELINE_LATENCY = "herald_pipeline_latency_seconds", Histogram, Seconds,
        "herald's own share: from the consuming instance taking the record (or the publish API accepting it) to the emit on this instance.";
    RECORDS_CONSUMED = "herald_source_records_consumed_total", Counter, Count,
        "Kafka records consumed, by topic.";
    RECORDS_DROPPED = "herald_records_dropped_total", Counter, Count,
        "Records or notifications not delivered to the bus, by reason.";
    KAFKA_CONNECTED = "herald_source_kafka_connected", Gauge, Count,
        "1 while the Kafka cluster answers, else 0.";
    KAFKA_RECONNECTS = "herald_source_kafka_reconnects_total", Counter, Count,
        "Times the Kafka cluster answered again after an outage.";
    KAFKA_DISCONNECTED = "herald_source_kafka_disconnected_seconds_total", Counter, Seconds,
        "Whole seconds the Kafka cluster did not answer since it first did.";
    COMMIT_FAILURES = "herald_source_commit_failures_total", Counter, Count,
        "Offset stores or commits that Kafka refused.";
    ASSIGNED_PARTITIONS = "herald_source_assigned_partitions", Gauge, Count,
        "Kafka partitions assigned to this instance.";
    PUBLISHED = "herald_bus_notifications_published_total", Counter, Count,
        "Notifications accepted by the bus, by audience kind (user, group, broadcast).";
    PUBLISH_RETRIES = "herald_bus_publish_retries_total", Counter, Count,
        "Bus publishes retried after a transient failure.";
    RECEIVED = "herald_bus_notifications_received_total", Counter, Count,
        "Notifications this instance received from the bus for its users.";
    BUS_DECODE_FAILURES = "herald_bus_decode_failures_total", Counter, Count,
        "Bus messages that were not herald envelopes.";
    REDIS_CONNECTED = "herald_bus_redis_connected", Gauge, Count,
        "1 while Redis is connected (absent without Redis).";
    REDIS_RECONNECTS = "herald_bus_redis_reconnects_total", Counter, Count,
        "Redis reconnections.";
    REDIS_DISCONNECTED = "herald_bus_redis_disconnected_seconds_total", Counter, Seconds,
        "Whole seconds Redis was disconnected since it was first connected.";
    SUBSCRIPTIONS = "herald_bus_subscriptions", Gauge, Count,
        "Bus channels (per user, per group, broadcast) this instance is subscribed to.";
    BUILD_INFO = "herald_build_info", Gauge, Count,
        "Always 1; the version label names the build.";
    ROUTE_RELOADS = "herald_route_reloads_total", Counter, Count,
        "Route script reloads, by result (applied, rejected).";
    KEY_RELOADS = "herald_auth_key_reloads_total", Counter, Count,
        "Reloads of auth.jwt.public_key_file, by result (applied, rejected: the previous key stays).";
    ROUTE_SPLIT_BATCHES = "herald_route_split_batches_total", Counter, Count,
        "Batches routed in parts on several threads (routes.threads).";
    AUTH_CHECKS = "herald_auth_check_requests_total", Counter, Count,
        "User-check endpoint answers, by result (allowed, denied, unavailable, cached).";
    JWKS_FETCHES = "herald_auth_jwks_fetches_total", Counter, Count,
        "JWKS fetches, by result (ok, error).";
    EXPIRED_DISCONNECTS = "herald_gateway_expired_disconnects_total", Counter, Count,
        "Sockets disconnected because their token expired.";
    TOKEN_REFRESHES = "herald_gateway_token_refreshes_total", Counter, Count,
        "Token refreshes over an open socket, by result (ok, refused).";
    LIMIT_EVICTIONS = "herald_gateway_limit_evictions_total", Counter, Count,
        "Oldest sockets disconnected to make room under auth.max_sockets_per_user.";
    SLOW_CLIENT_DISCONNECTS = "herald_gateway_slow_client_disconnects_total", Counter, Count,
        "Sockets disconnected because their send buffer was full (server.slow_client: disconnect).";
    WRITE_TIMEOUTS = "herald_gateway_write_timeouts_total", Counter, Count,
        "Connections closed because the client accepted no data for server.write_timeout_ms.";
    SESSIONS_ENDED = "herald_gateway_sessions_ended_total", Counter, Count,
        "Sockets ended on this instance by POST /api/disconnect (through the bus).";
    REQUESTS_CUT = "herald_http_requests_cut_total", Counter, Count,
        "HTTP requests cut off before all of them arrived, by reason (head_timeout, body_timeout, answered_from_head).";
    PROTOCOL_ERRORS = "herald_gateway_protocol_errors_total", Counter, Count,
        "Connections or sessions closed because the client broke HTTP, WebSocket, Engine.IO or Socket.IO rules, by kind.";
    SESSIONS_OPENED = "herald_gateway_sessions_opened_total", Counter, Count,
        "Engine.IO sessions opened, by first transport (websocket, polling).";
    UPGRADES = "herald_gateway_upgrades_total", Counter, Count,
        "Long-polling sessions upgraded to WebSocket.";
    FORWARDED = "herald_gateway_forwarded_requests_total", Counter, Count,
        "Long-polling requests for a session another instance holds: sent there (sent), or answered here for another instance (answered).";
    WEBSOCKET_BYTES = "herald_gateway_websocket_bytes_written_total", Counter, Count,
        "Bytes written to WebSockets by the send path (notifications and every other queued frame).";
    COMPRESSION = "herald_gateway_compression_total", Counter, Count,
        "Compression (server.compression): messages compressed, each once whatever the number of sockets it went to (compressed: permessage-deflate frames and gzip long-polling responses), and compressed client messages inflated (inflated).";
    MOVED = "herald_gateway_moved_sessions_total", Counter, Count,
        "Sessions whose WebSocket upgrade reached another instance than theirs, moved there: in (taken over here), out (handed over from here), failed (the move failed on this side; the session ended and its client reconnected).";
    PING_TIMEOUTS = "herald_gateway_ping_timeouts_total", Counter, Count,
        "Sessions closed because the client missed a heartbeat.";
    WEBSOCKET_WRITES = "herald_gateway_websocket_writes_total", Counter, Count,
        "Writes (system calls) to WebSocket connections.";
    WEBSOCKET_FRAMES = "herald_gateway_websocket_frames_written_total", Counter, Count,
        "WebSocket frames those writes completed (several per write under load).";
    DEAD_LETTERED = "herald_source_dead_lettered_total", Counter, Count,
        "Dead letters produced, by result (ok; failed: not acknowledged, sent again).";
    HANDED_OFF = "herald_source_offline_handed_off_total", Counter, Count,
        "Notifications for offline users produced to kafka.offline_topic.";
    RECEIPTS = "herald_gateway_receipts_total", Counter, Count,
        "Receipts from clients, by result (ok, invalid, rate_limited, failed).";
    REPLAYED = "herald_replay_notifications_replayed_total", Counter, Count,
        "Retained notifications sent to reconnecting sockets.";
    RETAINED_OFFLINE = "herald_replay_stored_offline_total", Counter, Count,
        "Retained notifications stored for a user with no socket anywhere.";
    ROUTE_SCRIPT_ERRORS = "herald_route_script_errors_total", Counter, Count,
        "Records a route script failed on (runtime error, limit hit, bad return value), by script.";
}

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
    /// By audience kind.
    pub delivered: PerKind,
    pub emit_failures: Counter,
    pub delivery_latency: Histogram,
    pub pipeline_latency: Histogram,
    records_consumed: HashMap<String, Counter>,
    /// Kafka reachability: `herald_source_kafka_connected`, reconnects, time disconnected.
    pub kafka: Outage,
    pub commit_failures: Counter,
    pub assigned_partitions: Gauge,
    /// By audience kind.
    pub published: PerKind,
    pub publish_retries: Counter,
    pub received: Counter,
    pub bus_decode_failures: Counter,
    /// Redis connection: `herald_bus_redis_connected` and time disconnected (reconnects are
    /// counted from the client's own events, in `redis_reconnects`).
    pub redis: Outage,
    pub redis_reconnects: Counter,
    pub subscriptions: Gauge,
    /// Route script reloads.
    pub route_reloads: Reloads,
    /// Reloads of the JWT public key file.
    pub key_reloads: Reloads,
    pub route_split_batches: Counter,
    pub expired_disconnects: Counter,
    pub limit_evictions: Counter,
    pub sessions_ended: Counter,
    pub slow_client_disconnects: Counter,
    pub write_timeouts: Counter,
    pub replayed: Counter,
    pub retained_offline: Counter,
    pub handed_off: Counter,
    /// The transport's counters, copied from its [`Stats`] at each scrape.
    transport: TransportCounters,
}

/// A reloaded file's outcomes: `result="applied"` and `result="rejected"` (the running version
/// kept).
pub struct Reloads {
    applied: Counter,
    rejected: Counter,
}

impl Reloads {
    fn new(counter: impl Fn(&'static str) -> Counter) -> Self {
        Self { applied: counter("applied"), rejected: counter("rejected") }
    }

    pub fn applied(&self) {
        self.applied.increment(1);
    }

    pub fn rejected(&self) {
        self.rejected.increment(1);
    }
}

/// The transport counters other than the protocol errors and the cutoffs.
const FIXED_TRANSPORT: usize = 15;
const TRANSPORT_COUNTERS: usize = FIXED_TRANSPORT + ProtocolError::ALL.len() + Cutoff::ALL.len();

/// The Socket.IO transport keeps plain atomics ([`Stats`]); these follow them.
struct TransportCounters {
    protocol_errors: Vec<(ProtocolError, Counter)>,
    cutoffs: Vec<(Cutoff, Counter)>,
    opened_websocket: Counter,
    opened_polling: Counter,
    upgrades: Counter,
    ping_timeouts: Counter,
    websocket_writes: Counter,
    websocket_frames: Counter,
    forwarded_sent: Counter,
    forwarded_answered: Counter,
    moved_in: Counter,
    moved_out: Counter,
    moves_failed: Counter,
    compressed: Counter,
    inflated: Counter,
    websocket_bytes: Counter,
    /// The figures last copied, so `write_timeouts` (also counted by the HTTP server) gets
    /// increments rather than a value.
    last: Mutex<[u64; TRANSPORT_COUNTERS]>,
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
        for spec in CATALOG {
            let (name, help) = (KeyName::from_const_str(spec.name), SharedString::const_str(spec.help));
            match spec.kind {
                Kind::Counter => r.describe_counter(name, Some(spec.unit), help),
                Kind::Gauge => r.describe_gauge(name, Some(spec.unit), help),
                Kind::Histogram => r.describe_histogram(name, Some(spec.unit), help),
            }
        }
        let counter = |name: &'static str, labels: Vec<Label>| r.register_counter(&Key::from_parts(name, labels), &META);
        let gauge = |name: &'static str| r.register_gauge(&Key::from_name(name), &META);
        let per_kind = |name: &'static str| PerKind::new(|kind| counter(name, vec![Label::new(AudienceKind::KEY, kind)]));
        r.register_gauge(&Key::from_parts(BUILD_INFO, vec![Label::new("version", env!("CARGO_PKG_VERSION"))]), &META).set(1.0);
        Metrics {
            sockets: gauge(SOCKETS),
            users: gauge(USERS),
            connections: counter(CONNECTIONS, vec![]),
            delivered: per_kind(DELIVERED),
            emit_failures: counter(EMIT_FAILURES, vec![]),
            delivery_latency: r.register_histogram(&Key::from_name(DELIVERY_LATENCY), &META),
            pipeline_latency: r.register_histogram(&Key::from_name(PIPELINE_LATENCY), &META),
            records_consumed: topics.iter().map(|t| (t.clone(), counter(RECORDS_CONSUMED, vec![Label::new("topic", t.clone())]))).collect(),
            kafka: Outage::new(gauge(KAFKA_CONNECTED), counter(KAFKA_DISCONNECTED, vec![]), Some(counter(KAFKA_RECONNECTS, vec![]))),
            commit_failures: counter(COMMIT_FAILURES, vec![]),
            assigned_partitions: gauge(ASSIGNED_PARTITIONS),
            published: per_kind(PUBLISHED),
            publish_retries: counter(PUBLISH_RETRIES, vec![]),
            received: counter(RECEIVED, vec![]),
            bus_decode_failures: counter(BUS_DECODE_FAILURES, vec![]),
            redis: Outage::new(gauge(REDIS_CONNECTED), counter(REDIS_DISCONNECTED, vec![]), None),
            redis_reconnects: counter(REDIS_RECONNECTS, vec![]),
            subscriptions: gauge(SUBSCRIPTIONS),
            route_reloads: Reloads::new(|result| counter(ROUTE_RELOADS, vec![Label::new("result", result)])),
            key_reloads: Reloads::new(|result| counter(KEY_RELOADS, vec![Label::new("result", result)])),
            route_split_batches: counter(ROUTE_SPLIT_BATCHES, vec![]),
            expired_disconnects: counter(EXPIRED_DISCONNECTS, vec![]),
            limit_evictions: counter(LIMIT_EVICTIONS, vec![]),
            sessions_ended: counter(SESSIONS_ENDED, vec![]),
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
                forwarded_sent: counter(FORWARDED, vec![Label::new("direction", "sent")]),
                forwarded_answered: counter(FORWARDED, vec![Label::new("direction", "answered")]),
                moved_in: counter(MOVED, vec![Label::new("direction", "in")]),
                moved_out: counter(MOVED, vec![Label::new("direction", "out")]),
                moves_failed: counter(MOVED, vec![Label::new("direction", "failed")]),
                compressed: counter(COMPRESSION, vec![Label::new("op", "compressed")]),
                inflated: counter(COMPRESSION, vec![Label::new("op", "inflated")]),
                websocket_bytes: counter(WEBSOCKET_BYTES, vec![]),
                cutoffs: Cutoff::ALL.iter().map(|c| (*c, counter(REQUESTS_CUT, vec![Label::new("reason", c.label())]))).collect(),
                last: Mutex::new([0; TRANSPORT_COUNTERS]),
            },
            recorder,
            handle,
        }
    }

    /// Counters of metric `name`, one per value of the label `T`, registered at zero: for the
    /// module that owns the label's values (the router's drop reasons, the auth errors).
    pub fn by_label<T: LabelValue>(&self, name: &'static str) -> ByLabel<T> {
        ByLabel::new(|value| self.recorder.register_counter(&Key::from_parts(name, vec![Label::new(T::KEY, value)]), &META))
    }

    /// `n` records consumed from `topic`.
    pub fn consumed(&self, topic: &str, n: u64) {
        if let Some(c) = self.records_consumed.get(topic) {
            c.increment(n);
        }
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
        let mut now = [0u64; TRANSPORT_COUNTERS];
        now[..FIXED_TRANSPORT].copy_from_slice(&[
            websocket,
            polling,
            stats.upgrades(),
            stats.ping_timeouts(),
            stats.write_timeouts(),
            writes,
            frames,
            stats.forwarded().0,
            stats.forwarded().1,
            stats.moved().0,
            stats.moved().1,
            stats.moved().2,
            stats.deflate().0,
            stats.deflate().1,
            stats.bytes_written(),
        ]);
        for (i, (kind, _)) in t.protocol_errors.iter().enumerate() {
            now[FIXED_TRANSPORT + i] = stats.protocol_errors(*kind);
        }
        for (i, (why, _)) in t.cutoffs.iter().enumerate() {
            now[FIXED_TRANSPORT + ProtocolError::ALL.len() + i] = stats.cutoffs(*why);
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
            &t.forwarded_sent,
            &t.forwarded_answered,
            &t.moved_in,
            &t.moved_out,
            &t.moves_failed,
            &t.compressed,
            &t.inflated,
            &t.websocket_bytes,
        ];
        let counters = fixed.into_iter().chain(t.protocol_errors.iter().map(|(_, c)| c)).chain(t.cutoffs.iter().map(|(_, c)| c));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::route::DropReason;

    #[test]
    fn every_metric_is_exported_at_zero_before_any_event() {
        let m = Metrics::new(&["user-notifications".into()]);
        // Registered by the modules that own their label values, as they start.
        let _dropped = m.by_label::<DropReason>(RECORDS_DROPPED);
        let _refused = m.by_label::<AuthError>(AUTH_REJECTIONS);
        let text = m.render();
        // These carry a label only known at the first event (a route's file, a check's result),
        // so they appear then; every other series is there from the start.
        let on_first_event = [ROUTE_SCRIPT_ERRORS, AUTH_CHECKS, JWKS_FETCHES, TOKEN_REFRESHES, DEAD_LETTERED, RECEIPTS];
        let missing: Vec<_> =
            CATALOG.iter().map(|s| s.name).filter(|name| !on_first_event.contains(name) && !text.contains(&format!("\n{name}"))).collect();
        assert!(missing.is_empty(), "{missing:?} missing from:\n{text}");
        assert!(text.contains("herald_records_dropped_total{reason=\"offline\"} 0"), "{text}");
        assert!(text.contains("herald_gateway_auth_rejections_total{reason=\"too_many_groups\"} 0"), "{text}");
    }

    #[test]
    fn the_readme_documents_every_metric_and_label_value() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for name in CATALOG.iter().map(|s| s.name) {
            assert!(readme.contains(&format!("`{name}")), "README.md does not document {name}");
        }
        let values = DropReason::ALL.iter().map(|v| v.as_label()).chain(AuthError::ALL.iter().map(|v| v.as_label()));
        for value in values {
            assert!(readme.contains(&format!("`{value}`")), "README.md does not document the label value {value}");
        }
    }

    #[test]
    fn each_label_value_sits_at_its_index() {
        fn check<T: LabelValue + std::fmt::Debug>() {
            for (i, value) in T::ALL.iter().enumerate() {
                assert_eq!(value.index(), i, "{value:?}");
            }
        }
        check::<DropReason>();
        check::<AuthError>();
        check::<AudienceKind>();
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
        // Connected again, the count stops, however long it stays up.
        m.kafka.observe_at(true, at(12_000));
        m.kafka.observe_at(true, at(60_000));
        let text = m.render();
        assert!(text.contains("herald_source_kafka_disconnected_seconds_total 4"), "{text}");
        assert!(text.contains("herald_source_kafka_reconnects_total 2"), "{text}");
    }

    #[test]
    fn counters_move() {
        let m = Metrics::new(&["t".into()]);
        m.by_label::<DropReason>(RECORDS_DROPPED).increment(DropReason::BadJson, 2);
        m.consumed("t", 1);
        m.consumed("unknown-topic", 1);
        let text = m.render();
        assert!(text.contains("herald_records_dropped_total{reason=\"bad_json\"} 2"), "{text}");
        assert!(text.contains("herald_source_records_consumed_total{topic=\"t\"} 1"), "{text}");
    }
}
