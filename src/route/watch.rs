//! Hot reload: watches the script directories (and SIGHUP) and asks the router to reload.
//!
//! notify reports file opens and closes as well as writes, so reading a script would trigger
//! another event; access events are ignored, other events on `.rhai` files are debounced, and
//! the router skips scripts whose text did not change. Editors that save in place and editors
//! that save by renaming a temporary file both end in an event on the script's path.

use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Router;
use crate::supervise::Supervisor;

/// Starts watching, until the supervisor's stop.
pub fn spawn(router: Arc<Router>, debounce: Duration, supervisor: &Supervisor) -> anyhow::Result<()> {
    let cancel = supervisor.stop_token();
    let (tx, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event)
            if !matches!(event.kind, EventKind::Access(_)) && event.paths.iter().any(|p| p.extension().is_some_and(|e| e == "rhai")) =>
        {
            let _ = tx.send(());
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "Route script watcher error."),
    })?;
    let dirs = router.script_dirs();
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive).map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", dir.display()))?;
    }
    if !dirs.is_empty() {
        info!(dirs = ?dirs, "Watching route scripts for changes.");
    }
    supervisor.spawn("route script watcher", async move {
        let _watcher = watcher; // dropping it stops the watch
        let mut hangups = hangup_signals();
        // A reload is due once the burst of events of one save has been quiet for `debounce`.
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(()) = changes.recv() => due = Some(tokio::time::Instant::now() + debounce),
                _ = sleep_until(due), if due.is_some() => {
                    due = None;
                    router.reload();
                }
                Some(()) = recv_hangup(&mut hangups) => {
                    info!("SIGHUP: reloading route scripts.");
                    due = None;
                    router.reload();
                }
            }
        }
    });
    Ok(())
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

#[cfg(unix)]
async fn recv_hangup(signals: &mut Hangups) -> Option<()> {
    match signals {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangups) -> Option<()> {
    std::future::pending().await
}
