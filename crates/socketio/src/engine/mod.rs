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
pub mod packet;
mod polling;
mod queue;
mod request;
mod session;
mod sid;
mod stats;
mod websocket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

pub use encoded::DEFLATE_FLOOR;
pub use forward::{ForwardedRequest, ForwardedResponse, Forwarder};
pub use front::{Handoff, Mount};
pub use moving::MoveStep;
pub use session::{CloseReason, Frame, SendError, Session};
pub use sid::{Sid, TAG_LEN, instance_tag};
pub use stats::{Cutoff, ProtocolError, Stats};

use heartbeat::Wheel;

/// Engine.IO settings, as the client learns them in the open packet.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where requests are served, e.g. `/socket.io/`.
    pub path: String,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Largest message (WebSocket) or request body (long-polling) a client may send.
    pub max_payload: usize,
    /// Frames queued to one session before sends to it fail with [`SendError::Full`].
    pub max_queue: usize,
    /// A session the layer above has not marked joined by then is closed.
    pub join_timeout: Option<Duration>,
    /// A WebSocket probing an upgrade must complete it in this time, or it is closed (the
    /// session polls on).
    pub upgrade_timeout: Duration,
    /// A client that takes no data for this long while some waits is cut off.
    pub write_timeout: Duration,
    /// Time a connection has to send a request's headers, or to resume a paused request body.
    pub request_timeout: Duration,
    /// Request headers kept in the [`Handshake`], lower case.
    pub handshake_headers: Vec<&'static str>,
    /// `Origin`s whose pages may read polling responses (CORS); empty allows any. Refusing
    /// sessions by origin is the layer above's decision (the `Origin` is in the handshake).
    pub allowed_origins: Vec<String>,
    /// This instance's tag, at the start of every session id it makes, when instances share
    /// sessions: a request for a session another instance holds then goes to it through the
    /// [`Forwarder`] (no load balancer affinity needed).
    pub instance_tag: Option<[u8; TAG_LEN]>,
    /// permessage-deflate with clients that offer it, and gzip for long-polling responses, for
    /// messages of at least this many bytes (not below [`DEFLATE_FLOOR`]); `None`: off.
    pub compression: Option<usize>,
    /// Flusher tasks (see `flusher`); `None`: one per two runtime worker threads, at least one.
    pub flushers: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            path: "/socket.io/".into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_payload: 1_000_000,
            max_queue: 1024,
            join_timeout: None,
            upgrade_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            handshake_headers: Vec::new(),
            allowed_origins: Vec::new(),
            instance_tag: None,
            compression: Some(1024),
            flushers: None,
        }
    }
}

/// What the layer above does with sessions. Every call is made on a runtime thread and must not
/// block; work that waits belongs in a task it spawns.
pub trait Handler: Sized + Send + Sync + 'static {
    /// Per-session state of the layer above.
    type State: Send + Sync + 'static;

    fn state(&self) -> Self::State;
    /// The session is open and the client knows its id.
    fn opened(&self, _session: &Arc<Session<Self>>) {}
    fn text(&self, session: &Arc<Session<Self>>, text: &str);
    fn binary(&self, session: &Arc<Session<Self>>, data: &[u8]);
    /// Called once, when the session ends for any reason.
    fn closed(&self, session: &Arc<Session<Self>>, reason: CloseReason);

    /// Moving a session to the instance that received its WebSocket upgrade (see `moving`):
    /// whether it may move now. By default sessions never move.
    fn movable(&self, _session: &Arc<Session<Self>>) -> bool {
        false
    }

    /// What the instance taking the session over needs, as text; `None`: it cannot move.
    fn export(&self, _session: &Arc<Session<Self>>) -> impl Future<Output = Option<String>> + Send + 'static {
        std::future::ready(None)
    }

    /// Takes over a session another instance held, from what its [`Handler::export`] gave;
    /// `false`: it could not (the session ends).
    fn import(&self, _session: &Arc<Session<Self>>, _state: String) -> impl Future<Output = bool> + Send + 'static {
        std::future::ready(false)
    }

    /// Resolves (`true`) once whatever the layer above sends the session from elsewhere has
    /// been cut between this instance and the one taking it over: what came before the cut
    /// is in the session's queue here, what comes after it goes to the other instance.
    fn cut(&self, _session: &Arc<Session<Self>>) -> impl Future<Output = bool> + Send + 'static {
        std::future::ready(false)
    }

    /// The session went on to another instance: release what it held here, without a close.
    fn departed(&self, _session: &Arc<Session<Self>>) {}
}

/// What the client sent when it opened its session.
#[derive(Debug, Default)]
pub struct Handshake {
    /// The query string, without `?`.
    pub query: Box<str>,
    /// The headers named in [`Options::handshake_headers`] that were present.
    pub headers: Box<[(&'static str, Box<str>)]>,
}

impl Handshake {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| &**v)
    }

    /// A query parameter, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

/// The Engine.IO server: mount it on the HTTP front (or the hyper fallback) at its path.
pub struct Engine<H: Handler> {
    shared: Arc<Shared<H>>,
}

impl<H: Handler> Clone for Engine<H> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

pub(crate) struct Shared<H: Handler> {
    pub(crate) options: Options,
    pub(crate) handler: H,
    pub(crate) sessions: DashMap<Sid, Arc<Session<H>>>,
    pub(crate) wheel: Wheel<H>,
    pub(crate) stats: Stats,
    /// The flushers (`Options::flushers`); each session belongs to one, given in turn, so a
    /// broadcast's writes are spread over every flusher and core, and senders to different
    /// sessions mostly take different locks.
    pub(crate) flushers: Box<[Arc<flusher::Flusher<Session<H>>>]>,
    next_flusher: std::sync::atomic::AtomicUsize,
    /// Set by [`Engine::close_all`]: no new sessions.
    pub(crate) closing: std::sync::atomic::AtomicBool,
    /// Where requests for other instances' sessions go ([`Engine::set_forwarder`]).
    pub(crate) forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
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
        tokio::spawn(heartbeat::run(Arc::downgrade(&shared)));
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

thread_local! {
    /// The buffer every connection on this thread reads into: a connection keeps only what is
    /// left of an unfinished frame or request.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; 64 * 1024].into_boxed_slice());
}

/// Runs `f` with the thread's read buffer. `f` must not await (it cannot) nor call back here.
fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH.with_borrow_mut(|s| f(s))
}

impl<H: Handler> Shared<H> {
    /// Packets at least this long go compressed (`Options::compression`); `None`: off. Every
    /// flusher holds the same, for its sessions.
    pub(crate) fn deflate_over(&self) -> Option<usize> {
        self.flushers[0].deflate_over
    }

    /// The flusher of a new session: each in turn.
    pub(crate) fn flusher(&self) -> Arc<flusher::Flusher<Session<H>>> {
        let i = self.next_flusher.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.flushers.len();
        self.flushers[i].clone()
    }
}

impl<H: Handler> Drop for Shared<H> {
    fn drop(&mut self) {
        // Sessions hold no strong reference back to the engine, so this runs once the engine's
        // handles, the fronts and the WebSocket tasks have let go.
        for f in self.flushers.iter() {
            f.stop();
        }
        self.sessions.clear();
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
