//! Who may connect: reads the token from the handshake, verifies it, and makes the socket a
//! member of its user's room and bus subscription for as long as it lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use socketioxide::extract::SocketRef;
use tracing::debug;

use super::presence::Presence;
use crate::auth::{AuthError, Identity, Verifier};
use crate::bus::Bus;
use crate::metrics::Metrics;

pub struct Admission {
    pub verifier: Verifier,
    pub bus: Arc<Bus>,
    pub presence: Arc<Presence>,
    pub metrics: Arc<Metrics>,
}

impl Admission {
    /// Runs before the socket is told it is connected: an `Err` becomes its `connect_error`.
    pub async fn admit(&self, socket: &SocketRef, auth: Option<&Value>) -> Result<(), AuthError> {
        let identity = match token(auth, socket.req_parts()).ok_or(AuthError::MissingToken).and_then(|t| self.verifier.verify(&t)) {
            Ok(identity) => identity,
            Err(e) => {
                self.metrics.auth_rejected(e.rejection());
                debug!(sid = %socket.id, reason = %e, "Refused a connection.");
                return Err(e);
            }
        };
        socket.join(identity.user_id.clone());
        let membership = Membership::join(identity.user_id.clone(), self.bus.clone(), self.presence.clone()).await;
        socket.extensions.insert(Arc::new(membership));
        socket.extensions.insert(identity);
        self.metrics.connections.increment(1);
        Ok(())
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
        presence.add(&user_id);
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

/// The identity a socket connected with, from its extensions.
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
