//! Who may connect: checks the origin and the connection limits, reads the token from the
//! handshake, authenticates it, and makes the socket a member of its user's presence and bus
//! subscription; then replays what a reconnecting client missed.

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use tracing::debug;

use super::lifetime::Lifetimes;
use super::member::{Entry, Member, Moves};
use super::presence::Presence;
use super::receipts::Receipts;
use super::revocation::{self, Revocations};
use crate::auth::{AuthError, Authenticator};
use crate::bus::Bus;
use crate::config::{AuthConfig, PerUserLimit, ReplayConfig};
use crate::metrics::{ByLabel, Metrics};
use crate::replay::{self, NotificationId};
use socketio::{Handshake, SocketRef, event_frame};

pub struct Admission {
    pub authenticator: Authenticator,
    pub bus: Arc<Bus>,
    pub presence: Arc<Presence<Entry<Admission>>>,
    pub metrics: Arc<Metrics>,
    /// Connections refused, by reason (`metrics.by_label(AUTH_REJECTIONS)`).
    pub rejections: ByLabel<AuthError>,
    pub lifetimes: Lifetimes<Admission>,
    pub limits: Limits,
    pub replay: ReplayConfig,
    /// The event clients emit with a fresh token.
    pub refresh_event: String,
    /// Where clients' receipts go; `None` without `kafka.receipts_topic`.
    pub receipts: Option<Arc<Receipts>>,
    /// Users whose tokens were revoked, as this instance heard (Redis has the rest).
    pub revocations: Arc<Revocations>,
    /// Sockets moving between this instance and others, shared with the `Deliverer`.
    pub moves: Arc<Moves>,
}

/// Connection limits, from `auth.*`.
pub struct Limits {
    pub max_sockets: u32,
    pub max_sockets_per_user: u32,
    pub per_user_limit: PerUserLimit,
    pub allowed_origins: Vec<String>,
    pub max_groups_per_socket: usize,
}

impl Limits {
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            max_sockets: config.max_sockets,
            max_sockets_per_user: config.max_sockets_per_user,
            per_user_limit: config.per_user_limit,
            allowed_origins: config.allowed_origins.clone(),
            max_groups_per_socket: config.max_groups_per_socket,
        }
    }
}

impl Admission {
    /// Runs before the socket is told it is connected: an `Err` becomes its `connect_error`.
    pub async fn admit(&self, socket: &SocketRef<Admission>, auth: Option<&RawValue>) -> Result<Arc<Member>, AuthError> {
        let auth: Option<Value> = auth.and_then(|a| serde_json::from_str(a.get()).ok());
        let result = self.try_admit(socket, auth.as_ref()).await;
        if let Err(e) = &result {
            self.rejections.increment(*e, 1);
            debug!(sid = socket.id(), reason = %e, "Refused a connection.");
        }
        result
    }

    async fn try_admit(&self, socket: &SocketRef<Admission>, auth: Option<&Value>) -> Result<Arc<Member>, AuthError> {
        let handshake = socket.handshake();
        if !self.limits.allowed_origins.is_empty()
            && let Some(origin) = handshake.header("origin")
            && !self.limits.allowed_origins.iter().any(|o| o == origin)
        {
            return Err(AuthError::OriginNotAllowed);
        }
        if self.limits.max_sockets > 0 && self.presence.sockets() >= self.limits.max_sockets as usize {
            return Err(AuthError::TooManyConnections);
        }
        let token = token(auth, handshake).ok_or(AuthError::MissingToken)?;
        let identity = self.verify(&token).await?;
        if identity.groups.len() > self.limits.max_groups_per_socket {
            return Err(AuthError::TooManyGroups);
        }
        let since = auth.and_then(|a| a.get("since")).and_then(|s| match s {
            Value::String(s) => s.parse::<NotificationId>().ok(),
            Value::Number(n) => n.as_u64().map(|ms| NotificationId { ms, seq: 0 }),
            _ => None,
        });
        let user: Arc<str> = identity.user_id.as_str().into();
        let member = Arc::new(Member::new(user.clone(), &identity.groups, identity.expires_at, since));
        let per_user = self.limits.max_sockets_per_user;
        let refuse_over = (per_user > 0 && self.limits.per_user_limit == PerUserLimit::RefuseNew).then_some(per_user);
        let entry = Entry { socket: socket.clone(), member: member.clone() };
        if !self.presence.try_add(&user, entry.clone(), refuse_over) {
            return Err(AuthError::TooManyConnections);
        }
        let groups = member.groups();
        self.presence.join_groups(&entry, &groups);
        // Before the client hears it is connected, this instance receives its notifications.
        self.bus.subscribe(Some(&user), &groups).confirmed().await;
        if per_user > 0 && self.limits.per_user_limit == PerUserLimit::DisconnectOldest {
            self.evict_oldest_over(&member, per_user as usize);
        }
        self.metrics.connections.increment(1);
        Ok(member)
    }

    /// Authenticates a token and refuses it if its user's tokens were revoked after it was
    /// issued: what this instance heard through the bus first, then what Redis keeps (for
    /// revocations from before this instance started). Redis unreachable: the instance's own
    /// knowledge decides, as admission goes on during an outage.
    pub async fn verify(&self, token: &str) -> Result<crate::auth::Identity, AuthError> {
        let identity = self.authenticator.authenticate(token).await?;
        let known = self.revocations.revoked_at(&identity.user_id);
        revocation::check(&identity, known)?;
        match self.bus.revoked_at(&identity.user_id).await {
            Ok(recorded) => revocation::check(&identity, recorded)?,
            Err(e) => debug!(error = %e, "Could not read the user's revocation; going by this instance's own."),
        }
        Ok(identity)
    }

