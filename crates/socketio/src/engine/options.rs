//! The engine's settings, and what a client sent when it opened its session: plain data every
//! other part of the engine reads.

use std::time::Duration;

use super::sid::TAG_LEN;

/// Engine.IO settings, as the client learns them in the open packet.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where requests are served, e.g. `/socket.io/`.
    pub path: String,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Largest message (WebSocket) or request body (long-polling) a client may send.
    pub max_payload: usize,
    /// Frames queued to one session before sends to it fail with [`SendError::Full`](super::outbox::SendError::Full).
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
    /// [`Forwarder`](super::peer::Forwarder) (no load balancer affinity needed).
    pub instance_tag: Option<[u8; TAG_LEN]>,
    /// permessage-deflate with clients that offer it, and gzip for long-polling responses, for
    /// messages of at least this many bytes (not below [`DEFLATE_FLOOR`](super::encoded::DEFLATE_FLOOR)); `None`: off.
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
