//! Publishing until the bus takes it: retries with backoff through an outage, and, right after
//! a Redis reconnect, publishing again what reached no instance yet. The source calls this one
//! publish; what "stored", "live" and "settling" mean stays here, in the bus.

use std::fmt::Display;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Bus, BusError, Published};
use crate::clock::unix_ms;
use crate::metrics::Metrics;
use crate::notification::Notification;
use crate::replay::NotificationId;

impl Bus {
    /// Publishes the batch, holding the partition until the bus takes it (or `abort` fires):
    /// nothing is skipped.
    ///
    /// Right after a Redis reconnect, "no subscriber" may only mean "not re-subscribed yet", so
    /// while the bus is settling the notifications that reached nobody are published again. Only
    /// those: the others reached an instance already. Stored (retained) ones go out live only,
    /// with their history id: stored again they would be duplicated in the history, and the
    /// id lets each socket's replay gate drop a copy it already has.
    pub async fn publish_until_taken(
        &self,
        batch: &[Notification],
        held: &(dyn Display + Sync),
        abort: &CancellationToken,
        metrics: &Metrics,
    ) -> Option<Vec<Published>> {
        let mut published = self.publish_all(batch, held, abort, metrics).await?;
        let mut backoff = Backoff::new(Duration::from_secs(1));
        loop {
            let unheard: Vec<usize> = published.iter().enumerate().filter(|(_, p)| p.receivers == 0).map(|(i, _)| i).collect();
            if unheard.is_empty() || !self.settling() {
                return Some(published);
            }
            metrics.publish_retries.increment(1);
            debug!(
                records = %held,
                notifications = unheard.len(),
                retry_in_ms = backoff.delay().as_millis() as u64,
                "No subscriber yet while instances re-subscribe after a Redis reconnect or a slot move; publishing again."
            );
            if !backoff.wait(abort).await {
                return None;
            }
            let (stored, plain): (Vec<usize>, Vec<usize>) = unheard.into_iter().partition(|&i| published[i].stored.is_some());
            if !plain.is_empty() {
                let again: Vec<Notification> = plain.iter().map(|&i| batch[i].clone()).collect();
                let results = until_taken(again.len(), held, abort, metrics, || self.publish(&again)).await?;
                for (i, result) in plain.into_iter().zip(results) {
                    published[i] = result;
                }
            }
            if !stored.is_empty() {
                let again: Vec<(Notification, NotificationId)> =
                    stored.iter().filter_map(|&i| Some((batch[i].clone(), published[i].stored?))).collect();
                let reached = until_taken(again.len(), held, abort, metrics, || self.publish_live(&again)).await?;
                for (i, receivers) in stored.into_iter().zip(reached) {
                    published[i].receivers = receivers;
                }
            }
        }
    }

    /// Publishes every notification of the batch, retrying with backoff those that failed
    /// (all of them when Redis is down; on a cluster, those of a master that is down) and only
    /// those, with the `publish_again` rules: a retained one an earlier attempt stored is
    /// found in the history, not stored twice.
    async fn publish_all(
        &self,
        batch: &[Notification],
        held: &(dyn Display + Sync),
        abort: &CancellationToken,
        metrics: &Metrics,
    ) -> Option<Vec<Published>> {
        let first_attempt_ms = unix_ms();
        let mut done: Vec<Option<Published>> = vec![None; batch.len()];
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let mut tried = false;
        loop {
            let pending: Vec<usize> = (0..batch.len()).filter(|&i| done[i].is_none()).collect();
            if pending.is_empty() {
                return Some(done.into_iter().map(|p| p.expect("every one is done")).collect());
            }
            // The whole batch the first time (no copy); then what failed.
            let subset: Vec<Notification>;
            let attempt: &[Notification] = if pending.len() == batch.len() {
                batch
            } else {
                subset = pending.iter().map(|&i| batch[i].clone()).collect();
                &subset
            };
            let retry_since = std::mem::replace(&mut tried, true).then_some(first_attempt_ms);
            let error = match self.publish_each(attempt, retry_since).await {
                Ok(results) => {
                    let mut first_error = None;
                    for (&i, result) in pending.iter().zip(results) {
                        match result {
                            Ok(p) => done[i] = Some(p),
                            Err(e) => first_error = first_error.or(Some(e)),
                        }
                    }
                    match first_error {
                        None => continue,
                        Some(e) => BusError(e),
                    }
                }
                Err(e) => e,
            };
            let failed = done.iter().filter(|p| p.is_none()).count();
            if !held_for_retry(&error, held, failed, &mut backoff, abort, metrics).await {
                return None;
            }
        }
    }
}

/// Retries a bus operation on `count` notifications with backoff until it succeeds, or
/// `abort` fires. `held` names the records whose offsets wait for it, for the log.
async fn until_taken<T, F>(
    count: usize,
    held: &(dyn Display + Sync),
    abort: &CancellationToken,
    metrics: &Metrics,
    mut attempt: impl FnMut() -> F,
) -> Option<T>
where
    F: Future<Output = Result<T, BusError>>,
{
    let mut backoff = Backoff::new(Duration::from_secs(2));
    loop {
        let error = match attempt().await {
            Ok(done) => return Some(done),
            Err(e) => e,
        };
        if !held_for_retry(&error, held, count, &mut backoff, abort, metrics).await {
            return None;
        }
    }
}

/// Counts and logs a publish that failed for `count` notifications, then waits its backoff;
/// false if `abort` fired meanwhile.
async fn held_for_retry(
    error: &BusError,
    held: &(dyn Display + Sync),
    count: usize,
    backoff: &mut Backoff,
    abort: &CancellationToken,
    metrics: &Metrics,
) -> bool {
    metrics.publish_retries.increment(1);
    warn!(
        error = %error,
        records = %held,
        notifications = count,
        retry_in_ms = backoff.delay().as_millis() as u64,
        "Bus publish not done; holding consumption and retrying."
    );
    backoff.wait(abort).await
}

/// The waits between attempts at something a partition is held for (a publish, a hand-off, a
/// dead letter): 50 ms, doubling, at most `max`.
pub struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self { delay: Duration::from_millis(50), max }
    }

    /// How long the next wait is.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Waits, and makes the next wait longer; false (at once) if `abort` fires first.
    pub async fn wait(&mut self, abort: &CancellationToken) -> bool {
        if !sleep_unless_aborted(abort, self.delay).await {
            return false;
        }
        self.delay = (self.delay * 2).min(self.max);
        true
    }
}

/// Sleeps `delay`; false (at once) if `abort` fires first.
async fn sleep_unless_aborted(abort: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = abort.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
