//! Replay: retained notifications get a per-user id, and a client that reconnects with the last
//! id it saw (`auth.since`) first receives what it missed, in order, then live ones, with no
//! gap and no duplicate.
//!
//! It owns the ids, the in-memory history (the Redis one lives in the Redis bus, where the
//! store and the publish are one Lua script), and the per-socket gate that holds live
//! notifications back while a replay is running.

pub mod memory;

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use serde_json::value::RawValue;
use serde_json::{Value, json};

/// A notification's position in its user's history: `<ms>-<seq>`, the form of a Redis stream
/// id, increasing per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NotificationId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for NotificationId {
    type Err = ();

    /// Accepts `<ms>-<seq>` and a bare `<ms>` (as Redis does).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Ok(Self { ms: ms.parse().map_err(|_| ())?, seq: seq.parse().map_err(|_| ())? })
    }
}

/// One retained notification, as read back from a history.
#[derive(Debug, Clone)]
pub struct Retained {
    pub id: NotificationId,
    pub event: String,
    pub payload: Box<RawValue>,
}

/// What a history holds after a given id.
#[derive(Debug, Default)]
pub struct History {
    pub items: Vec<Retained>,
    /// Some notifications after `since` may have been trimmed away: the client should reload.
    pub gap: bool,
}

/// Decides the gap flag from an inclusive read starting at `since`: if `since` itself is still
/// retained nothing after it was trimmed; otherwise something may have been.
pub fn history_after(since: Option<NotificationId>, mut inclusive: Vec<Retained>) -> History {
    match since {
        None => History { items: inclusive, gap: false },
        Some(since) => {
            let still_there = inclusive.first().is_some_and(|r| r.id == since);
            if still_there {
                inclusive.remove(0);
            }
            inclusive.retain(|r| r.id > since);
            History { items: inclusive, gap: !still_there && since != NotificationId::default() }
        }
    }
}

/// Per-socket replay gate: while a replay runs, live retained notifications wait in `pending`;
/// afterwards each is sent unless the replay covered it or it was just sent. It decides and
/// orders; sending is the caller's (`send` runs under the gate's lock, so sends stay in order).
pub struct ReplayGate<T> {
    state: Mutex<GateState<T>>,
}

/// Live retained notifications a gate holds while its replay runs.
pub const MAX_PENDING: usize = 1024;

/// Live ids a gate remembers: enough to recognise a notification published again right after a
/// Redis reconnect, which follows its first copy within a second.
const RECENT_LIVE: usize = 8;

struct GateState<T> {
    replaying: bool,
    /// The newest id the replay sent: a live copy of it or of anything older is a duplicate.
    replayed_up_to: Option<NotificationId>,
    /// The last live ids sent (the default id marks an empty slot). An older id not among them
    /// was never sent live (it reached no instance the first time) and goes out late rather
    /// than not at all.
    recent: [NotificationId; RECENT_LIVE],
    next: usize,
    pending: Vec<(NotificationId, T)>,
}

impl<T> GateState<T> {
    fn admit_replayed(&mut self, id: NotificationId) -> bool {
        if self.replayed_up_to.is_some_and(|last| id <= last) {
            return false;
        }
        self.replayed_up_to = Some(id);
        true
    }

    fn admit_live(&mut self, id: NotificationId) -> bool {
        if self.replayed_up_to.is_some_and(|last| id <= last) || self.recent.contains(&id) {
            return false;
        }
        self.recent[self.next] = id;
        self.next = (self.next + 1) % RECENT_LIVE;
        true
    }
}

impl<T> ReplayGate<T> {
    /// A gate that holds live notifications until [`ReplayGate::open`].
    pub fn closed() -> Self {
        let state = GateState {
            replaying: true,
            replayed_up_to: None,
            recent: [NotificationId::default(); RECENT_LIVE],
            next: 0,
            pending: Vec::new(),
        };
        Self { state: Mutex::new(state) }
    }

    /// A gate moving in with its socket from another instance, open, knowing what that one's
    /// knew ([`ReplayGate::moving_state`]).
    pub fn moved_in(replayed_up_to: Option<NotificationId>, recent: &[NotificationId]) -> Self {
        let gate = Self::closed();
        {
            let mut s = gate.lock();
            s.replaying = false;
            s.replayed_up_to = replayed_up_to;
            for id in recent.iter().take(RECENT_LIVE) {
                let next = s.next;
                s.recent[next] = *id;
                s.next = (next + 1) % RECENT_LIVE;
            }
        }
        gate
    }

