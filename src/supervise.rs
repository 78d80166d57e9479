//! Background tasks herald needs for as long as it runs (the bus's subscriber and watcher, token
//! lifetimes, JWKS refresh, script reload, metrics upkeep): each is spawned here by name, and
//! its end before shutdown, by returning or by panicking, is logged and fails the instance, which
//! then shuts down (exit 1) rather than stay up doing less than it says.

use std::future::Future;

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::error;

#[derive(Clone)]
pub struct Supervisor {
    stop: CancellationToken,
    failed: CancellationToken,
}

impl Supervisor {
    /// Tasks are expected to end once `stop` fires, and only then.
    pub fn new(stop: CancellationToken) -> Self {
        Self { stop, failed: CancellationToken::new() }
    }

    /// What the supervised tasks watch to know it is time to end.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Fired when a supervised task ended before `stop`.
    pub fn failed(&self) -> &CancellationToken {
        &self.failed
    }

    /// Spawns `task`; its handle aborts it (an abort is deliberate, not a failure).
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
        let handle = tokio::spawn(task);
        let abort = handle.abort_handle();
        let (stop, failed) = (self.stop.clone(), self.failed.clone());
        tokio::spawn(async move {
            let ended = handle.await;
            if stop.is_cancelled() {
                return;
            }
            match ended {
                Err(e) if e.is_cancelled() => return,
                Err(e) => error!(task = name, error = %e, "A background task panicked; shutting down."),
                Ok(()) => error!(task = name, "A background task ended unexpectedly; shutting down."),
            }
            failed.cancel();
        });
        abort
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn fired(token: &CancellationToken) -> bool {
        tokio::time::timeout(Duration::from_secs(5), token.cancelled()).await.is_ok()
    }

    #[tokio::test]
    async fn a_task_that_ends_or_panics_before_stop_fails_the_instance() {
        let s = Supervisor::new(CancellationToken::new());
        s.spawn("returns", async {});
        assert!(fired(s.failed()).await, "a task that returned");

        let s = Supervisor::new(CancellationToken::new());
        s.spawn("panics", async { panic!("on purpose") });
        assert!(fired(s.failed()).await, "a task that panicked");
    }

    #[tokio::test]
    async fn ending_at_stop_or_being_aborted_is_not_a_failure() {
        let stop = CancellationToken::new();
        let s = Supervisor::new(stop.clone());
        let watching = s.stop_token();
        s.spawn("ends at stop", async move { watching.cancelled().await });
        s.spawn("runs", std::future::pending()).abort();
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!s.failed().is_cancelled());
    }
}
