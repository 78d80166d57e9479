//! The bus: carries each notification from the instance that consumed its record to the
//! instances holding its user's sockets. Redis Pub/Sub (one channel per user) across instances,
//! or an in-process shortcut when herald runs alone.

pub mod envelope;
mod memory;
mod redis;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::gateway::Deliverer;
use crate::metrics::Metrics;
use crate::replay::{History, NotificationId};
use crate::route::Notification;

/// What became of one published notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Instances (Redis) or sockets (in-process) it reached; 0: its user has no socket anywhere.
    pub receivers: usize,
    /// Its id in the user's history, when it was stored there for replay.
    pub stored: Option<NotificationId>,
}

/// A bus failure that may clear by itself (Redis down, timed out). The caller keeps the
/// notifications and retries; it never skips them.
#[derive(Debug, thiserror::Error)]
#[error("bus unavailable: {0}")]
pub struct BusError(pub String);

pub enum Bus {
    Memory(memory::MemoryBus),
    /// Boxed: far larger than the in-process bus, and there is one per instance.
    Redis(Box<redis::RedisBus>),
}

impl Bus {
    /// Connects the bus chosen by the config. Redis connection failures are not fatal here: the
    /// client keeps reconnecting and readiness reports it.
    pub async fn start(
        config: &Config,
        deliverer: Deliverer,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(match &config.redis {
            None => Bus::Memory(memory::MemoryBus::new(deliverer, &config.replay)),
            Some(redis) => Bus::Redis(Box::new(redis::RedisBus::start(redis, &config.replay, deliverer, metrics, cancel).await?)),
        }))
    }

    /// Publishes a batch in order (retained notifications are stored in the same step).
    pub async fn publish(&self, batch: &[Notification]) -> Result<Vec<Published>, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.publish(batch).await),
            Bus::Redis(b) => b.publish(batch).await,
        }
    }

    /// Publishes a batch again after an attempt begun at `first_attempt_ms` failed, which may
    /// have stored some of its retained notifications already: those are found in the history
    /// (same origin and payload) and go out live with their first id, not stored twice. The
    /// in-process bus cannot fail halfway.
    pub async fn publish_again(&self, batch: &[Notification], first_attempt_ms: i64) -> Result<Vec<Published>, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.publish(batch).await),
            Bus::Redis(b) => b.publish_again(batch, first_attempt_ms).await,
        }
    }

    /// Publishes stored notifications again, live only (the history has them already); returns
    /// how many instances (or sockets) each reached.
    pub async fn publish_live(&self, stored: &[(Notification, NotificationId)]) -> Result<Vec<usize>, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.publish_live(stored)),
            Bus::Redis(b) => b.publish_live(stored).await,
        }
    }

    /// The user's retained notifications after `since`, or the last `last_n` without it.
    pub async fn history(&self, user_id: &str, since: Option<NotificationId>, last_n: usize) -> Result<History, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.history(user_id, since, last_n)),
            Bus::Redis(b) => b.history(user_id, since, last_n).await,
        }
    }

    /// For each user, how many instances hold a socket of theirs (0: offline), cluster-wide,
    /// in one Redis round trip (one per shard on a cluster).
    pub async fn presence(&self, users: &[String]) -> Result<Vec<usize>, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.presence(users)),
            Bus::Redis(b) => b.presence(users).await,
        }
    }

    /// See [`redis::RedisBus::settling`]; the in-process bus never settles.
    pub fn settling(&self) -> bool {
        match self {
            Bus::Memory(_) => false,
            Bus::Redis(b) => b.settling(),
        }
    }

    /// Called when a socket of `user_id` joins this instance: makes sure this instance receives
    /// the user's notifications before the socket is told it is connected.
    pub async fn acquire(&self, user_id: &str) {
        if let Bus::Redis(b) = self {
            b.acquire(user_id).await;
        }
    }

    /// Called when a socket of `user_id` leaves; the last one unsubscribes.
    pub fn release(&self, user_id: &str) {
        if let Bus::Redis(b) = self {
            b.release(user_id);
        }
    }

    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Memory(_) => true,
            Bus::Redis(b) => b.is_connected(),
        }
    }

    pub async fn close(&self) {
        if let Bus::Redis(b) = self {
            b.close().await;
        }
    }
}
