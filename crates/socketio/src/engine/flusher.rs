//! Writes queued WebSocket frames in the background, many per system call. A send only queues
//! its frame and marks its session; the session's flusher task writes each marked session's
//! queue with one `writev`. The more frames a session gets between two of its visits, the more
//! share a system call, so the cost per frame falls as the rate rises (a group commit); when
//! idle, a frame waits for one task wake-up. An engine has several flushers (one per two
//! runtime worker threads by default), each with its own sessions (given in turn as they open),
//! its own list of marked ones and its own task: a broadcast's writes run on as many cores at
//! once, and senders to different sessions mostly take different locks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What a flusher writes: a session whose frames wait. The session implements it, so the
/// flusher need not know sessions (nor sessions' internals know flushers' lists).
pub(crate) trait Marked: Send + Sync + 'static {
    /// Writes what waits; called once per [`Flusher::mark`].
    fn flush_marked(&self);
}

/// Flushers per engine by default: one per two worker threads of the runtime it starts on, at
/// least one. Writing overlaps with the work that sends (decoding, routing, delivering) on the
/// other threads: on two threads one flusher beside the sender measured 2.2 µs of CPU per
/// notification in the single-max burst, two flushers 3.8 (docs/benchmarks.md).
pub(super) fn count() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers() / 2).max(1)
}

pub(crate) struct Flusher<S> {
    marked: Mutex<Vec<Arc<S>>>,
    wake: Notify,
    stopped: AtomicBool,
    /// Packets at least this long go compressed to sessions that negotiated permessage-deflate
    /// (`None`: compression off).
    pub(super) deflate_over: Option<usize>,
}

impl<S: Marked> Flusher<S> {
    pub(super) fn new(deflate_over: Option<usize>) -> Self {
        Self { marked: Mutex::new(Vec::new()), wake: Notify::new(), stopped: AtomicBool::new(false), deflate_over }
    }

    /// `session` has frames to write (it marks itself once until its visit).
    pub(super) fn mark(&self, session: Arc<S>) {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        let first = marked.is_empty();
        marked.push(session);
        drop(marked);
        if first {
            self.wake.notify_one();
        }
    }

    /// Ends the task.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The flushing task.
pub(super) async fn run<S: Marked>(flusher: Arc<Flusher<S>>) {
    let mut batch = Vec::new();
    loop {
        flusher.wake.notified().await;
        if flusher.stopped.load(Ordering::Acquire) {
            return;
        }
        loop {
            std::mem::swap(&mut batch, &mut *flusher.marked.lock().unwrap_or_else(|p| p.into_inner()));
            if batch.is_empty() {
                break;
            }
            for session in batch.drain(..) {
                session.flush_marked();
            }
            // Let the senders run: what they queue meanwhile goes out in the next round.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
    }
}
