//! The bus: carries each notification from the instance that consumed its record to the
//! instances holding its audience's sockets. Redis Pub/Sub (one channel per user, one per group,
//! one for broadcasts) across instances, or an in-process shortcut when herald runs alone.

pub mod envelope;
pub mod inbound;
mod memory;
mod outcome;
mod redis;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

pub use inbound::{Addressee, Arrival, Inbound};
pub use outcome::{BusError, Published, Subscribing};
/// The RESP reader and writer of herald's own Redis connections (public for the fuzzer).
pub use redis::{interpret_replies, resp};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::notification::Notification;
use crate::replay::{History, NotificationId};
use crate::supervise::Supervisor;

pub enum Bus {
    Memory(memory::MemoryBus),
    /// Boxed: far larger than the in-process bus, and there is one per instance.
    Redis(Box<redis::RedisBus>),
}

impl Bus {
    /// Connects the bus chosen by the config. Redis connection failures are not fatal here: the
    /// client keeps reconnecting and readiness reports it.
    /// `instance`: this instance's tag, whose own channel it subscribes (with Redis).
    pub async fn start(
        config: &Config,
        instance: Option<&str>,
        inbound: Arc<dyn Inbound>,
        metrics: Arc<Metrics>,
        supervisor: &Supervisor,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(match &config.redis {
            None => Bus::Memory(memory::MemoryBus::new(inbound, &config.replay)),
            Some(redis) => {
                Bus::Redis(Box::new(redis::RedisBus::start(redis, &config.replay, instance, inbound, metrics, supervisor).await?))
            }
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

    /// [`Self::publish`] with each notification's outcome: the ones that failed alone (their
    /// cluster master was down) are the only ones to publish again. `retry_since_ms`: as for
    /// [`Self::publish_again`].
    pub async fn publish_each(
        &self,
        batch: &[Notification],
        retry_since_ms: Option<i64>,
    ) -> Result<Vec<Result<Published, String>>, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.publish(batch).await.into_iter().map(Ok).collect()),
            Bus::Redis(b) => b.publish_each(batch, retry_since_ms).await,
        }
    }

    /// Publishes stored notifications again, live only (the history has them already); returns
    /// how many instances (or sockets) each reached.
    async fn publish_live(&self, stored: &[(Notification, NotificationId)]) -> Result<Vec<usize>, BusError> {
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

    /// For each user, then each group, how many instances hold a socket of theirs (0:
    /// offline), cluster-wide, in one Redis round trip (one per shard on a cluster).
    pub async fn presence(&self, users: &[String], groups: &[String]) -> Result<(Vec<usize>, Vec<usize>), BusError> {
        match self {
            Bus::Memory(b) => Ok(b.presence(users, groups)),
            Bus::Redis(b) => b.presence(users, groups).await,
        }
    }

    /// Ends every session of `users` on every instance (their clients see a server disconnect);
    /// with `revoked_at_ms`, their tokens issued before then are refused for `ttl`, kept in
    /// Redis for instances that start later. Returns how many instances were told.
    pub async fn end_sessions(&self, users: &[String], revoked_at_ms: Option<i64>, ttl: Duration) -> Result<usize, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.end_sessions(users, revoked_at_ms)),
            Bus::Redis(b) => b.end_sessions(users, revoked_at_ms, ttl).await,
        }
    }

    /// When `user`'s tokens were revoked, as Redis keeps it (`None` on the in-process bus:
    /// the instance itself remembers).
    pub async fn revoked_at(&self, user: &str) -> Result<Option<i64>, BusError> {
        match self {
            Bus::Memory(_) => Ok(None),
            Bus::Redis(b) => b.revoked_at(user).await,
        }
    }

    /// See [`redis::RedisBus::settling`]; the in-process bus never settles.
    fn settling(&self) -> bool {
        match self {
            Bus::Memory(_) => false,
            Bus::Redis(b) => b.settling(),
        }
    }

    /// Called when a socket of `user` (and `groups`) joins this instance, or a refresh adds
    /// groups: asks at once for their channels; awaiting the result makes sure this instance
    /// receives their notifications before the socket is told it is connected.
    pub fn subscribe(&self, user: Option<&str>, groups: &[Arc<str>]) -> Subscribing {
        match self {
            Bus::Memory(_) => Subscribing::done(),
            Bus::Redis(b) => b.subscribe(user, groups),
        }
    }

    /// Called when a socket leaves (or a refresh drops groups); the last one of each unsubscribes.
    pub fn unsubscribe(&self, user: Option<&str>, groups: &[Arc<str>]) {
        if let Bus::Redis(b) = self {
            b.unsubscribe(user, groups);
        }
    }

    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Memory(_) => true,
            Bus::Redis(b) => b.is_connected(),
        }
    }

    /// Sends `message` to the instance tagged `tag`; how many instances heard it (0 without
    /// Redis: there is no other instance).
    pub async fn relay(&self, tag: &str, message: &envelope::Relayed) -> Result<usize, BusError> {
        match self {
            Bus::Memory(_) => Ok(0),
            Bus::Redis(b) => b.relay(tag, message).await,
        }
    }

    /// Publishes the marker of a moving session on its channels (see
    /// [`envelope::encode_cut`]); nothing without Redis (no session moves).
    pub async fn publish_cut(&self, token: u64, user: &str, groups: &[Arc<str>]) -> Result<(), BusError> {
        match self {
            Bus::Memory(_) => Ok(()),
            Bus::Redis(b) => b.publish_cut(token, user, groups).await,
        }
    }

    /// Why the bus is not ready, when it is not: one line per Redis connection with a problem.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Bus::Memory(_) => Vec::new(),
            Bus::Redis(b) => b.problems(),
        }
    }

    pub async fn close(&self) {
        if let Bus::Redis(b) = self {
            b.close().await;
        }
    }
}
