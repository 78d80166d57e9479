//! A session's write side: what is queued for its transport, and the transport's state, kept
//! under the session's lock.

use super::encoded::Frame;
use super::packet::{self, SEPARATOR};
use super::queue::Queue;
use super::stats::CloseReason;

/// What a flush left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flushed {
    Empty,
    /// The socket has no room for the rest; `progress` if some went out first.
    Partial {
        progress: bool,
    },
}

/// Why a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session's queue holds `max_queue` frames: the client reads too slowly.
    #[error("the session's send queue is full")]
    Full,
    #[error("the session is closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Polling,
    /// A WebSocket probe succeeded; polling still carries packets until the client's upgrade.
    Upgrading,
    WebSocket,
}

/// The write side, under the session's lock.
pub(super) struct Outbox {
    pub(super) transport: Transport,
    /// WebSocket: frames not yet written, the first one `written` bytes in. Polling: packets
    /// for the next GET. The first frame inline; a buffer only while it holds more.
    pub(super) queue: Queue,
    pub(super) written: usize,
    /// A long-polling GET is waiting for packets.
    pub(super) polling_get: bool,
    /// A WebSocket carrying this session's id is open, to probe an upgrade.
    pub(super) probing: bool,
    /// Closing: no more sends; the transport flushes, says goodbye and ends.
    pub(super) closing: Option<CloseReason>,
    /// WebSocket: marked for the flusher's next round.
    pub(super) marked: bool,
    /// WebSocket: the socket had no room; its task writes the queue when it has.
    pub(super) stalled: bool,
    /// Another instance is taking the session over (its upgrade reached that one).
    pub(super) moving: bool,
}

impl Outbox {
    pub(super) fn new(transport: Transport) -> Self {
        Self {
            transport,
            queue: Queue::Empty,
            written: 0,
            polling_get: false,
            probing: false,
            closing: None,
            marked: false,
            stalled: false,
            moving: false,
        }
    }

    pub(super) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether the WebSocket task must wait for room to write the queue.
    pub(super) fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Takes the packets for a long-polling response, as one payload.
    pub(super) fn take_polling_payload(&mut self, most: usize) -> Vec<u8> {
        if self.queue.len() > most {
            let body = polling_payload(&self.queue.contiguous()[..most]);
            self.queue.drop_front(most);
            return body;
        }
        let body = polling_payload(self.queue.contiguous());
        self.queue.clear();
        body
    }
}

/// `frames` as one long-polling payload.
pub(super) fn polling_payload(frames: &[Frame]) -> Vec<u8> {
    let mut body = Vec::with_capacity(frames.iter().map(|f| f.packet().len() + 1).sum());
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            body.push(SEPARATOR);
        }
        if f.is_binary() {
            packet::write_binary_for_polling(&mut body, f.packet());
        } else {
            body.extend_from_slice(f.packet());
        }
    }
    body
}
