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
use socketioxide::extract::SocketRef;

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
/// afterwards each is emitted unless the replay covered it or it was just emitted.
#[derive(Default)]
pub struct ReplayGate {
    state: Mutex<GateState>,
}

/// Live ids a gate remembers: enough to recognise a notification published again right after a
/// Redis reconnect, which follows its first copy within a second.
const RECENT_LIVE: usize = 8;

#[derive(Default)]
struct GateState {
    replaying: bool,
    /// The newest id the replay emitted: a live copy of it or of anything older is a duplicate.
    replayed_up_to: Option<NotificationId>,
    /// The last live ids emitted (the default id marks an empty slot). An older id not among
    /// them was never sent live (it reached no instance the first time) and goes out late
    /// rather than not at all.
    recent: [NotificationId; RECENT_LIVE],
    next: usize,
    pending: Vec<Retained>,
}

impl GateState {
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

impl ReplayGate {
    /// A gate that holds live notifications until [`ReplayGate::open`].
    pub fn closed() -> Self {
        Self { state: Mutex::new(GateState { replaying: true, ..Default::default() }) }
    }

    /// A live retained notification for this socket: emitted now, or after the replay.
    pub fn offer(&self, socket: &SocketRef, item: Retained) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.replaying {
            s.pending.push(item);
        } else if s.admit_live(item.id) {
            emit(socket, &item);
        }
    }

    /// Emits a replayed notification (history order).
    pub fn replay(&self, socket: &SocketRef, item: &Retained) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.admit_replayed(item.id) {
            emit(socket, item);
        }
    }

    /// Ends the replay: what arrived live meanwhile follows, minus what the replay covered.
    pub fn open(&self, socket: &SocketRef) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = std::mem::take(&mut s.pending);
        pending.sort_by_key(|r| r.id);
        for item in &pending {
            if s.admit_live(item.id) {
                emit(socket, item);
            }
        }
        s.replaying = false;
    }
}

fn emit(socket: &SocketRef, item: &Retained) {
    // A full buffer drops it like any emit; the client can still recover it with `since`.
    let _ = socket.emit(item.event.as_str(), &(&*item.payload, meta(item.id)));
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
        let mut s = GateState::default();
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
