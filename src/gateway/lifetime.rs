//! Token lifetime: a socket whose token expires is told (`auth.expired_event`) and
//! disconnected, unless it refreshed first by emitting `auth.refresh_event` with a new token
//! of the same user.
//!
//! One task watches every socket's deadline through a min-heap, instead of a timer per socket:
//! connections stay cheap, and a refresh simply pushes a later deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::admission::identity_of;
use crate::auth::{AuthError, Authenticator, Identity};
use crate::metrics::Metrics;

/// Hands socket deadlines to the expiry task.
#[derive(Clone)]
pub struct Lifetimes {
    deadlines: mpsc::UnboundedSender<(u64, Sid)>,
}

impl Lifetimes {
    /// Starts the expiry task for `io`'s sockets.
    pub fn start(io: SocketIo, expired_event: String, metrics: Arc<Metrics>, cancel: CancellationToken) -> Self {
        let (deadlines, rx) = mpsc::unbounded_channel();
        tokio::spawn(expire(io, rx, expired_event, metrics, cancel));
        Self { deadlines }
    }

    /// Watches the socket until its token's `exp` (no `exp`, no deadline).
    pub fn track(&self, sid: Sid, identity: &Identity) {
        if let Some(exp) = identity.expires_at {
            let _ = self.deadlines.send((exp, sid));
        }
    }
}

async fn expire(
    io: SocketIo,
    mut deadlines: mpsc::UnboundedReceiver<(u64, Sid)>,
    event: String,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut heap: BinaryHeap<Reverse<(u64, Sid)>> = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|Reverse((exp, _))| *exp);
        let sleep = match next {
            Some(exp) => Duration::from_millis((exp * 1000).saturating_sub(now_ms())),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            d = deadlines.recv() => match d {
                Some(d) => heap.push(Reverse(d)),
                None => return,
            },
            _ = tokio::time::sleep(sleep), if next.is_some() => {
                let now_secs = now_ms() / 1000;
                while let Some(Reverse((exp, sid))) = heap.peek().copied() {
                    if exp > now_secs {
                        break;
                    }
                    heap.pop();
                    let Some(socket) = io.get_socket(sid) else { continue };
                    // A refresh moved the deadline: a later entry stands for it.
                    if identity_of(&socket).and_then(|i| i.expires_at).is_some_and(|current| current > now_secs) {
                        continue;
                    }
                    debug!(sid = %sid, "Token expired; disconnecting.");
                    metrics.expired_disconnects.increment(1);
                    let _ = socket.emit(event.as_str(), &json!({"reason": "token expired"}));
                    let _ = socket.disconnect();
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Handles `auth_refresh`: the data is the new token, or `{token}`. Acks `{ok: true,
/// expires_at}` or `{ok: false, error}`.
pub async fn refresh(socket: &SocketRef, data: &Value, authenticator: &Authenticator, lifetimes: &Lifetimes, metrics: &Metrics) -> Value {
    let token = data.as_str().or_else(|| data.get("token").and_then(Value::as_str)).unwrap_or_default();
    let result = match (authenticator.authenticate(token).await, identity_of(socket)) {
        (Ok(new), Some(current)) if new.user_id == current.user_id => Ok(new),
        (Ok(_), _) => Err("token belongs to another user".to_owned()),
        (Err(e), _) => Err(match e {
            AuthError::MissingToken => "missing token".to_owned(),
            other => other.to_string(),
        }),
    };
    metrics.token_refresh(result.is_ok());
    match result {
        Ok(identity) => {
            let expires_at = identity.expires_at;
            lifetimes.track(socket.id, &identity);
            socket.extensions.insert(identity);
            json!({"ok": true, "expires_at": expires_at})
        }
        Err(error) => json!({"ok": false, "error": error}),
    }
}
