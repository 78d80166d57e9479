//! herald's state for one socket: its user, when its token expires, its replay gate, and its
//! share of the user's presence and bus subscription.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::admission::Admission;
use super::presence::Presence;
use crate::bus::Bus;
use crate::replay::{NotificationId, ReplayGate};
use crate::socketio::{Frame, SocketRef};

/// A socket as the gateway holds it.
pub type Client = SocketRef<Admission>;

pub struct Member {
    pub user: Arc<str>,
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
}

impl Member {
    pub fn new(user: Arc<str>, expires_at: Option<u64>, since: Option<NotificationId>) -> Self {
        Self {
            user,
            expires_at: AtomicU64::new(expires_at.unwrap_or(0)),
            gate: ReplayGate::closed(),
            connected_at: Instant::now(),
            since,
            refreshing: AtomicBool::new(false),
            receipts_window: AtomicU64::new(0),
            left: AtomicBool::new(false),
        }
    }

    pub fn expires_at(&self) -> Option<u64> {
        Some(self.expires_at.load(Ordering::Acquire)).filter(|e| *e > 0)
    }

    /// A refresh: the new token's `exp`.
    pub fn set_expires_at(&self, exp: Option<u64>) {
        self.expires_at.store(exp.unwrap_or(0), Ordering::Release);
    }

    /// Leaves the user's presence and bus subscription, the first time only.
    pub fn leave(&self, presence: &Presence, bus: &Bus) {
        if !self.left.swap(true, Ordering::AcqRel) {
            presence.leave(self);
            bus.release(&self.user);
        }
    }
}
