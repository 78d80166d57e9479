//! Who may connect: checks the origin and the connection limits, reads the token from the
//! handshake, authenticates it, and makes the socket a member of its user's room and bus
//! subscription for as long as it lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde_json::Value;
use socketioxide::extract::SocketRef;
use tracing::debug;

use super::lifetime::Lifetimes;
use super::presence::Presence;
use crate::auth::{AuthError, Authenticator, Identity};
use crate::bus::Bus;
use crate::config::{AuthConfig, PerUserLimit, ReplayConfig};
use crate::metrics::Metrics;
use crate::replay::{NotificationId, ReplayGate};

pub struct Admission {
    pub authenticator: Authenticator,
    pub bus: Arc<Bus>,
    pub presence: Arc<Presence>,
    pub metrics: Arc<Metrics>,
    pub lifetimes: Lifetimes,
    pub limits: Limits,
    pub replay: ReplayConfig,
}

/// The `since` a client sent in its handshake: replay what it missed after this id.
#[derive(Clone, Copy)]
pub struct ReplaySince(pub Option<NotificationId>);

/// Connection limits, from `auth.*`.
pub struct Limits {
    pub max_sockets: u32,
    pub max_sockets_per_user: u32,
    pub per_user_limit: PerUserLimit,
    pub allowed_origins: Vec<String>,
}

impl Limits {
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            max_sockets: config.max_sockets,
            max_sockets_per_user: config.max_sockets_per_user,
            per_user_limit: config.per_user_limit,
            allowed_origins: config.allowed_origins.clone(),
        }
    }
}

/// When a socket connected, to find a user's oldest socket.
#[derive(Clone, Copy)]
pub struct ConnectedAt(pub Instant);

impl Admission {
    /// Runs before the socket is told it is connected: an `Err` becomes its `connect_error`.
    pub async fn admit(&self, socket: &SocketRef, auth: Option<&Value>) -> Result<(), AuthError> {
        let result = self.try_admit(socket, auth).await;
        if let Err(e) = result {
            self.metrics.auth_rejected(e.rejection());
            debug!(sid = %socket.id, reason = %e, "Refused a connection.");
        }
        result
    }

    async fn try_admit(&self, socket: &SocketRef, auth: Option<&Value>) -> Result<(), AuthError> {
        let parts = socket.req_parts();
        if !self.limits.allowed_origins.is_empty()
            && let Some(origin) = parts.headers.get(http::header::ORIGIN)
            && !self.limits.allowed_origins.iter().any(|o| o.as_bytes() == origin.as_bytes())
        {
            return Err(AuthError::OriginNotAllowed);
        }
        if self.limits.max_sockets > 0 && self.presence.sockets() >= self.limits.max_sockets as usize {
            return Err(AuthError::TooManyConnections);
        }
        let token = token(auth, parts).ok_or(AuthError::MissingToken)?;
        let identity = self.authenticator.authenticate(&token).await?;
        let user_id = identity.user_id.clone();
        let per_user = self.limits.max_sockets_per_user;
        let refuse_over = (per_user > 0 && self.limits.per_user_limit == PerUserLimit::RefuseNew).then_some(per_user);
        if !self.presence.try_add(&user_id, refuse_over) {
            return Err(AuthError::TooManyConnections);
        }
        // Closed until the replay in `on_connect` is done: live retained notifications wait.
        socket.extensions.insert(Arc::new(ReplayGate::closed()));
        let since = auth.and_then(|a| a.get("since")).and_then(|s| match s {
            Value::String(s) => s.parse::<NotificationId>().ok(),
            Value::Number(n) => n.as_u64().map(|ms| NotificationId { ms, seq: 0 }),
            _ => None,
        });
        socket.extensions.insert(ReplaySince(since));
        socket.join(user_id.clone());
        let membership = Membership::join(user_id.clone(), self.bus.clone(), self.presence.clone()).await;
        socket.extensions.insert(Arc::new(membership));
        socket.extensions.insert(ConnectedAt(Instant::now()));
        self.lifetimes.track(socket.id, &identity);
        socket.extensions.insert(identity);
        if per_user > 0 && self.limits.per_user_limit == PerUserLimit::DisconnectOldest {
            self.evict_oldest_over(socket, &user_id, per_user as usize);
        }
        self.metrics.connections.increment(1);
        Ok(())
    }

