//! What the bus answers: a publish's outcome, a failure that may clear, subscriptions on their
//! way to being confirmed.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::replay::NotificationId;

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

/// Subscriptions asked for, confirmed when Redis has them.
pub struct Subscribing {
    pending: Vec<oneshot::Receiver<()>>,
    timeout: Duration,
}

impl Subscribing {
    /// Waits for `pending` confirmations, at most `timeout`.
    pub(super) fn new(pending: Vec<oneshot::Receiver<()>>, timeout: Duration) -> Self {
        Self { pending, timeout }
    }

    /// Nothing to wait for.
    pub fn done() -> Self {
        Self { pending: Vec::new(), timeout: Duration::ZERO }
    }

    /// Waits until every subscription is confirmed, or the command timeout: during a Redis
    /// outage the socket is admitted anyway, its subscriptions follow when Redis is back, and
    /// readiness says the instance is degraded meanwhile.
    pub async fn confirmed(self) {
        if self.pending.is_empty() {
            return;
        }
        let all = futures::future::join_all(self.pending);
        if tokio::time::timeout(self.timeout, all).await.is_err() {
            tracing::debug!("Subscriptions not confirmed in time; admitting the socket, the subscriptions follow.");
        }
    }
}