    /// What the gate knows, for its socket's move to another instance: the newest id replayed
    /// and the last live ids sent. `None` while the replay runs (the socket moves after it).
    pub fn moving_state(&self) -> Option<(Option<NotificationId>, Vec<NotificationId>)> {
        let s = self.lock();
        if s.replaying {
            return None;
        }
        let recent = (0..RECENT_LIVE).map(|i| s.recent[(s.next + i) % RECENT_LIVE]).filter(|id| *id != NotificationId::default());
        Some((s.replayed_up_to, recent.collect()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live retained notification `id`: sent now, or after the replay; never twice. `false`
    /// when it was dropped: more than [`MAX_PENDING`] arrived during the replay (the client
    /// still finds it in the history with `since`).
    pub fn offer(&self, id: NotificationId, item: T, send: impl FnOnce(&T)) -> bool {
        let mut s = self.lock();
        if s.replaying {
            if s.pending.len() >= MAX_PENDING {
                return false;
            }
            s.pending.push((id, item));
        } else if s.admit_live(id) {
            send(&item);
        }
        true
    }

    /// A replayed notification `id` (history order): sent unless already covered.
    pub fn replay(&self, id: NotificationId, send: impl FnOnce()) {
        let mut s = self.lock();
        if s.admit_replayed(id) {
            send();
        }
    }

    /// Ends the replay: what arrived live meanwhile follows, minus what the replay covered.
    pub fn open(&self, mut send: impl FnMut(&T)) {
        let mut s = self.lock();
        let mut pending = std::mem::take(&mut s.pending);
        pending.sort_by_key(|(id, _)| *id);
        for (id, item) in &pending {
            if s.admit_live(*id) {
                send(item);
            }
        }
        s.replaying = false;
    }
}

/// The second argument of a retained notification: `{ id }`.
pub fn meta(id: NotificationId) -> Value {
    json!({ "id": id.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> NotificationId {
        NotificationId { ms, seq }
    }

    fn item(ms: u64) -> Retained {
        Retained { id: id(ms, 0), event: "n".into(), payload: RawValue::from_string("1".into()).unwrap() }
    }

    #[test]
    fn the_gate_drops_duplicates_but_not_a_late_first_copy() {
        let gate = ReplayGate::<()>::closed();
        let mut s = gate.lock();
        assert!(s.admit_replayed(id(5, 0)) && s.admit_replayed(id(6, 0)));
        assert!(!s.admit_live(id(6, 0)), "a live copy of a replayed one");
        assert!(s.admit_live(id(11, 0)));
        assert!(!s.admit_live(id(11, 0)), "published again after a reconnect, already sent");
        assert!(s.admit_live(id(10, 0)), "reached no instance the first time: goes out late");
        assert!(!s.admit_live(id(10, 0)));
        for ms in 12..12 + RECENT_LIVE as u64 {
            assert!(s.admit_live(id(ms, 0)));
        }
        assert!(!s.admit_live(id(6, 0)), "replayed ones stay covered");
    }

    #[test]
    fn the_gate_holds_live_ones_until_the_replay_ends_then_sends_each_once() {
        let gate = ReplayGate::closed();
        let sent = std::cell::RefCell::new(Vec::new());
        gate.offer(id(7, 0), 7, |n| sent.borrow_mut().push(*n));
        gate.offer(id(5, 0), 5, |n| sent.borrow_mut().push(*n));
        assert!(sent.borrow().is_empty(), "held while replaying");
        gate.replay(id(5, 0), || sent.borrow_mut().push(50));
        gate.open(|n| sent.borrow_mut().push(*n));
        assert_eq!(*sent.borrow(), [50, 7], "5 came in the replay; 7 after it");
        gate.offer(id(8, 0), 8, |n| sent.borrow_mut().push(*n));
        gate.offer(id(8, 0), 8, |n| sent.borrow_mut().push(*n));
        assert_eq!(*sent.borrow(), [50, 7, 8], "a live one goes at once, once");
    }

    #[test]
    fn a_gate_moves_with_what_it_knows() {
        let gate = ReplayGate::closed();
        assert_eq!(gate.moving_state(), None, "not while it replays");
        gate.replay(id(5, 0), || {});
        gate.open(|_: &u8| {});
        gate.offer(id(9, 0), 9, |_| {});
        let (replayed, recent) = gate.moving_state().unwrap();
        assert_eq!((replayed, recent.clone()), (Some(id(5, 0)), vec![id(9, 0)]));
        let moved = ReplayGate::moved_in(replayed, &recent);
        let sent = std::cell::RefCell::new(Vec::new());
        for n in [4, 9, 10] {
            moved.offer(id(n, 0), n, |n| sent.borrow_mut().push(*n));
        }
        assert_eq!(*sent.borrow(), [10], "open at once; what the old gate had sent or covered is not sent again");
    }

    #[test]
    fn ids_parse_print_and_order() {
        assert_eq!("1700-3".parse::<NotificationId>(), Ok(id(1700, 3)));
        assert_eq!("1700".parse::<NotificationId>(), Ok(id(1700, 0)));
        assert!("x-1".parse::<NotificationId>().is_err());
        assert_eq!(id(5, 1).to_string(), "5-1");
        assert!(id(5, 1) < id(5, 2) && id(5, 9) < id(6, 0));
    }

    #[test]
    fn gap_detection() {
        let h = history_after(Some(id(2, 0)), vec![item(2), item(3)]);
        assert_eq!((h.items.len(), h.gap), (1, false), "since still retained: no gap");
        let h = history_after(Some(id(2, 0)), vec![item(5), item(6)]);
        assert_eq!((h.items.len(), h.gap), (2, true), "since trimmed: maybe a gap");
        let h = history_after(Some(NotificationId::default()), vec![item(5)]);
        assert_eq!((h.items.len(), h.gap), (1, false), "0-0 asks for everything");
        let h = history_after(None, vec![item(1)]);
        assert_eq!((h.items.len(), h.gap), (1, false));
    }
}
