//! The last hop: emits a notification to every local socket of its user, its group, or
//! everyone, encoded once for all of them.

use std::sync::Arc;

use serde_json::value::RawValue;
use tracing::warn;

use super::admission::Admission;
use super::member::{Entry, Member, Moves};
use super::presence::Presence;
use super::relay::Relay;
use super::revocation::Revocations;
use crate::bus::{Addressee, Arrival, Inbound};
use crate::clock::unix_us;
use crate::config::SlowClient;
use crate::metrics::{AudienceKind, LabelValue, Metrics};
use crate::replay::NotificationId;
use crate::telemetry::TraceContext;
use crate::telemetry::context::TraceParent;
use crate::telemetry::spans::Traced;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use socketio::{SendError, SocketRef, event_frame};

/// Emits notifications to the sockets of this instance. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    presence: Arc<Presence<Entry<Admission>>>,
    metrics: Arc<Metrics>,
    slow_client: SlowClient,
    revocations: Arc<Revocations>,
    /// Requests other instances forward here, and the answers to ours.
    relay: Option<Relay>,
    /// Sockets moving between instances: markers on their channels go here.
    moves: Arc<Moves>,
}

/// Whether `member` takes a notification sent to each of `among` from `group`'s copy.
fn takes_from(member: &Member, group: &str, among: &[&str]) -> bool {
    among.is_empty() || among.iter().find(|g| member.in_group(g)).is_none_or(|first| *first == group)
}

/// The namespace herald's sockets live in.
const NAMESPACE: &str = "/";

/// The second argument of a notification: `{"id":…,"traceparent":…}` with what it has, or
/// none. Built once per notification, for all its sockets.
pub fn second_argument(id: Option<&str>, traceparent: Option<&str>) -> Option<Box<RawValue>> {
    // What another publisher wrote is passed on only if it is a valid traceparent.
    let traceparent = traceparent.filter(|t| TraceParent::parse(t).is_some());
    if id.is_none() && traceparent.is_none() {
        return None;
    }
    let mut out = String::from("{");
    if let Some(id) = id {
        out.push_str("\"id\":");
        out.push_str(&serde_json::to_string(id).expect("a string always serialises"));
    }
    if let Some(t) = traceparent {
        out.push_str(if id.is_some() { ",\"traceparent\":\"" } else { "\"traceparent\":\"" });
        out.push_str(t);
        out.push('"');
    }
    out.push('}');
    Some(RawValue::from_string(out).expect("valid JSON"))
}

/// The `deliver` span of a notification that continues a traced trace, when exporting.
fn delivery_span(n: &Arrival<'_>, kind: AudienceKind) -> Option<Traced> {
    let tracer = crate::telemetry::tracer()?;
    let parent = TraceContext::parse(n.traceparent?, n.tracestate)?;
    if !tracer.traces(Some(&parent)) {
        return None;
    }
    let attributes = vec![KeyValue::new("herald.audience", kind.as_label())];
    Some(tracer.start("deliver", SpanKind::Consumer, Some(&parent), std::time::SystemTime::now(), attributes))
}

/// Ends a `deliver` span with the sockets the notification reached.
fn end_delivery_span(span: Option<Traced>, reached: usize) {
    if let Some(mut span) = span {
        span.set(KeyValue::new("herald.sockets", reached as i64));
        span.end();
    }
}

impl Deliverer {
    pub fn new(
        presence: Arc<Presence<Entry<Admission>>>,
        metrics: Arc<Metrics>,
        slow_client: SlowClient,
        revocations: Arc<Revocations>,
        relay: Option<Relay>,
        moves: Arc<Moves>,
    ) -> Self {
        Self { presence, metrics, slow_client, revocations, relay, moves }
    }

    fn finish(&self, kind: AudienceKind, reached: usize, failed: usize, timestamp_ms: i64, consumed_us: i64) -> usize {
        if failed > 0 {
            self.metrics.emit_failures.increment(failed as u64);
        }
        self.metrics.delivered.increment(kind, reached as u64);
        self.record_latency(timestamp_ms, consumed_us);
        reached
    }

    /// A socket whose queue is full leaves its user's delivery at once (nothing more is queued
    /// for it) and is disconnected; its DISCONNECT goes out past the full queue.
    fn disconnect_slow(&self, slow: Vec<SocketRef<Admission>>) {
        for socket in slow {
            self.metrics.slow_client_disconnects.increment(1);
            warn!(socket = socket.id(), "Socket send buffer full; disconnecting the slow client.");
            socket.disconnect();
        }
    }

    /// End to end since the record was produced, and herald's own share since it was consumed.
    /// A consume time more than an hour away is not herald's (another publisher's `"c"` in other
    /// units): it is left out rather than skew the histogram.
    fn record_latency(&self, produced_ms: i64, consumed_us: i64) {
        const PLAUSIBLE_US: i64 = 3_600_000_000;
        let now = unix_us();
        self.metrics.delivery_latency.record((now / 1000 - produced_ms).max(0) as f64 / 1e3);
        if consumed_us > 0 && (now - consumed_us).abs() < PLAUSIBLE_US {
            self.metrics.pipeline_latency.record((now - consumed_us).max(0) as f64 / 1e6);
        }
    }
}

