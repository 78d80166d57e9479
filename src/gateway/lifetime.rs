//! Token lifetime: a socket whose token expires is told (`auth.expired_event`) and
//! disconnected, unless it refreshed first by emitting `auth.refresh_event` with a new token
//! of the same user.
//!
//! One task watches every socket's deadline through a min-heap, instead of a timer per socket:
//! connections stay cheap. A socket has one entry: when it comes due after a refresh, it is
//! put back for the new `exp`. The heap holds weak references, and drops those of sockets gone
//! when it has doubled since it last did.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::admission::Admission;
use crate::auth::AuthError;
use crate::metrics::Metrics;
use socketio::{Socket, SocketRef};

/// A deadline: `exp` in seconds, and the socket it is for.
struct Deadline(u64, Weak<Socket<Admission>>);

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Hands socket deadlines to the expiry task.
#[derive(Clone)]
pub struct Lifetimes {
    deadlines: mpsc::UnboundedSender<Deadline>,
}

impl Lifetimes {
    /// Starts the expiry task.
    pub fn start(expired_event: String, metrics: Arc<Metrics>, supervisor: &crate::supervise::Supervisor) -> Self {
        let (deadlines, rx) = mpsc::unbounded_channel();
        supervisor.spawn("token lifetimes", expire(rx, expired_event, metrics, supervisor.stop_token()));
        Self { deadlines }
    }

    /// Watches the socket until its token's `exp` (no `exp`, no deadline).
    pub fn track(&self, socket: &SocketRef<Admission>, expires_at: Option<u64>) {
        if let Some(exp) = expires_at {
            let _ = self.deadlines.send(Deadline(exp, Arc::downgrade(socket)));
        }
    }
}

async fn expire(mut deadlines: mpsc::UnboundedReceiver<Deadline>, event: String, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let mut heap: BinaryHeap<Reverse<Deadline>> = BinaryHeap::new();
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

/// Handles `auth_refresh`: the data is the new token, or `{token}`. Returns the ack, `{ok:
/// true, expires_at}` or `{ok: false, error}`, and on success the groups the new token names.
pub async fn refresh(
    socket: &SocketRef<Admission>,
    data: &Value,
    admission: &super::Admission,
    lifetimes: &Lifetimes,
    max_groups: usize,
    metrics: &Metrics,
) -> (Value, Option<Vec<String>>) {
    let token = data.as_str().or_else(|| data.get("token").and_then(Value::as_str)).unwrap_or_default();
    let Some(member) = socket.data() else { return (serde_json::json!({"ok": false, "error": "not connected"}), None) };
    let result = match admission.verify(token).await {
        Ok(new) if *new.user_id != *member.user => Err("token belongs to another user".to_owned()),
        Ok(new) if new.groups.len() > max_groups => Err(AuthError::TooManyGroups.to_string()),
        Ok(new) => Ok(new),
        Err(AuthError::MissingToken) => Err("missing token".to_owned()),
        Err(other) => Err(other.to_string()),
    };
    metrics.token_refresh(result.is_ok());
    match result {
        Ok(identity) => {
            // The socket's entry is re-armed for a later `exp` when it comes due; a new entry is
            // needed only for an earlier one (or a first one), so refreshes do not pile entries up.
            let earlier = match (member.expires_at(), identity.expires_at) {
                (Some(old), Some(new)) => new < old,
                (None, Some(_)) => true,
                _ => false,
            };
            member.set_expires_at(identity.expires_at);
            if earlier {
                lifetimes.track(socket, identity.expires_at);
            }
            (serde_json::json!({"ok": true, "expires_at": identity.expires_at}), Some(identity.groups))
        }
        Err(error) => (serde_json::json!({"ok": false, "error": error}), None),
    }
}