    /// Runs right after the client is told it is connected: sends what it missed (after its
    /// `since`, or the last few by config), then opens its gate to live notifications.
    pub async fn replay(&self, socket: &SocketRef<Admission>, member: &Member) {
        // Watched from now on: a deadline that passes while the socket is still connecting
        // would find it not connected yet.
        self.lifetimes.track(socket, member.expires_at());
        let since = member.since;
        if since.is_some() || self.replay.last_without_since > 0 {
            match self.bus.history(&member.user, since, self.replay.last_without_since).await {
                Ok(history) => {
                    if history.gap {
                        let gap = serde_json::json!({"since": since.map(|s| s.to_string())}).to_string();
                        let _ = socket.emit(&self.replay.gap_event, &[&raw(gap)]);
                    }
                    self.metrics.replayed.increment(history.items.len() as u64);
                    for item in &history.items {
                        member.gate.replay(item.id, || {
                            let meta = raw(replay::meta(item.id).to_string());
                            // A full buffer drops it like any emit; the client can still recover it with `since`.
                            let _ = socket.send(&event_frame(socket.namespace(), &item.event, &[&item.payload, &meta]));
                        });
                    }
                }
                Err(e) => {
                    // Without the history the client cannot know what it missed: say so.
                    tracing::warn!(error = %e, "Could not read the replay history.");
                    let gap = serde_json::json!({"since": since.map(|s| s.to_string()), "error": "history unavailable"});
                    let _ = socket.emit(&self.replay.gap_event, &[&raw(gap.to_string())]);
                }
            }
        }
        member.gate.open(|frame| {
            let _ = socket.send(frame);
        });
    }

    /// Handles `auth_refresh`: the data is the new token, or `{token}`. Returns the ack, `{ok:
    /// true, expires_at}` or `{ok: false, error}`, and on success the groups the new token names.
    pub async fn refresh(&self, socket: &SocketRef<Admission>, data: &Value) -> (Value, Option<Vec<String>>) {
        let token = data.as_str().or_else(|| data.get("token").and_then(Value::as_str)).unwrap_or_default();
        let Some(member) = socket.data() else { return (serde_json::json!({"ok": false, "error": "not connected"}), None) };
        let result = match self.verify(token).await {
            Ok(new) if *new.user_id != *member.user => Err("token belongs to another user".to_owned()),
            Ok(new) if new.groups.len() > self.limits.max_groups_per_socket => Err(AuthError::TooManyGroups.to_string()),
            Ok(new) => Ok(new),
            Err(AuthError::MissingToken) => Err("missing token".to_owned()),
            Err(other) => Err(other.to_string()),
        };
        self.metrics.token_refresh(result.is_ok());
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
                    self.lifetimes.track(socket, identity.expires_at);
                }
                (serde_json::json!({"ok": true, "expires_at": identity.expires_at}), Some(identity.groups))
            }
            Err(error) => (serde_json::json!({"ok": false, "error": error}), None),
        }
    }

    /// Disconnects the user's oldest sockets until at most `max` remain (counting the new one).
    fn evict_oldest_over(&self, newest: &Member, max: usize) {
        let mut others: Vec<Entry<Admission>> =
            self.presence.sockets_snapshot(&newest.user).into_iter().filter(|e| !std::ptr::eq(&*e.member, newest)).collect();
        let excess = (others.len() + 1).saturating_sub(max);
        others.sort_by_key(|e| e.member.connected_at);
        for old in others.into_iter().take(excess) {
            debug!(sid = old.socket.id(), "Disconnecting the user's oldest socket (auth.max_sockets_per_user).");
            self.metrics.limit_evictions.increment(1);
            old.member.leave(&self.presence, &self.bus);
            old.socket.disconnect();
        }
    }
}

fn raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json).expect("serde_json writes valid JSON")
}

/// The token from, in order: the handshake `auth.token`, an `Authorization: Bearer` header,
/// or a `token` query parameter.
fn token(auth: Option<&Value>, handshake: &Handshake) -> Option<String> {
    if let Some(t) = auth.and_then(|a| a.get("token")).and_then(Value::as_str).filter(|t| !t.is_empty()) {
        return Some(t.to_owned());
    }
    if let Some(t) = handshake
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_owned());
    }
    handshake.query_param("token").filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn handshake(query: &str, auth_header: Option<&str>) -> Handshake {
        let headers = auth_header.map(|h| ("authorization", Box::<str>::from(h))).into_iter().collect();
        Handshake { query: query.into(), headers }
    }

    #[test]
    fn token_sources_in_order() {
        let auth = json!({"token": "from-auth"});
        assert_eq!(token(Some(&auth), &handshake("token=q", Some("Bearer h"))).as_deref(), Some("from-auth"));
        assert_eq!(token(None, &handshake("token=q", Some("Bearer h"))).as_deref(), Some("h"));
        assert_eq!(token(Some(&json!({"token": ""})), &handshake("EIO=4&token=a%2Bb", None)).as_deref(), Some("a+b"));
        assert_eq!(token(Some(&json!("just a string")), &handshake("", Some("Basic x"))), None);
        assert_eq!(token(None, &handshake("token=", None)), None);
    }
}
