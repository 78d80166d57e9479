//! Why a session ends, what a client did wrong, and the counters an embedding application can
//! export: sessions by transport, sessions closed by reason, and protocol errors by kind. Plain
//! atomics, read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the transport (or the connection dropped).
    TransportClose,
    /// The client sent a close packet.
    ClientClose,
    PingTimeout,
    /// The layer above never joined it in time.
    JoinTimeout,
    /// The client sent something the protocol does not allow.
    ProtocolError,
    /// The client took no data for the write timeout.
    WriteTimeout,
    /// The client asked for more answers (pongs, refusals) than it read, past the room kept
    /// for them.
    Flood,
    /// The layer above closed it.
    ServerClose,
    ServerShutdown,
    /// The session went on to another instance, with its WebSocket upgrade.
    Moved,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::TransportClose => "transport close",
            Self::ClientClose => "client close",
            Self::PingTimeout => "ping timeout",
            Self::JoinTimeout => "join timeout",
            Self::ProtocolError => "protocol error",
            Self::WriteTimeout => "write timeout",
            Self::Flood => "flood",
            Self::ServerClose => "server close",
            Self::ServerShutdown => "server shutdown",
            Self::Moved => "moved",
        }
    }
}

/// What a client did wrong; each closes its connection or session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not HTTP, or an HTTP request herald cannot serve (bad head, bad body, too large).
    BadHttp,
    /// A query Engine.IO does not accept: unknown transport, missing or unknown sid, `EIO` not 4.
    BadHandshake,
    /// A WebSocket frame breaking RFC 6455: unmasked, reserved bits, bad control frame, bad
    /// fragmentation.
    BadFrame,
    /// A message, frame or request body over the payload limit.
    TooLarge,
    /// Text that is not UTF-8.
    BadUtf8,
    /// An Engine.IO packet that cannot be read, or is not allowed then.
    BadEnginePacket,
    /// A Socket.IO packet that cannot be read, or is not allowed then.
    BadSocketPacket,
    /// A second long-polling GET while one is waiting.
    OverlappingPoll,
    /// Requests for answers (pings, CONNECTs) faster than the client reads them.
    Flood,
}

impl ProtocolError {
    pub const ALL: [ProtocolError; 9] = [
        Self::BadHttp,
        Self::BadHandshake,
        Self::BadFrame,
        Self::TooLarge,
        Self::BadUtf8,
        Self::BadEnginePacket,
        Self::BadSocketPacket,
        Self::OverlappingPoll,
        Self::Flood,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::BadHttp => "bad_http",
            Self::BadHandshake => "bad_handshake",
            Self::BadFrame => "bad_frame",
            Self::TooLarge => "too_large",
            Self::BadUtf8 => "bad_utf8",
            Self::BadEnginePacket => "bad_engine_packet",
            Self::BadSocketPacket => "bad_socket_packet",
            Self::OverlappingPoll => "overlapping_poll",
            Self::Flood => "flood",
        }
    }
}

/// Why a request was cut off before all of it had arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// Its head was not complete `server.connect_timeout_ms` after it started.
    HeadTimeout,
    /// Its body was not complete `server.connect_timeout_ms` after its head.
    BodyTimeout,
    /// Answered from its head, its body unread: no body could have made it succeed (a
    /// polling POST without a session or for an unknown one, a body over the limit).
    AnsweredFromHead,
}

impl Cutoff {
    pub const ALL: [Cutoff; 3] = [Self::HeadTimeout, Self::BodyTimeout, Self::AnsweredFromHead];

    pub fn label(self) -> &'static str {
        match self {
            Self::HeadTimeout => "head_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::AnsweredFromHead => "answered_from_head",
        }
    }
}

#[derive(Default)]
pub struct Stats {
    protocol_errors: [AtomicU64; ProtocolError::ALL.len()],
    cutoffs: [AtomicU64; Cutoff::ALL.len()],
    opened_websocket: AtomicU64,
    opened_polling: AtomicU64,
    upgrades: AtomicU64,
    ping_timeouts: AtomicU64,
    write_timeouts: AtomicU64,
    forwarded_out: AtomicU64,
    forwarded_in: AtomicU64,
    moved_in: AtomicU64,
    moved_out: AtomicU64,
    moves_failed: AtomicU64,
    /// Shared with every session, which counts its writes here.
    pub(super) writes: std::sync::Arc<WriteCounts>,
}

/// WebSocket writes (system calls) and the frames they completed: frames per write is how much
/// sending in the background saves. Counted by every flusher on every core, so each thread
/// counts in a shard of its own (a cache line apart): one shared line would be bounced between
/// cores on every write. Read by summing the shards.
#[derive(Default)]
pub struct WriteCounts {
    shards: [WriteShard; WRITE_SHARDS],
}

