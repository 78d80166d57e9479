//! The last hop: emits a notification to every local socket of its user.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::{BroadcastError, SendError, SocketError, SocketIo};
use tracing::warn;

use super::presence::Presence;
use crate::config::SlowClient;
use crate::metrics::Metrics;
use crate::replay::{ReplayGate, Retained};
use crate::route::now_us;

/// Emits notifications to the sockets of this instance. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    io: SocketIo,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
    slow_client: SlowClient,
}

impl Deliverer {
    pub fn new(io: SocketIo, presence: Arc<Presence>, metrics: Arc<Metrics>, slow_client: SlowClient) -> Self {
        Self { io, presence, metrics, slow_client }
    }

    /// Emits `event` with `payload` to every socket of `user_id` here; returns how many sockets
    /// it reached. With `slow_client: drop` the packet is encoded once for all of them.
    pub async fn deliver(&self, user_id: &str, event: &str, payload: &RawValue, timestamp_ms: i64, consumed_us: i64) -> usize {
        let sockets = self.presence.sockets_of(user_id) as usize;
        if sockets == 0 {
            return 0;
        }
        let (reached, failed) = match self.slow_client {
            SlowClient::Drop => {
                let failed = match self.io.to(user_id.to_owned()).emit(event, payload).await {
                    Ok(()) => 0,
                    Err(BroadcastError::Socket(errors)) => errors.len(),
                    Err(_) => sockets,
                };
                (sockets.saturating_sub(failed), failed)
            }
            SlowClient::Disconnect => self.emit_or_disconnect(user_id, event, payload),
        };
        if failed > 0 {
            self.metrics.emit_failures.increment(failed as u64);
        }
        self.metrics.delivered.increment(reached as u64);
        self.record_latency(timestamp_ms, consumed_us);
        reached
    }

    /// Emits to each socket of the user on its own, so the one whose buffer is full is known:
    /// it leaves the user's room at once (nothing more is queued for it) and is disconnected.
    /// Returns how many sockets got the notification and how many did not.
    fn emit_or_disconnect(&self, user_id: &str, event: &str, payload: &RawValue) -> (usize, usize) {
        let (mut reached, mut failed) = (0, 0);
        for socket in self.io.to(user_id.to_owned()).sockets() {
            match socket.emit(event, payload) {
                Ok(()) => reached += 1,
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                    failed += 1;
                    socket.leave(user_id.to_owned());
                    self.metrics.slow_client_disconnects.increment(1);
                    warn!(socket = %socket.id, "Socket send buffer full; disconnecting the slow client.");
                    if socket.clone().disconnect().is_err() {
                        tokio::spawn(disconnect_when_room(socket));
                    }
                }
                Err(_) => failed += 1,
            }
        }
        (reached, failed)
    }

    /// Emits a retained notification (with its id as a second argument) to every socket of the
    /// user here, through each socket's replay gate, so a socket in the middle of a replay gets
    /// it afterwards, once.
    pub fn deliver_retained(&self, user_id: &str, item: Retained, timestamp_ms: i64, consumed_us: i64) -> usize {
        if self.presence.sockets_of(user_id) == 0 {
            return 0;
        }
        let sockets = self.io.to(user_id.to_owned()).sockets();
        let mut reached = 0;
        for socket in &sockets {
            if let Some(gate) = socket.extensions.get::<Arc<ReplayGate>>() {
                gate.offer(socket, item.clone());
                reached += 1;
            }
        }
        self.metrics.delivered.increment(reached as u64);
        self.record_latency(timestamp_ms, consumed_us);
        reached
    }

    /// End to end since the record was produced, and herald's own share since it was consumed.
    /// A consume time more than an hour away is not herald's (another publisher's `"c"` in other
    /// units): it is left out rather than skew the histogram.
    fn record_latency(&self, produced_ms: i64, consumed_us: i64) {
        const PLAUSIBLE_US: i64 = 3_600_000_000;
        let now = now_us();
        self.metrics.delivery_latency.record((now / 1000 - produced_ms).max(0) as f64 / 1e3);
        if consumed_us > 0 && (now - consumed_us).abs() < PLAUSIBLE_US {
            self.metrics.pipeline_latency.record((now - consumed_us).max(0) as f64 / 1e6);
        }
    }
}

/// The disconnect packet needs room in the socket's full buffer: try again as the client
/// drains it, for up to a minute. A client that reads nothing at all is left to the Engine.IO
/// heartbeat (socketioxide offers no way to close one socket's connection with a full buffer);
/// it is out of its user's room, so it gets nothing more meanwhile.
async fn disconnect_when_room(socket: socketioxide::extract::SocketRef) {
    for _ in 0..600 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if !socket.connected() || socket.clone().disconnect().is_ok() {
            return;
        }
    }
}
