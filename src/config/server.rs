//! The `server` section: the listener, Socket.IO timings and buffers, receipts.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use super::walk::{Walk, one_of, ranged, read_addr, secs};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address for Socket.IO and HTTP. Default `0.0.0.0:3000`.
    pub listen: SocketAddr,
    /// Socket.IO event name notifications are emitted under. Default `notification`.
    pub event: String,
    /// Engine.IO heartbeat interval. Default 25 s.
    pub ping_interval: Duration,
    /// How long a silent client is kept after a missed heartbeat. Default 20 s.
    pub ping_timeout: Duration,
    /// Packets buffered per socket before emits to it fail (counted). Default 1024: the buffer
    /// grows only as it fills, so a large bound costs idle sockets nothing, and a burst of
    /// notifications to one user must fit in it.
    pub max_buffer_size: usize,
    /// What happens to a socket whose buffer is full. Default `drop`.
    pub slow_client: SlowClient,
    /// Largest incoming Engine.IO payload a client may send, in bytes, over long-polling and
    /// as one WebSocket message or frame. Default 100000.
    pub max_payload_bytes: u64,
    /// Time a new connection has to send its HTTP request headers, and a new Engine.IO session
    /// to join the Socket.IO namespace, before it is closed; also the longest a request body
    /// may pause. Default 10000 ms.
    pub connect_timeout: Duration,
    /// A connection on which herald could write nothing for this long (the client stopped
    /// reading and the buffers are full) is closed. Default 30000 ms.
    pub write_timeout: Duration,
    /// Deadline for a graceful shutdown. Default 10 s.
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long herald keeps everything running while `/readyz` answers 503, so
    /// load balancers that poll readiness stop sending new connections before the sockets
    /// close; the graceful shutdown starts after it. Default 0 s.
    pub drain_delay: Duration,
    /// Event clients emit to acknowledge a notification (`{id, state}`). Default `receipt`.
    pub receipt_event: String,
    /// Receipts one socket may send per second (bursts of as many). Default 10.
    pub receipts_per_sec: u32,
    /// permessage-deflate for WebSocket clients that offer it, and gzip for long-polling
    /// responses, for messages of at least this many bytes; `None`: off. Default 1024.
    pub compression: Option<usize>,
}

/// What herald does with a socket whose send buffer (`max_buffer_size`) is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowClient {
    /// The notification is not sent to that socket (counted); the socket stays.
    Drop,
    /// The socket leaves its user's room at once and is disconnected (counted).
    Disconnect,
}

pub(super) fn read_server(walk: &mut Walk, v: Option<&Value>) -> ServerConfig {
    walk.section(v, "server", |walk, s| {
        let listen = read_addr(walk, s, "listen", "0.0.0.0:3000");
        let event: String = walk.get(s, "event", "notification".into());
        check_event_name(walk, &s.path("event"), &event);
        let ping_interval = secs(walk, s, "ping_interval_secs", 25, 1..=3600);
        let ping_timeout = secs(walk, s, "ping_timeout_secs", 20, 1..=3600);
        let max_buffer_size = ranged(walk, s, "max_buffer_size", 1024usize, 1..=1_000_000);
        let max_payload_bytes = ranged(walk, s, "max_payload_bytes", 100_000u64, 64..=100_000_000);
        let connect_timeout = Duration::from_millis(ranged(walk, s, "connect_timeout_ms", 10_000u64, 100..=600_000));
        let write_timeout = Duration::from_millis(ranged(walk, s, "write_timeout_ms", 30_000u64, 100..=3_600_000));
        let shutdown_grace = secs(walk, s, "shutdown_grace_secs", 10, 0..=3600);
        let drain_delay = secs(walk, s, "drain_delay_secs", 0, 0..=300);
        let slow_client = one_of(walk, s, "slow_client", &[("drop", SlowClient::Drop), ("disconnect", SlowClient::Disconnect)]);
        let receipt_event: String = walk.get(s, "receipt_event", "receipt".into());
        check_event_name(walk, &s.path("receipt_event"), &receipt_event);
        let receipts_per_sec = ranged(walk, s, "receipts_per_sec", 10u32, 1..=10_000);
        let compression = walk.section(s.raw("compression"), "server.compression", |walk, c| {
            let enabled: bool = walk.get(c, "enabled", true);
            let floor = socketio::engine::DEFLATE_FLOOR;
            let threshold = ranged(walk, c, "threshold_bytes", 1024usize, floor..=100_000_000);
            enabled.then_some(threshold)
        });
        ServerConfig {
            compression,
            receipt_event,
            receipts_per_sec,
            listen,
            event,
            ping_interval,
            ping_timeout,
            max_buffer_size,
            slow_client,
            max_payload_bytes,
            connect_timeout,
            write_timeout,
            shutdown_grace,
            drain_delay,
        }
    })
}

/// Socket.IO reserves these names on the client; a notification emitted under one never arrives.
pub(super) const RESERVED_EVENTS: &[&str] = &["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

pub(super) fn check_event_name(walk: &mut Walk, path: &str, event: &str) {
    if event.is_empty() {
        walk.error(path, "must not be empty");
    } else if RESERVED_EVENTS.contains(&event) {
        walk.error(path, format!("`{event}` is reserved by Socket.IO"));
    }
}