const WRITE_SHARDS: usize = 16;

#[derive(Default)]
#[repr(align(128))]
struct WriteShard {
    writes: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    /// permessage-deflate: messages compressed (once each, for all their sessions), and client
    /// messages inflated.
    compressed: AtomicU64,
    inflated: AtomicU64,
}

thread_local! {
    /// This thread's shard of the write counts, given in turn as threads first count.
    static WRITE_SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % WRITE_SHARDS
    };
}

impl WriteCounts {
    fn shard(&self) -> &WriteShard {
        &self.shards[WRITE_SHARD.with(|s| *s)]
    }

    fn sum(&self, field: impl Fn(&WriteShard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| field(s).load(Ordering::Relaxed)).sum()
    }

    pub(super) fn wrote(&self, frames: usize, bytes: usize) {
        let shard = self.shard();
        shard.writes.fetch_add(1, Ordering::Relaxed);
        shard.frames.fetch_add(frames as u64, Ordering::Relaxed);
        shard.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn compressed(&self) {
        self.shard().compressed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn inflated(&self) {
        self.shard().inflated.fetch_add(1, Ordering::Relaxed);
    }
}

impl Stats {
    pub fn protocol_error(&self, e: ProtocolError) {
        self.protocol_errors[e as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn protocol_errors(&self, e: ProtocolError) -> u64 {
        self.protocol_errors[e as usize].load(Ordering::Relaxed)
    }

    /// A request cut off (by herald's own front or, through the mount, by the HTTP server).
    pub fn cut(&self, why: Cutoff) {
        self.cutoffs[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn cutoffs(&self, why: Cutoff) -> u64 {
        self.cutoffs[why as usize].load(Ordering::Relaxed)
    }

    pub(super) fn opened(&self, websocket: bool) {
        let counter = if websocket { &self.opened_websocket } else { &self.opened_polling };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn upgraded(&self) {
        self.upgrades.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn session_closed(&self, reason: CloseReason) {
        match reason {
            CloseReason::PingTimeout => self.ping_timeouts.fetch_add(1, Ordering::Relaxed),
            CloseReason::WriteTimeout => self.write_timeouts.fetch_add(1, Ordering::Relaxed),
            CloseReason::Flood => self.protocol_errors[ProtocolError::Flood as usize].fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// WebSocket writes (system calls), and the frames they completed.
    pub fn writes(&self) -> (u64, u64) {
        (self.writes.sum(|s| &s.writes), self.writes.sum(|s| &s.frames))
    }

    pub(super) fn forwarded_out(&self) {
        self.forwarded_out.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn forwarded_in(&self) {
        self.forwarded_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests sent to the instance holding their session, and answered here for another.
    pub fn forwarded(&self) -> (u64, u64) {
        (self.forwarded_out.load(Ordering::Relaxed), self.forwarded_in.load(Ordering::Relaxed))
    }

    pub(super) fn moved_in(&self) {
        self.moved_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn moved_out(&self) {
        self.moved_out.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn move_failed(&self) {
        self.moves_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes written to WebSockets (frames queued and flushed through sessions).
    pub fn bytes_written(&self) -> u64 {
        self.writes.sum(|s| &s.bytes)
    }

    /// permessage-deflate: messages compressed (each once, whatever the number of sessions it
    /// went to), and client messages inflated.
    pub fn deflate(&self) -> (u64, u64) {
        (self.writes.sum(|s| &s.compressed), self.writes.sum(|s| &s.inflated))
    }

    /// Sessions moved here with their WebSocket upgrade, moved from here, and moves that failed
    /// here (on either side; the session ended and its client reconnected).
    pub fn moved(&self) -> (u64, u64, u64) {
        (self.moved_in.load(Ordering::Relaxed), self.moved_out.load(Ordering::Relaxed), self.moves_failed.load(Ordering::Relaxed))
    }

    /// Sessions opened over WebSocket directly, and over long-polling.
    pub fn opened_sessions(&self) -> (u64, u64) {
        (self.opened_websocket.load(Ordering::Relaxed), self.opened_polling.load(Ordering::Relaxed))
    }

    /// Long-polling sessions upgraded to WebSocket.
    pub fn upgrades(&self) -> u64 {
        self.upgrades.load(Ordering::Relaxed)
    }

    pub fn ping_timeouts(&self) -> u64 {
        self.ping_timeouts.load(Ordering::Relaxed)
    }

    /// Connections cut because the client took no data for the write timeout.
    pub fn write_timeouts(&self) -> u64 {
        self.write_timeouts.load(Ordering::Relaxed)
    }
}
