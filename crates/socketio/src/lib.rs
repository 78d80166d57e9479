//! A Socket.IO v5 server on an Engine.IO v4 transport of its own ([`engine`]), built to hold
//! idle connections cheaply and to encode a packet once for all its recipients. It knows
//! nothing of herald (whose gateway implements [`Handler`] and sends [`Frame`]s); the crate's
//! README says what it implements and what it costs.
//!
//! What it serves: namespaces from a fixed list, CONNECT with an `auth` payload (accepted or
//! refused with `CONNECT_ERROR {message}`), events and acks both ways, binary attachments,
//! DISCONNECT both ways. What it leaves out: rooms and broadcasting (the application keeps
//! its own index of sockets), acks the server waits for, and Engine.IO v3.

// Safe Rust throughout: sockets are tuned through socket2.
#![deny(unsafe_code)]

pub mod engine;
pub mod packet;
mod socket;

use std::sync::Arc;

pub use engine::front::{Handoff, Served, serve};
pub use engine::{CloseReason, Cutoff, Frame, Handshake, Mount, ProtocolError, SendError, Stats};
pub use socket::send::event_frame;
pub use socket::{AckSender, DisconnectReason, Event, Handler, Socket, SocketRef};

use socket::Layer;

/// Socket.IO settings on top of the Engine.IO ones. `engine.join_timeout` is Socket.IO's
/// `connectTimeout`: a session that joins no namespace by then is closed.
#[derive(Debug, Clone)]
pub struct Options {
    pub engine: engine::Options,
    /// The namespaces that exist; a CONNECT to any other gets `Invalid namespace`.
    pub namespaces: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self { engine: engine::Options::default(), namespaces: vec!["/".into()] }
    }
}

/// The server: mount [`Server::mount`] on the HTTP front.
pub struct Server<H: Handler> {
    engine: engine::Engine<Layer<H>>,
}

impl<H: Handler> Clone for Server<H> {
    fn clone(&self) -> Self {
        Self { engine: self.engine.clone() }
    }
}

impl<H: Handler> Server<H> {
    /// Starts the server's heartbeat on the current runtime.
    pub fn start(options: Options, handler: Arc<H>) -> Self {
        let layer = Layer::new(handler, options.namespaces);
        Self { engine: engine::Engine::start(options.engine, layer) }
    }

    /// The engine, to mount on the HTTP front at its path.
    pub fn mount(&self) -> Arc<dyn Mount> {
        Arc::new(self.engine.clone())
    }

    pub fn stats(&self) -> &Stats {
        self.engine.stats()
    }

    /// Open Engine.IO sessions (with or without a socket).
    pub fn sessions(&self) -> usize {
        self.engine.sessions()
    }

    /// Closes every connection as a server going away (no Socket.IO DISCONNECT: clients
    /// reconnect, elsewhere); resolves once each has said goodbye.
    pub async fn close_all(&self) {
        self.engine.close_all().await
    }

    /// Where long-polling requests for other instances' sessions go (see
    /// [`engine::Options::instance_tag`]).
    pub fn set_forwarder(&self, forwarder: Arc<dyn engine::Forwarder>) {
        self.engine.set_forwarder(forwarder);
    }

    /// Answers a step of moving one of this instance's sessions to another instance.
    pub async fn answer_move(&self, sid: engine::Sid, step: engine::MoveStep) -> Option<engine::ForwardedResponse> {
        self.engine.answer_move(sid, step).await
    }

    /// Answers a request another instance forwarded here.
    pub async fn answer_forwarded(&self, request: engine::ForwardedRequest) -> Option<engine::ForwardedResponse> {
        self.engine.answer_forwarded(request).await
    }
}
