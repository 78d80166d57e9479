//! The last hop: emits a notification to every local socket of its user.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::BroadcastError;
use socketioxide::SocketIo;

use super::presence::Presence;
use crate::metrics::Metrics;
use crate::replay::{ReplayGate, Retained};
use crate::route::now_ms;

/// Emits notifications to the sockets of this instance. Cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    io: SocketIo,
    presence: Arc<Presence>,
    metrics: Arc<Metrics>,
}

impl Deliverer {
    pub fn new(io: SocketIo, presence: Arc<Presence>, metrics: Arc<Metrics>) -> Self {
        Self { io, presence, metrics }
    }

    /// Emits `event` with `payload` to every socket of `user_id` here; returns how many sockets
    /// it reached. The packet is encoded once for all of them.
    pub async fn deliver(&self, user_id: &str, event: &str, payload: &RawValue, timestamp_ms: i64) -> usize {
        let sockets = self.presence.sockets_of(user_id) as usize;
        if sockets == 0 {
            return 0;
        }
        let failed = match self.io.to(user_id.to_owned()).emit(event, payload).await {
            Ok(()) => 0,
            Err(BroadcastError::Socket(errors)) => errors.len(),
            Err(_) => sockets,
        };
        if failed > 0 {
            self.metrics.emit_failures.increment(failed as u64);
        }
        let reached = sockets.saturating_sub(failed);
        self.metrics.delivered.increment(reached as u64);
        let latency_ms = (now_ms() - timestamp_ms).max(0);
        self.metrics.delivery_latency.record(latency_ms as f64 / 1000.0);
        reached
    }

    /// Emits a retained notification (with its id as a second argument) to every socket of the
    /// user here, through each socket's replay gate, so a socket in the middle of a replay gets
    /// it afterwards, once.
    pub fn deliver_retained(&self, user_id: &str, item: Retained, timestamp_ms: i64) -> usize {
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
        self.metrics.delivery_latency.record((now_ms() - timestamp_ms).max(0) as f64 / 1000.0);
        reached
    }
}
