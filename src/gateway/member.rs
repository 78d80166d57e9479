//! herald's state for one socket: its user and groups, when its token expires, its replay
//! gate, and its share of the presence index and bus subscriptions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use arc_swap::ArcSwap;
use std::time::Instant;

use super::presence::Presence;
use crate::bus::Bus;
use crate::replay::{NotificationId, ReplayGate};
use socketio::Frame;

/// A socket's groups, sorted; shared by every socket without any.
pub type Groups = Arc<Vec<Arc<str>>>;

static NO_GROUPS: LazyLock<Groups> = LazyLock::new(|| Arc::new(Vec::new()));

fn groups_of(names: &[String]) -> Groups {
    if names.is_empty() { NO_GROUPS.clone() } else { Arc::new(names.iter().map(|g| Arc::from(g.as_str())).collect()) }
}

pub struct Member {
    pub user: Arc<str>,
    /// Read without a lock by deliveries (which hold the presence index's shard locks); changed
    /// by a token refresh under `regrouping`, so a refresh and a leave cannot interleave.
    groups: ArcSwap<Vec<Arc<str>>>,
    regrouping: Mutex<()>,
    /// `exp` of its current token, in seconds since the epoch; 0: none.
    expires_at: AtomicU64,
    /// Closed until the replay after connecting is done: live retained notifications wait.
    pub gate: ReplayGate<Frame>,
    pub connected_at: Instant,
    /// The `since` it connected with: replay what it missed after this id.
    pub since: Option<NotificationId>,
    /// A token refresh is being checked: one at a time, so a client cannot pile them up.
    pub refreshing: AtomicBool,
    /// Receipts sent in the current second (see `receipts::take`).
    pub receipts_window: AtomicU64,
    left: AtomicBool,
    /// Set while the socket moves between instances (and after, on the old one); `moving`
    /// lets deliveries skip the lock otherwise.
    moving: AtomicBool,
    cut: Mutex<Option<Arc<super::moving::Cut>>>,
}

impl Member {
    pub fn new(user: Arc<str>, groups: &[String], expires_at: Option<u64>, since: Option<NotificationId>) -> Self {
        Self::with_gate(user, groups, expires_at, since, ReplayGate::closed())
    }

    /// A socket moved here from another instance, its replay long done there.
    pub fn moved_in(user: Arc<str>, groups: &[String], expires_at: Option<u64>, gate: ReplayGate<Frame>) -> Self {
        Self::with_gate(user, groups, expires_at, None, gate)
    }

    fn with_gate(
        user: Arc<str>,
        groups: &[String],
        expires_at: Option<u64>,
        since: Option<NotificationId>,
        gate: ReplayGate<Frame>,
    ) -> Self {
        Self {
            user,
            groups: ArcSwap::new(groups_of(groups)),
            regrouping: Mutex::new(()),
            expires_at: AtomicU64::new(expires_at.unwrap_or(0)),
            gate,
            connected_at: Instant::now(),
            since,
            refreshing: AtomicBool::new(false),
            receipts_window: AtomicU64::new(0),
            left: AtomicBool::new(false),
            moving: AtomicBool::new(false),
            cut: Mutex::new(None),
        }
    }

    /// Whether this instance delivers to the socket what came on `on`'s channel (not while
    /// another instance does, as the socket moves).
    pub fn takes(&self, on: crate::bus::Addressee<'_>) -> bool {
        !self.moving.load(Ordering::Acquire) || self.cut().is_none_or(|cut| cut.takes(on))
    }

    /// The socket's move, while it moves.
    pub fn cut(&self) -> Option<Arc<super::moving::Cut>> {
        self.cut.lock().expect("never poisoned").clone()
    }

    /// Starts a move; `false` if one is under way.
    pub fn arm(&self, cut: Arc<super::moving::Cut>) -> bool {
        let mut current = self.cut.lock().expect("never poisoned");
        if current.is_some() {
            return false;
        }
        *current = Some(cut);
        self.moving.store(true, Ordering::Release);
        true
    }

    /// The move is over here: the socket takes every channel again.
    pub fn moved(&self) {
        self.moving.store(false, Ordering::Release);
        *self.cut.lock().expect("never poisoned") = None;
    }

    pub fn expires_at(&self) -> Option<u64> {
        Some(self.expires_at.load(Ordering::Acquire)).filter(|e| *e > 0)
    }

    /// A refresh: the new token's `exp`.
    pub fn set_expires_at(&self, exp: Option<u64>) {
        self.expires_at.store(exp.unwrap_or(0), Ordering::Release);
    }

    pub fn groups(&self) -> Groups {
        self.groups.load_full()
    }

    /// Whether the socket belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.load().binary_search_by(|g| (**g).cmp(group)).is_ok()
    }

    /// Leaves the presence index and bus subscriptions, the first time only.
    pub fn leave(&self, presence: &Presence, bus: &Bus) {
        let _one_at_a_time = self.regrouping.lock().expect("never poisoned");
        if !self.left.swap(true, Ordering::AcqRel) {
            let groups = self.groups.load_full();
            presence.leave(self, &groups);
            bus.unsubscribe(Some(&self.user), &groups);
        }
    }

    /// A refresh named other groups: joins the new ones (in the index now, on the bus when
    /// returned future is awaited) and leaves the old ones. Nothing once the socket has left.
    pub fn regroup(&self, entry: &super::Entry, new: &[String], presence: &Presence, bus: &Bus) -> crate::bus::Subscribing {
        let _one_at_a_time = self.regrouping.lock().expect("never poisoned");
        if self.left.load(Ordering::Acquire) {
            return crate::bus::Subscribing::done();
        }
        let (groups, new) = (self.groups.load_full(), groups_of(new));
        let has = |set: &Groups, g: &Arc<str>| set.binary_search(g).is_ok();
        let added: Vec<Arc<str>> = new.iter().filter(|g| !has(&groups, g)).cloned().collect();
        let removed: Vec<Arc<str>> = groups.iter().filter(|g| !has(&new, g)).cloned().collect();
        presence.join_groups(entry, &added);
        presence.leave_groups(self, &removed);
        bus.unsubscribe(None, &removed);
        self.groups.store(new);
        bus.subscribe(None, &added)
    }
}
