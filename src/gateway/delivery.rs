//! The last hop: emits a notification to every local socket of its user, its group, or
//! everyone, encoded once for all of them.

use std::sync::Arc;

use serde_json::value::RawValue;
use tracing::warn;

use super::member::{Client, Member};
use super::presence::{Entry, Presence};
use super::revocation::Revocations;
use crate::bus::{Addressee, Inbound};
use crate::clock::unix_us;
use crate::config::SlowClient;
use crate::metrics::{AudienceKind, Metrics};
use crate::replay::{self, NotificationId};
use crate::socketio::{SendError, event_frame};

/// Emits notifications to the sockets of this instance. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    slow_client: SlowClient,
    revocations: Arc<Revocations>,
    /// Requests other instances forward here, and the answers to ours.
    relay: Option<super::relay::Relay>,
    /// Sockets moving between instances: markers on their channels go here.
    moves: Arc<super::Moves>,
}

/// Whether `member` takes a notification sent to each of `among` from `group`'s copy.
fn takes_from(member: &Member, group: &str, among: &[&str]) -> bool {
    among.is_empty() || among.iter().find(|g| member.in_group(g)).is_none_or(|first| *first == group)
}

/// The namespace herald's sockets live in.
const NAMESPACE: &str = "/";

impl Deliverer {
    pub fn new(
        presence: Arc<Presence>,
        metrics: Arc<Metrics>,
        slow_client: SlowClient,
        revocations: Arc<Revocations>,
        relay: Option<super::relay::Relay>,
        moves: Arc<super::Moves>,
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
    fn disconnect_slow(&self, slow: Vec<Client>) {
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

    /// Emits `event` with `payload` to every socket of `to` here (and `{"id": id}` as the
    /// second argument, when the notification has one for receipts); returns how many sockets
    /// it reached.
    fn deliver(&self, to: Addressee<'_>, event: &str, payload: &RawValue, id: Option<&str>, timestamp_ms: i64, consumed_us: i64) -> usize {
        let mut frame = None;
        let (mut reached, mut failed) = (0, 0);
        let mut slow: Vec<Client> = Vec::new();
        let mut send = |e: &Entry| {
            if !e.member.takes(to) {
                return;
            }
            let frame = frame.get_or_insert_with(|| match id {
                Some(id) => {
                    let meta = RawValue::from_string(serde_json::json!({ "id": id }).to_string()).expect("valid JSON");
                    event_frame(NAMESPACE, event, &[payload, &meta])
                }
                None => event_frame(NAMESPACE, event, &[payload]),
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
        if sockets == 0 {
            return 0;
        }
        self.disconnect_slow(slow);
        self.finish(to.kind(), reached, failed, timestamp_ms, consumed_us)
    }

    /// Emits a retained notification (with its id as a second argument) to every socket of the
    /// user here, through each socket's replay gate, so a socket in the middle of a replay gets
    /// it afterwards, once.
    fn deliver_retained(
        &self,
        user_id: &str,
        id: NotificationId,
        event: &str,
        payload: &RawValue,
        timestamp_ms: i64,
        consumed_us: i64,
    ) -> usize {
        let mut frame = None;
        let mut failed = 0usize;
        let mut slow: Vec<Client> = Vec::new();
        let sockets = self.presence.each_socket(user_id, |e| {
            if !e.member.takes(Addressee::User(user_id)) {
                return;
            }
            let frame = frame.get_or_insert_with(|| {
                let meta = RawValue::from_string(replay::meta(id).to_string()).expect("valid JSON");
                event_frame(NAMESPACE, event, &[payload, &meta])
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
        if sockets == 0 {
            return 0;
        }
        self.disconnect_slow(slow);
        self.finish(AudienceKind::User, sockets.saturating_sub(failed), failed, timestamp_ms, consumed_us)
    }
}
