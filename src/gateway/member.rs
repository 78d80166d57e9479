//! herald's state for one socket: its user and groups, when its token expires, its replay
//! gate, and its share of the presence index and bus subscriptions; the [`Entry`] the presence
//! index keeps for it; and, while it moves to or from another instance, its move's [`Cut`]
//! and the [`Moves`] under way (the protocol is in `moving`).
//!
//! Generic over the socket server's handler (the gateway's `Admission`), which is in turn
//! built of these: the types name each other, the files one way.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::time::Instant;
use tokio::sync::Notify;

use super::presence::Presence;
use crate::bus::{Addressee, Bus};
use crate::replay::{NotificationId, ReplayGate};
use socketio::{Frame, Handler, SocketRef};

/// Cuts remembered before those of sockets gone are dropped.
const PRUNE_OVER: usize = 1024;

/// A socket's groups, sorted; shared by every socket without any.
pub type Groups = Arc<Vec<Arc<str>>>;

static NO_GROUPS: LazyLock<Groups> = LazyLock::new(|| Arc::new(Vec::new()));

fn groups_of(names: &[String]) -> Groups {
    if names.is_empty() { NO_GROUPS.clone() } else { Arc::new(names.iter().map(|g| Arc::from(g.as_str())).collect()) }
}

/// One socket of a user: where to send, and herald's state for it.
pub struct Entry<H: Handler> {
    pub socket: SocketRef<H>,
    pub member: Arc<Member>,
}

impl<H: Handler> Clone for Entry<H> {
    fn clone(&self) -> Self {
        Self { socket: self.socket.clone(), member: self.member.clone() }
    }
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
    cut: Mutex<Option<Arc<Cut>>>,
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
    pub fn takes(&self, on: Addressee<'_>) -> bool {
        !self.moving.load(Ordering::Acquire) || self.cut().is_none_or(|cut| cut.takes(on))
    }

    /// The socket's move, while it moves.
    pub fn cut(&self) -> Option<Arc<Cut>> {
        self.cut.lock().expect("never poisoned").clone()
    }

    /// Starts a move; `false` if one is under way.
    pub fn arm(&self, cut: Arc<Cut>) -> bool {
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
    pub fn leave<H: Handler>(&self, presence: &Presence<Entry<H>>, bus: &Bus) {
        let _one_at_a_time = self.regrouping.lock().expect("never poisoned");
        if !self.left.swap(true, Ordering::AcqRel) {
            let groups = self.groups.load_full();
            presence.leave(self, &groups);
            bus.unsubscribe(Some(&self.user), &groups);
        }
    }

    /// A refresh named other groups: joins the new ones (in the index now, on the bus when
    /// returned future is awaited) and leaves the old ones. Nothing once the socket has left.
    pub fn regroup<H: Handler>(
        &self,
        entry: &Entry<H>,
        new: &[String],
        presence: &Presence<Entry<H>>,
        bus: &Bus,
    ) -> crate::bus::Subscribing {
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

impl<H: Handler> Presence<Entry<H>> {
    /// Removes `member`'s socket from its user and from `groups`.
    pub fn leave(&self, member: &Member, groups: &[Arc<str>]) -> bool {
        self.leave_groups(member, groups);
        self.remove(&member.user, |e| std::ptr::eq(&*e.member, member))
    }

    pub fn leave_groups(&self, member: &Member, groups: &[Arc<str>]) {
        self.remove_from_groups(groups, |e| std::ptr::eq(&*e.member, member));
    }
}

/// One socket's move, as deliveries see it on either instance.
pub struct Cut {
    pub(super) token: u64,
    /// On the new instance: channels are taken once their marker passed; on the old one, until.
    arriving: bool,
    pub(super) groups: Groups,
    /// Whether the marker passed on the user's channel, each group's, then the broadcast one.
    passed: Box<[AtomicBool]>,
    left: AtomicUsize,
    done: Notify,
}

impl Cut {
    pub(super) fn new(token: u64, arriving: bool, groups: Groups) -> Self {
        let channels = groups.len() + 2;
        Self {
            token,
            arriving,
            groups,
            passed: (0..channels).map(|_| AtomicBool::new(false)).collect(),
            left: AtomicUsize::new(channels),
            done: Notify::new(),
        }
    }

    fn channel(&self, on: Addressee<'_>) -> Option<usize> {
        match on {
            Addressee::User(_) => Some(0),
            Addressee::Group { name, .. } => self.groups.iter().position(|g| **g == *name).map(|i| i + 1),
            Addressee::Everyone => Some(self.passed.len() - 1),
        }
    }

    /// Whether this instance delivers to the socket what came on `on`'s channel.
    pub fn takes(&self, on: Addressee<'_>) -> bool {
        self.channel(on).is_none_or(|i| self.passed[i].load(Ordering::Acquire) == self.arriving)
    }

    /// The marker passed on `on`'s channel; whether it was the last one.
    fn pass(&self, on: Addressee<'_>) -> bool {
        let Some(i) = self.channel(on) else { return false };
        if self.passed[i].swap(true, Ordering::AcqRel) || self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        self.done.notify_waiters();
        true
    }

    /// Resolves once every marker passed.
    pub(super) async fn passed_all(&self) {
        loop {
            let notified = self.done.notified();
            if self.left.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// The sockets moving here or from here, by their move's token: the bus hands markers here.
#[derive(Default)]
pub struct Moves {
    cuts: DashMap<u64, Weak<Member>>,
}

impl Moves {
    pub(super) fn arm(&self, member: &Arc<Member>, cut: Cut) -> Option<Arc<Cut>> {
        let (token, cut) = (cut.token, Arc::new(cut));
        if !member.arm(cut.clone()) {
            return None;
        }
        if self.cuts.len() > PRUNE_OVER {
            self.cuts.retain(|_, m| m.strong_count() > 0);
        }
        self.cuts.insert(token, Arc::downgrade(member));
        Some(cut)
    }

    /// A marker came on `on`'s channel. Once every one has, a socket that moved here takes all
    /// its channels and forgets the move (one that left keeps taking none).
    pub fn passed(&self, on: Addressee<'_>, token: u64) {
        let Some(member) = self.cuts.get(&token).and_then(|m| m.upgrade()) else { return };
        let Some(cut) = member.cut().filter(|c| c.token == token) else { return };
        if cut.pass(on) {
            self.cuts.remove(&token);
            if cut.arriving {
                member.moved();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_channel_is_cut_at_its_marker_on_both_sides() {
        let groups: Groups = Arc::new(vec!["a".into(), "b".into()]);
        let (old, new) = (Cut::new(7, false, groups.clone()), Cut::new(7, true, groups));
        let group_a = Addressee::Group { name: "a", among: &[] };
        for on in [Addressee::User("u"), group_a, Addressee::Everyone] {
            assert!(old.takes(on) && !new.takes(on), "before the markers, the old instance delivers");
        }
        assert!(!old.pass(group_a));
        assert!(!new.pass(group_a));
        assert!(!old.takes(group_a) && new.takes(group_a), "after its marker, the new one");
        assert!(old.takes(Addressee::User("u")) && !new.takes(Addressee::User("u")), "other channels wait for theirs");
        assert!(!old.pass(group_a), "a marker counts once");
        assert!(!old.pass(Addressee::User("u")) && !old.pass(Addressee::Group { name: "b", among: &[] }));
        assert!(old.pass(Addressee::Everyone), "the last marker completes the cut");
        assert!(old.takes(Addressee::Group { name: "elsewhere", among: &[] }), "not its channel: nothing to cut");
    }
}
