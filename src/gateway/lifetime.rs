//! Token lifetime: a socket whose token expires is told (`auth.expired_event`) and
//! disconnected, unless it refreshed first by emitting `auth.refresh_event` with a new token
//! of the same user (`Admission::refresh`).
//!
//! One task watches every socket's deadline through a min-heap, instead of a timer per socket:
//! connections stay cheap. A socket has one entry: when it comes due after a refresh, it is
//! put back for the new `exp`. The heap holds weak references, and drops those of sockets gone
//! when it has doubled since it last did.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::member::Member;
use crate::metrics::Metrics;
use socketio::{Handler, Socket, SocketRef};

/// A deadline: `exp` in seconds, and the socket it is for.
struct Deadline<H: Handler>(u64, Weak<Socket<H>>);

impl<H: Handler> PartialEq for Deadline<H> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<H: Handler> Eq for Deadline<H> {}
impl<H: Handler> PartialOrd for Deadline<H> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<H: Handler> Ord for Deadline<H> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Hands socket deadlines to the expiry task. Generic over the socket server's handler (the
/// gateway's `Admission`, which holds this).
pub struct Lifetimes<H: Handler> {
    deadlines: mpsc::UnboundedSender<Deadline<H>>,
}

impl<H: Handler<Data = Arc<Member>>> Lifetimes<H>
where
    // Assumed here and proven where `H` is known: proving it for any `H` recurses without end.
    Socket<H>: Send + Sync,
{
    /// Starts the expiry task.
    pub fn start(expired_event: String, metrics: Arc<Metrics>, supervisor: &crate::supervise::Supervisor) -> Self {
        let (deadlines, rx) = mpsc::unbounded_channel();
        supervisor.spawn("token lifetimes", expire(rx, expired_event, metrics, supervisor.stop_token()));
        Self { deadlines }
    }

    /// Watches the socket until its token's `exp` (no `exp`, no deadline).
    pub fn track(&self, socket: &SocketRef<H>, expires_at: Option<u64>) {
        if let Some(exp) = expires_at {
            let _ = self.deadlines.send(Deadline(exp, Arc::downgrade(socket)));
        }
    }
}

async fn expire<H: Handler<Data = Arc<Member>>>(
    mut deadlines: mpsc::UnboundedReceiver<Deadline<H>>,
    event: String,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) where
    Socket<H>: Send + Sync,
{
    let mut heap: BinaryHeap<Reverse<Deadline<H>>> = BinaryHeap::new();
    // Entries of sockets gone are dropped when the heap outgrows this (amortised: it doubles).
    let mut compact_at = 1024;
    let reason = RawValue::from_string(r#"{"reason":"token expired"}"#.into()).expect("valid JSON");
    loop {
        let next = heap.peek().map(|Reverse(d)| d.0);
        let sleep = match next {
            Some(exp) => Duration::from_millis(exp.saturating_mul(1000).saturating_sub(crate::clock::unix_ms().max(0) as u64)),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            d = deadlines.recv() => match d {
                Some(d) => {
                    heap.push(Reverse(d));
                    if heap.len() > compact_at {
                        heap.retain(|Reverse(d)| d.1.strong_count() > 0);
                        compact_at = (2 * heap.len()).max(1024);
                    }
                }
                None => return,
            },
            _ = tokio::time::sleep(sleep), if next.is_some() => {
                let now_secs = crate::clock::unix_ms().max(0) as u64 / 1000;
                while heap.peek().is_some_and(|Reverse(d)| d.0 <= now_secs) {
                    let Some(Reverse(Deadline(_, weak))) = heap.pop() else { break };
                    let Some(socket) = weak.upgrade().filter(|s| s.is_connected()) else { continue };
                    // A refresh moved the deadline: this entry now stands for the new one.
                    match socket.data().and_then(|m| m.expires_at()) {
                        Some(current) if current > now_secs => {
                            heap.push(Reverse(Deadline(current, weak)));
                            continue;
                        }
                        None => continue,
                        Some(_) => {}
                    }
                    debug!(sid = socket.id(), "Token expired; disconnecting.");
                    metrics.expired_disconnects.increment(1);
                    let _ = socket.emit(&event, &[&reason]);
                    socket.disconnect();
                }
            }
        }
    }
}
