//! A socket moving to another instance with its session (its WebSocket upgrade reached that
//! one; see `socketio::engine::moving`) misses nothing and gets nothing twice. Both instances
//! subscribe to its channels while it moves; the old one then publishes a marker on each (its
//! user's, its groups', the broadcast one). Redis keeps each channel's order for every
//! subscriber, so on each channel the notifications before the marker are the old instance's
//! to deliver (it queues them, and hands its queue over) and those after it the new one's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::admission::Admission;
use super::member::{Cut, Entry, Member};
use crate::replay::{NotificationId, ReplayGate};
use socketio::SocketRef;

/// How long a socket about to move may wait for its replay, or a token refresh, to finish.
const SETTLE_WAIT: Duration = Duration::from_secs(2);
/// How long the old instance waits for its markers to come back through Redis.
pub(super) const CUT_WAIT: Duration = Duration::from_secs(5);

/// What the new instance needs of a moving socket.
#[derive(Serialize, Deserialize)]
struct Moving {
    #[serde(rename = "u")]
    user: String,
    #[serde(rename = "g")]
    groups: Vec<String>,
    #[serde(rename = "e")]
    expires_at: Option<u64>,
    #[serde(rename = "t")]
    token: u64,
    /// The replay gate: the newest id replayed, the last live ids sent.
    #[serde(rename = "r")]
    replayed_up_to: Option<String>,
    #[serde(rename = "l")]
    recent: Vec<String>,
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

fn random_token() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source");
    u64::from_le_bytes(bytes)
}
