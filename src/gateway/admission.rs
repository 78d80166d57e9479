//! Who may connect, and what becomes of a socket: the socket server's handler. It checks the
//! origin and the connection limits, reads the token from the handshake, authenticates it, and
//! makes the socket a member of its user's presence and bus subscription; then replays what a
//! reconnecting client missed. It records receipts, refreshes tokens, takes a socket's part in a
//! move between instances (see `moving`), and lets a socket go.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tracing::debug;

use super::lifetime::Lifetimes;
use super::member::{Cut, Entry, Member, Moves};
use super::moving::{CUT_WAIT, Moving, SETTLE_WAIT, random_token};
use super::presence::Presence;
use super::receipts;
use super::receipts::Receipts;
use super::revocation::{self, Revocations};
use crate::auth::{AuthError, Authenticator};
use crate::bus::Bus;
use crate::config::{AuthConfig, PerUserLimit, ReplayConfig};
use crate::metrics::{ByLabel, Metrics};
use crate::replay::{self, NotificationId, ReplayGate};
use socketio::{DisconnectReason, Event, Handler, Handshake, SocketRef, event_frame};

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
    pub(super) async fn refresh(&self, socket: &SocketRef<Admission>, data: &Value) -> (Value, Option<Vec<String>>) {
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

impl Admission {
    /// On the old instance: the socket's state for the new one, once its replay and any token
    /// refresh are done; from now on its channels are cut at the markers `cut` publishes.
    pub(super) async fn departing(&self, socket: &SocketRef<Admission>) -> Option<String> {
        let member = socket.data()?.clone();
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        let gate = loop {
            match member.gate.moving_state() {
                Some(gate) if !member.refreshing.load(Ordering::Acquire) => break gate,
                _ if tokio::time::Instant::now() >= deadline => return None,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let groups = member.groups();
        let cut = self.moves.arm(&member, Cut::new(random_token(), false, groups.clone()))?;
        let moving = Moving {
            user: member.user.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: member.expires_at(),
            token: cut.token,
            replayed_up_to: gate.0.map(|id| id.to_string()),
            recent: gate.1.iter().map(NotificationId::to_string).collect(),
        };
        serde_json::to_string(&moving).ok()
    }

    /// On the new instance: the socket's member, in the presence index and subscribed to its
    /// channels (confirmed, before the old instance publishes its markers).
    pub(super) async fn arriving(&self, socket: &SocketRef<Admission>, state: &str) -> Result<Arc<Member>, String> {
        let moving: Moving = serde_json::from_str(state).map_err(|e| e.to_string())?;
        let ids = |s: &str| s.parse::<NotificationId>().ok();
        let recent: Vec<NotificationId> = moving.recent.iter().filter_map(|s| ids(s)).collect();
        let gate = ReplayGate::moved_in(moving.replayed_up_to.as_deref().and_then(ids), &recent);
        let member = Arc::new(Member::moved_in(moving.user.as_str().into(), &moving.groups, moving.expires_at, gate));
        self.moves.arm(&member, Cut::new(moving.token, true, member.groups())).ok_or("armed twice")?;
        let entry = Entry { socket: socket.clone(), member: member.clone() };
        // The same socket as before: the per-user limit was applied when it connected.
        self.presence.try_add(&member.user, entry.clone(), None);
        let groups = member.groups();
        self.presence.join_groups(&entry, &groups);
        self.bus.subscribe(Some(&member.user), &groups).confirmed().await;
        self.lifetimes.track(socket, member.expires_at());
        Ok(member)
    }

    /// On the old instance: publishes the markers and waits for them to come back.
    pub(super) async fn cut(&self, socket: &SocketRef<Admission>) -> bool {
        let Some(member) = socket.data() else { return false };
        let Some(cut) = member.cut() else { return false };
        if let Err(e) = self.bus.publish_cut(cut.token, &member.user, &cut.groups).await {
            tracing::debug!(error = %e, "Could not publish a moving socket's markers.");
            return false;
        }
        tokio::time::timeout(CUT_WAIT, cut.passed_all()).await.is_ok()
    }
}

impl Admission {
    /// A client's receipt: recorded in Kafka, under the socket's own user, then acked.
    fn receipt(self: &Arc<Self>, socket: &SocketRef<Self>, event: Event<'_, Self>) {
        let (Some(receipts), Some(member)) = (self.receipts.clone(), socket.data().cloned()) else { return };
        let data = match (event.args.first(), event.attachments.is_empty()) {
            (Some(arg), true) => serde_json::from_str(arg.get()).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let (ack, socket, metrics) = (event.ack, socket.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let result = receipts.record(&member.user, socket.id(), &member.receipts_window, &data).await;
            metrics.receipt(match &result {
                Ok(()) => "ok",
                Err(receipts::Refused::Failed(_)) => "failed",
                Err(receipts::Refused::RateLimited) => "rate_limited",
                Err(receipts::Refused::Invalid(_)) => "invalid",
            });
            let reply = match result {
                Ok(()) => serde_json::json!({"ok": true}),
                Err(why) => serde_json::json!({"ok": false, "error": why.message()}),
            };
            if let Some(ack) = ack {
                let reply = RawValue::from_string(reply.to_string()).expect("valid JSON");
                let _ = ack.send(&[&reply]);
            }
        });
    }
}

impl Handler for Admission {
    type Data = Arc<Member>;

    async fn connect(self: Arc<Self>, socket: SocketRef<Self>, auth: Option<Box<RawValue>>) -> Result<Arc<Member>, String> {
        self.admit(&socket, auth.as_deref()).await.map_err(|e| e.to_string())
    }

    fn connected(self: &Arc<Self>, socket: &SocketRef<Self>) {
        let Some(member) = socket.data().cloned() else { return };
        let (admission, socket) = (self.clone(), socket.clone());
        tokio::spawn(async move { admission.replay(&socket, &member).await });
    }

    fn event(self: &Arc<Self>, socket: &SocketRef<Self>, event: Event<'_, Self>) {
        if let Some(receipts) = &self.receipts
            && event.name == receipts.event
        {
            return self.receipt(socket, event);
        }
        if event.name != self.refresh_event {
            return;
        }
        let Some(ack) = event.ack else { return };
        // Binary refreshes carry no token.
        let data = match (event.args.first(), event.attachments.is_empty()) {
            (Some(arg), true) => serde_json::from_str(arg.get()).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let Some(member) = socket.data().cloned() else { return };
        if member.refreshing.swap(true, Ordering::AcqRel) {
            let busy = RawValue::from_string(r#"{"ok":false,"error":"refresh in progress"}"#.into()).expect("valid JSON");
            let _ = ack.send(&[&busy]);
            return;
        }
        let (admission, socket) = (self.clone(), socket.clone());
        tokio::spawn(async move {
            let (reply, groups) = admission.refresh(&socket, &data).await;
            if let Some(groups) = groups {
                // Acked once the new groups' notifications reach this instance.
                let entry = Entry { socket: socket.clone(), member: member.clone() };
                member.regroup(&entry, &groups, &admission.presence, &admission.bus).confirmed().await;
            }
            member.refreshing.store(false, Ordering::Release);
            let reply = RawValue::from_string(reply.to_string()).expect("valid JSON");
            let _ = ack.send(&[&reply]);
        });
    }

    async fn departing(self: Arc<Self>, socket: SocketRef<Self>) -> Option<String> {
        Admission::departing(&self, &socket).await
    }

    async fn arriving(self: Arc<Self>, socket: SocketRef<Self>, state: String) -> Result<Arc<Member>, String> {
        Admission::arriving(&self, &socket, &state).await
    }

    async fn cut(self: Arc<Self>, socket: SocketRef<Self>) -> bool {
        Admission::cut(&self, &socket).await
    }

    fn departed(self: &Arc<Self>, socket: &SocketRef<Self>) {
        if let Some(member) = socket.data() {
            member.leave(&self.presence, &self.bus);
        }
    }

    fn disconnected(self: &Arc<Self>, socket: &SocketRef<Self>, _reason: DisconnectReason) {
        if let Some(member) = socket.data() {
            member.leave(&self.presence, &self.bus);
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