    /// Runs right after the client is told it is connected: sends what it missed (after its
    /// `since`, or the last few by config), then opens its gate to live notifications.
    pub async fn replay(&self, socket: &SocketRef) {
        let Some(gate) = socket.extensions.get::<Arc<ReplayGate>>() else { return };
        let since = socket.extensions.get::<ReplaySince>().and_then(|s| s.0);
        if since.is_some() || self.replay.last_without_since > 0 {
            let user_id = identity_of(socket).map(|i| i.user_id).unwrap_or_default();
            match self.bus.history(&user_id, since, self.replay.last_without_since).await {
                Ok(history) => {
                    if history.gap {
                        let _ = socket.emit(self.replay.gap_event.as_str(), &serde_json::json!({"since": since.map(|s| s.to_string())}));
                    }
                    self.metrics.replayed.increment(history.items.len() as u64);
                    for item in &history.items {
                        gate.replay(socket, item);
                    }
                }
                Err(e) => {
                    // Without the history the client cannot know what it missed: say so.
                    tracing::warn!(error = %e, "Could not read the replay history.");
                    let _ = socket.emit(
                        self.replay.gap_event.as_str(),
                        &serde_json::json!({"since": since.map(|s| s.to_string()), "error": "history unavailable"}),
                    );
                }
            }
        }
        gate.open(socket);
    }

    /// Disconnects the user's oldest sockets until at most `max` remain (counting the new one).
    fn evict_oldest_over(&self, newest: &SocketRef, user_id: &str, max: usize) {
        let mut sockets: Vec<_> = newest.within(user_id.to_owned()).sockets().into_iter().filter(|s| s.id != newest.id).collect();
        let excess = (sockets.len() + 1).saturating_sub(max);
        sockets.sort_by_key(|s| s.extensions.get::<ConnectedAt>().map(|c| c.0));
        for old in sockets.into_iter().take(excess) {
            debug!(sid = %old.id, "Disconnecting the user's oldest socket (auth.max_sockets_per_user).");
            self.metrics.limit_evictions.increment(1);
            let _ = old.disconnect();
        }
    }
}

/// The token from, in order: the handshake `auth.token`, an `Authorization: Bearer` header,
/// or a `token` query parameter.
fn token(auth: Option<&Value>, parts: &http::request::Parts) -> Option<String> {
    if let Some(t) = auth.and_then(|a| a.get("token")).and_then(Value::as_str).filter(|t| !t.is_empty()) {
        return Some(t.to_owned());
    }
    if let Some(t) = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_owned());
    }
    let query = parts.uri.query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, v)| k == "token" && !v.is_empty()).map(|(_, v)| v.into_owned())
}

/// A socket's share of its user's presence and bus subscription. Leaving happens once: on
/// disconnect, or when the socket is dropped after a failed handshake.
pub struct Membership {
    user_id: String,
    bus: Arc<Bus>,
    presence: Arc<Presence>,
    left: AtomicBool,
}

impl Membership {
    async fn join(user_id: String, bus: Arc<Bus>, presence: Arc<Presence>) -> Self {
        bus.acquire(&user_id).await;
        Self { user_id, bus, presence, left: AtomicBool::new(false) }
    }

    pub fn leave(&self) {
        if !self.left.swap(true, Ordering::AcqRel) {
            self.presence.remove(&self.user_id);
            self.bus.release(&self.user_id);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The identity a socket connected (or last refreshed) with, from its extensions.
pub fn identity_of(socket: &SocketRef) -> Option<Identity> {
    socket.extensions.get::<Identity>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts(uri: &str, auth_header: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = auth_header {
            b = b.header("authorization", h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn token_sources_in_order() {
        let auth = json!({"token": "from-auth"});
        assert_eq!(token(Some(&auth), &parts("/?token=q", Some("Bearer h"))).as_deref(), Some("from-auth"));
        assert_eq!(token(None, &parts("/?token=q", Some("Bearer h"))).as_deref(), Some("h"));
        assert_eq!(token(Some(&json!({"token": ""})), &parts("/?EIO=4&token=a%2Bb", None)).as_deref(), Some("a+b"));
        assert_eq!(token(Some(&json!("just a string")), &parts("/", Some("Basic x"))), None);
        assert_eq!(token(None, &parts("/?token=", None)), None);
    }
}
