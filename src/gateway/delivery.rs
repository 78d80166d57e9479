//! The last hop: emits a notification to every local socket of its user.

use std::sync::Arc;

use serde_json::value::RawValue;
use socketioxide::BroadcastError;
use socketioxide::SocketIo;

use super::presence::Presence;
use crate::metrics::Metrics;
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

    pub fn local_sockets(&self, user_id: &str) -> usize {
        self.presence.sockets_of(user_id) as usize
    }
}
