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
/// afterwards each is emitted only if newer than the last id the socket got.
#[derive(Default)]
pub struct ReplayGate {
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    replaying: bool,
    last_id: Option<NotificationId>,
    pending: Vec<Retained>,
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
        } else {
            emit_if_newer(&mut s, socket, &item);
        }
    }

    /// Emits a replayed notification (history order).
    pub fn replay(&self, socket: &SocketRef, item: &Retained) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        emit_if_newer(&mut s, socket, item);
    }

    /// Ends the replay: what arrived live meanwhile follows, minus what the replay covered.
    pub fn open(&self, socket: &SocketRef) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = std::mem::take(&mut s.pending);
        pending.sort_by_key(|r| r.id);
        for item in &pending {
            emit_if_newer(&mut s, socket, item);
        }
        s.replaying = false;
    }
}

fn emit_if_newer(s: &mut GateState, socket: &SocketRef, item: &Retained) {
    if s.last_id.is_some_and(|last| item.id <= last) {
        return;
    }
    s.last_id = Some(item.id);
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
