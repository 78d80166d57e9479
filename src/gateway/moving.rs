//! A socket moving to another instance with its session (its WebSocket upgrade reached that
//! one; see `socketio::engine::moving`) misses nothing and gets nothing twice. Both instances
//! subscribe to its channels while it moves; the old one then publishes a marker on each (its
//! user's, its groups', the broadcast one). Redis keeps each channel's order for every
//! subscriber, so on each channel the notifications before the marker are the old instance's
//! to deliver (it queues them, and hands its queue over) and those after it the new one's.
//!
//! The steps are `Admission`'s (`departing`, `arriving`, `cut`, as the socket server's handler)
//! and each socket's `Cut` (in `member`); here is what they share: what a moving socket carries
//! to the new instance, its move's token, and how long each side waits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a socket about to move may wait for its replay, or a token refresh, to finish.
pub(super) const SETTLE_WAIT: Duration = Duration::from_secs(2);
/// How long the old instance waits for its markers to come back through Redis.
pub(super) const CUT_WAIT: Duration = Duration::from_secs(5);

/// What the new instance needs of a moving socket.
#[derive(Serialize, Deserialize)]
pub(super) struct Moving {
    #[serde(rename = "u")]
    pub(super) user: String,
    #[serde(rename = "g")]
    pub(super) groups: Vec<String>,
    #[serde(rename = "e")]
    pub(super) expires_at: Option<u64>,
    #[serde(rename = "t")]
    pub(super) token: u64,
    /// The replay gate: the newest id replayed, the last live ids sent.
    #[serde(rename = "r")]
    pub(super) replayed_up_to: Option<String>,
    #[serde(rename = "l")]
    pub(super) recent: Vec<String>,
}

/// A move's token: it names the move's markers on every channel.
pub(super) fn random_token() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source");
    u64::from_le_bytes(bytes)
}