impl Inbound for Deliverer {
    fn relayed(&self, message: crate::bus::envelope::Relayed) {
        if let Some(relay) = &self.relay {
            relay.received(message);
        }
    }

    fn cut(&self, on: Addressee<'_>, token: u64) {
        self.moves.passed(on, token);
    }

    fn end_sessions(&self, users: &[&str], revoked_at_ms: Option<i64>) -> usize {
        let mut ended = 0;
        for user in users {
            if let Some(at) = revoked_at_ms {
                self.revocations.record(user, at);
            }
            // Leaving presence and the bus happens as each socket's disconnect is handled.
            for entry in self.presence.sockets_snapshot(user) {
                entry.socket.disconnect();
                ended += 1;
            }
        }
        self.metrics.sessions_ended.increment(ended as u64);
        ended
    }

    /// How many sockets `user_id` has on this instance.
    fn sockets_of(&self, user_id: &str) -> usize {
        self.presence.sockets_of(user_id)
    }

    /// Sockets of `group` here.
    fn sockets_in_group(&self, group: &str) -> usize {
        self.presence.sockets_in_group(group)
    }

    /// Emits the notification to every socket of `to` here (with `{"id": id}` as the second
    /// argument, when it has one for receipts, and its `traceparent`); returns how many sockets
    /// it reached.
    fn deliver(&self, to: Addressee<'_>, n: &Arrival<'_>, id: Option<&str>) -> usize {
        let mut frame = None;
        let mut span = None;
        let (mut reached, mut failed) = (0, 0);
        let mut slow: Vec<SocketRef<Admission>> = Vec::new();
        let mut send = |e: &Entry<Admission>| {
            if !e.member.takes(to) {
                return;
            }
            let frame = frame.get_or_insert_with(|| {
                span = delivery_span(n, to.kind());
                let traceparent = span.as_ref().map_or(n.traceparent, |s| Some(s.context.traceparent()));
                match second_argument(id, traceparent) {
                    Some(meta) => event_frame(NAMESPACE, n.event, &[n.payload, &meta]),
                    None => event_frame(NAMESPACE, n.event, &[n.payload]),
                }
            });
            match e.socket.send(frame) {
                Ok(()) => reached += 1,
                Err(SendError::Full) if self.slow_client == SlowClient::Disconnect => {
                    failed += 1;
                    slow.push(e.socket.clone());
                }
                Err(_) => failed += 1,
            }
        };
        let sockets = match to {
            Addressee::User(user) => self.presence.each_socket(user, send),
            Addressee::Group { name, among } => self.presence.each_in_group(name, |e| {
                if takes_from(&e.member, name, among) {
                    send(e);
                }
            }),
            Addressee::Everyone => self.presence.each_everyone(send),
        };
        end_delivery_span(span, reached);
        if sockets == 0 {
            return 0;
        }
        self.disconnect_slow(slow);
        self.finish(to.kind(), reached, failed, n.timestamp_ms, n.consumed_us)
    }

    /// Emits a retained notification (with its id as a second argument) to every socket of the
    /// user here, through each socket's replay gate, so a socket in the middle of a replay gets
    /// it afterwards, once.
    fn deliver_retained(&self, user_id: &str, id: NotificationId, n: &Arrival<'_>) -> usize {
        let mut frame = None;
        let mut span = None;
        let mut failed = 0usize;
        let mut slow: Vec<SocketRef<Admission>> = Vec::new();
        let sockets = self.presence.each_socket(user_id, |e| {
            if !e.member.takes(Addressee::User(user_id)) {
                return;
            }
            let frame = frame.get_or_insert_with(|| {
                span = delivery_span(n, AudienceKind::User);
                let traceparent = span.as_ref().map_or(n.traceparent, |s| Some(s.context.traceparent()));
                let meta = second_argument(Some(&id.to_string()), traceparent).expect("an id");
                event_frame(NAMESPACE, n.event, &[n.payload, &meta])
            });
            let held = e.member.gate.offer(id, frame.clone(), |frame| match e.socket.send(frame) {
                Ok(()) => {}
                Err(SendError::Full) if self.slow_client == SlowClient::Disconnect => {
                    failed += 1;
                    slow.push(e.socket.clone());
                }
                Err(_) => failed += 1,
            });
            if !held {
                failed += 1;
            }
        });
        end_delivery_span(span, sockets.saturating_sub(failed));
        if sockets == 0 {
            return 0;
        }
        self.disconnect_slow(slow);
        self.finish(AudienceKind::User, sockets.saturating_sub(failed), failed, n.timestamp_ms, n.consumed_us)
    }
}
