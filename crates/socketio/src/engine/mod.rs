//! An Engine.IO v4 server: sessions over WebSocket and HTTP long-polling, the upgrade from one
//! to the other, heartbeats, payload limits. The layer above (Socket.IO, or the conformance echo)
//! sees sessions that open, carry text and binary messages both ways, and close.

pub mod deflate;
mod encoded;
mod flusher;
mod forward;
pub mod framing;
pub mod front;
mod heartbeat;
mod moving;
mod options;
mod outbox;
pub mod packet;
mod peer;
mod polling;
mod queue;
mod request;
mod scratch;
mod session;
mod sid;
mod stats;
mod websocket;

use std::sync::Arc;

use dashmap::DashMap;

pub use encoded::DEFLATE_FLOOR;
pub use front::{Handoff, Mount};
pub use options::{Handshake, Options};
pub use peer::{ForwardedRequest, ForwardedResponse, Forwarder, MoveStep};
pub use session::{CloseReason, Frame, Handler, SendError, Session};
pub use sid::{Sid, TAG_LEN, instance_tag};
pub use stats::{Cutoff, ProtocolError, Stats};

use heartbeat::Wheel;
use session::Shared;

/// The Engine.IO server: mount it on the HTTP front (or the hyper fallback) at its path.
pub struct Engine<H: Handler> {
    shared: Arc<Shared<H>>,
}

impl<H: Handler> Clone for Engine<H> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<H: Handler> Engine<H> {
    /// Creates the engine and starts its heartbeat task on the current runtime.
    pub fn start(options: Options, handler: H) -> Self {
        let wheel = Wheel::new(&options);
        let deflate_over = options.compression.map(|t| t.max(DEFLATE_FLOOR));
        let flushers = options.flushers.unwrap_or_else(flusher::count).max(1);
        let shared = Arc::new(Shared {
            options,
            handler,
            sessions: DashMap::new(),
            wheel,
            stats: Stats::default(),
            flushers: (0..flushers).map(|_| Arc::new(flusher::Flusher::new(deflate_over))).collect(),
            next_flusher: Default::default(),
            closing: Default::default(),
            forwarder: Default::default(),
        });
        tokio::spawn(heartbeat::run(Arc::downgrade(&shared), |shared: &Shared<H>| &shared.wheel));
        for f in shared.flushers.iter() {
            tokio::spawn(flusher::run(f.clone()));
        }
        Self { shared }
    }

    pub fn handler(&self) -> &H {
        &self.shared.handler
    }

    pub fn options(&self) -> &Options {
        &self.shared.options
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Closes every session as a server going away does (a WebSocket close frame, a close
    /// packet to a waiting poll), so that clients reconnect, to another instance; resolves once
    /// their transports have finished.
    pub async fn close_all(&self) {
        self.shared.closing.store(true, std::sync::atomic::Ordering::Release);
        let sessions: Vec<_> = self.shared.sessions.iter().map(|s| s.value().clone()).collect();
        for s in &sessions {
            s.close(CloseReason::ServerShutdown);
        }
        for s in &sessions {
            s.finished().await;
        }
    }
}

impl<H: Handler> Shared<H> {
    /// Packets at least this long go compressed (`Options::compression`); `None`: off. Every
    /// flusher holds the same, for its sessions.
    pub(crate) fn deflate_over(&self) -> Option<usize> {
        self.flushers[0].deflate_over
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A handler that does nothing, for unit tests of the engine's parts.
    pub(crate) struct Nothing;

    impl Handler for Nothing {
        type State = ();
        fn state(&self) {}
        fn text(&self, _: &Arc<Session<Self>>, _: &str) {}
        fn binary(&self, _: &Arc<Session<Self>>, _: &[u8]) {}
        fn closed(&self, _: &Arc<Session<Self>>, _: CloseReason) {}
    }
}
