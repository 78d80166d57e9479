//! Sockets: a client's membership of a namespace, what the application implements to hear from
//! them ([`Handler`]), and the packets the server writes them. `layer` is the Socket.IO layer
//! over the engine's sessions that makes and drives them.

mod layer;

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use serde_json::value::RawValue;

use super::engine::{CloseReason, Frame, Handshake, SendError, Session, Sid};
use super::packet::{self, Kind};

/// What the application does with sockets. The calls come from the connection's task, the
/// heartbeat, or whichever thread ended the socket; none may block (work that waits belongs in
/// a task of its own).
pub trait Handler: Sized + Send + Sync + 'static {
    /// What the application keeps per socket, from its connect.
    type Data: Send + Sync + 'static;

    /// A client asks to join a namespace, with its CONNECT payload (`auth`, if any). `Ok`: the
    /// socket is connected and the client told so; `Err(message)`: it gets CONNECT_ERROR
    /// `{"message": message}`. Emits to the socket before it resolves are sent after CONNECT.
    fn connect(
        self: Arc<Self>,
        socket: SocketRef<Self>,
        auth: Option<Box<RawValue>>,
    ) -> impl Future<Output = Result<Self::Data, String>> + Send + 'static;

    /// Right after the client was told it is connected.
    fn connected(self: &Arc<Self>, _socket: &SocketRef<Self>) {}

    /// An event from a connected socket.
    fn event(self: &Arc<Self>, socket: &SocketRef<Self>, event: Event<'_, Self>);

    /// The socket left, for any reason; called once for every socket whose connect succeeded.
    fn disconnected(self: &Arc<Self>, socket: &SocketRef<Self>, reason: DisconnectReason);

    /// Sockets move between instances with their session when its WebSocket upgrade reaches
    /// another instance than the one holding it (see `engine::Options::instance_tag`). What that
    /// instance needs to take `socket` over, as JSON; `None` (the default): the socket cannot
    /// move now, and its upgrade fails (the session ends, its client reconnects).
    fn departing(self: Arc<Self>, _socket: SocketRef<Self>) -> impl Future<Output = Option<String>> + Send + 'static {
        std::future::ready(None)
    }

    /// Takes over a socket another instance held, from what its [`Handler::departing`] gave:
    /// its data, as [`Handler::connect`] gives it (the client is not told anything).
    fn arriving(
        self: Arc<Self>,
        _socket: SocketRef<Self>,
        _state: String,
    ) -> impl Future<Output = Result<Self::Data, String>> + Send + 'static {
        std::future::ready(Err("sockets do not move".to_owned()))
    }

    /// On the instance the socket leaves: resolves `true` once what the application sends it
    /// from elsewhere has been cut between the two instances (what came before is queued here,
    /// what comes after reaches the other one).
    fn cut(self: Arc<Self>, _socket: SocketRef<Self>) -> impl Future<Output = bool> + Send + 'static {
        std::future::ready(true)
    }

    /// The socket went on to another instance (it did not disconnect): release what it held here.
    fn departed(self: &Arc<Self>, _socket: &SocketRef<Self>) {}
}

pub type SocketRef<H> = Arc<Socket<H>>;

const CONNECTING: u8 = 0;
const CONNECTED: u8 = 1;
const GONE: u8 = 2;

/// One client's membership of one namespace.
pub struct Socket<H: Handler> {
    id: Sid,
    namespace: Arc<str>,
    session: Arc<Session<Layer<H>>>,
    data: OnceLock<H::Data>,
    state: AtomicU8,
    /// What was sent before the CONNECT reply went out; it follows that reply.
    early: Mutex<Vec<Frame>>,
}

/// Why a socket left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client left the namespace (DISCONNECT).
    ClientDisconnect,
    /// The server disconnected it ([`Socket::disconnect`]).
    ServerDisconnect,
    /// Its Engine.IO session ended.
    Transport(CloseReason),
}

impl<H: Handler> Socket<H> {
    /// The socket's id, as the client got it in the CONNECT reply.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// What the application's connect returned; `None` until it did.
    pub fn data(&self) -> Option<&H::Data> {
        self.data.get()
    }

    /// What the client sent when it opened its session (query, kept headers).
    pub fn handshake(&self) -> &Handshake {
        self.session.handshake()
    }

    /// `websocket` or `polling`.
    pub fn transport(&self) -> &'static str {
        self.session.transport()
    }

    pub fn is_connected(&self) -> bool {
        self.state.load(Ordering::Acquire) == CONNECTED
    }

    /// Whether a packet the client sent may be read as from a connected socket. The CONNECT
    /// reply goes out a moment before the state says so (under the `early` lock), and a client
    /// may answer it at once: waiting for that lock closes the gap.
    fn accepts_packets(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CONNECTED => true,
            CONNECTING => {
                drop(lock(&self.early));
                self.is_connected()
            }
            _ => false,
        }
    }

    /// Sends a packet encoded once for many sockets ([`event_frame`]); it must be for this
    /// socket's namespace.
    pub fn send(&self, frame: &Frame) -> Result<(), SendError> {
        match self.state.load(Ordering::Acquire) {
            CONNECTED => self.session.send(frame),
            GONE => Err(SendError::Closed),
            _ => self.send_early(std::slice::from_ref(frame)),
        }
    }

    fn send_all(&self, frames: &[Frame]) -> Result<(), SendError> {
        match self.state.load(Ordering::Acquire) {
            CONNECTED => frames.iter().try_for_each(|f| self.session.send(f)),
            GONE => Err(SendError::Closed),
            _ => self.send_early(frames),
        }
    }

    /// Holds frames until the CONNECT reply is out (re-checked under the lock the connect
    /// takes to send them).
    fn send_early(&self, frames: &[Frame]) -> Result<(), SendError> {
        let mut early = lock(&self.early);
        match self.state.load(Ordering::Acquire) {
            CONNECTED => {
                drop(early);
                frames.iter().try_for_each(|f| self.session.send(f))
            }
            GONE => Err(SendError::Closed),
            _ if early.len() + frames.len() > self.session.max_queue() => Err(SendError::Full),
            _ => {
                early.extend_from_slice(frames);
                Ok(())
            }
        }
    }

    /// Emits `event` with `args` (JSON values).
    pub fn emit(&self, event: &str, args: &[&RawValue]) -> Result<(), SendError> {
        self.send(&event_frame(&self.namespace, event, args))
    }

    /// Emits `event` whose `args` hold `{"_placeholder":true,"num":i}` for each attachment.
    pub fn emit_binary(&self, event: &str, args: &[&RawValue], attachments: &[Bytes]) -> Result<(), SendError> {
        let mut json = Vec::new();
        packet::write_event_array(&mut json, event, args);
        self.send_all(&binary_frames(Kind::BinaryEvent, &self.namespace, None, &json, attachments))
    }

    /// Leaves the namespace from the server side: the client gets DISCONNECT (it will not
    /// reconnect on its own), the application [`Handler::disconnected`]. The last socket of
    /// a session takes the session with it. A socket still connecting gets CONNECT_ERROR
    /// `disconnected` instead, and its connect ends as if the session had closed.
    pub fn disconnect(self: &Arc<Self>) {
        match self.state.compare_exchange(CONNECTED, GONE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(CONNECTING) => {
                if self.state.compare_exchange(CONNECTING, GONE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    self.session.state().remove(self);
                    let _ = self.session.send_control_frame(&connect_error(&self.namespace, "disconnected"));
                }
                return;
            }
            Err(_) => return,
        }
        let frame = Frame::text(|b| {
            b.push(b'4');
            packet::write(b, Kind::Disconnect, 0, &self.namespace, None, b"");
        });
        // Owed even to a client whose queue is full, so it knows not to reconnect.
        let _ = self.session.send_control_frame(&frame);
        let left = self.session.state().remove(self);
        self.session.with_handler(|layer| layer.handler.disconnected(self, DisconnectReason::ServerDisconnect));
        if left == 0 {
            self.session.close(CloseReason::ServerClose);
        }
    }

    /// A socket moved here is connected (its client knows it is): what was sent meanwhile goes
    /// out. `false` if its session ended first.
    fn arrived(&self) -> bool {
        let mut early = lock(&self.early);
        for f in early.drain(..) {
            let _ = self.session.send(&f);
        }
        *early = Vec::new();
        self.state.compare_exchange(CONNECTING, CONNECTED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Connect succeeded: CONNECT goes out, then what was sent meanwhile.
    fn connect_succeeded(self: &Arc<Self>, handler: &Arc<H>) -> bool {
        let reply = Frame::text(|b| {
            b.push(b'4');
            let json = format!(r#"{{"sid":"{}"}}"#, self.id);
            packet::write(b, Kind::Connect, 0, &self.namespace, None, json.as_bytes());
        });
        {
            // The reply, then what was sent meanwhile; only then do sends go straight to the
            // session (they wait on this lock until then).
            let mut early = lock(&self.early);
            if self.state.load(Ordering::Acquire) != CONNECTING || self.session.send_control_frame(&reply).is_err() {
                return false;
            }
            for f in early.drain(..) {
                let _ = self.session.send(&f);
            }
            *early = Vec::new();
            if self.state.compare_exchange(CONNECTING, CONNECTED, Ordering::AcqRel, Ordering::Acquire).is_err() {
                return false;
            }
            self.session.mark_joined();
        }
        handler.connected(self);
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An event as one packet for every socket of `namespace` it goes to.
pub fn event_frame(namespace: &str, event: &str, args: &[&RawValue]) -> Frame {
    Frame::text(|b| {
        b.push(b'4');
        packet::write(b, Kind::Event, 0, namespace, None, b"");
        packet::write_event_array(b, event, args);
    })
}

/// A binary event or ack: its text packet, then one binary message per attachment.
fn binary_frames(kind: Kind, namespace: &str, id: Option<i64>, json: &[u8], attachments: &[Bytes]) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(attachments.len() + 1);
    frames.push(Frame::text(|b| {
        b.push(b'4');
        packet::write(b, kind, attachments.len(), namespace, id, json);
    }));
    frames.extend(attachments.iter().map(|a| Frame::binary(a)));
    frames
}

/// An event a client emitted, borrowed from the message it came in.
pub struct Event<'a, H: Handler> {
    pub name: &'a str,
    /// Its arguments, as JSON text (binary ones are `{"_placeholder":true,"num":i}`).
    pub args: Vec<&'a RawValue>,
    pub attachments: &'a [Bytes],
    /// Set when the client asked for an acknowledgement.
    pub ack: Option<AckSender<H>>,
}

/// Answers an event's acknowledgement request, once.
pub struct AckSender<H: Handler> {
    socket: SocketRef<H>,
    id: i64,
}

impl<H: Handler> AckSender<H> {
    pub fn send(self, args: &[&RawValue]) -> Result<(), SendError> {
        let frame = Frame::text(|b| {
            b.push(b'4');
            packet::write(b, Kind::Ack, 0, &self.socket.namespace, Some(self.id), b"");
            packet::write_array(b, args);
        });
        self.socket.send(&frame)
    }

    /// An ack whose `args` hold a placeholder for each attachment.
    pub fn send_binary(self, args: &[&RawValue], attachments: &[Bytes]) -> Result<(), SendError> {
        let mut json = Vec::new();
        packet::write_array(&mut json, args);
        self.socket.send_all(&binary_frames(Kind::BinaryAck, &self.socket.namespace, Some(self.id), &json, attachments))
    }
}

/// A binary packet whose attachments are still arriving.
struct PendingBinary {
    text: String,
    expected: usize,
    attachments: Vec<Bytes>,
    bytes: usize,
}

/// The Socket.IO state of one Engine.IO session.
pub struct Connection<H: Handler> {
    inner: Mutex<ConnectionState<H>>,
}

struct ConnectionState<H: Handler> {
    sockets: Vec<SocketRef<H>>,
    binary: Option<Box<PendingBinary>>,
    /// The session ended: no socket joins it any more.
    closed: bool,
}

impl<H: Handler> Default for ConnectionState<H> {
    fn default() -> Self {
        Self { sockets: Vec::new(), binary: None, closed: false }
    }
}

impl<H: Handler> Connection<H> {
    fn lock(&self) -> MutexGuard<'_, ConnectionState<H>> {
        lock(&self.inner)
    }

    /// Removes `socket`; returns how many remain.
    fn remove(&self, socket: &Socket<H>) -> usize {
        let mut state = self.lock();
        state.sockets.retain(|s| !std::ptr::eq(&**s, socket));
        state.sockets.len()
    }

    fn find(&self, namespace: &str) -> Option<SocketRef<H>> {
        self.lock().sockets.iter().find(|s| &*s.namespace == namespace).cloned()
    }
}

/// The Socket.IO layer, as the engine's handler.
pub struct Layer<H: Handler> {
    pub(super) handler: Arc<H>,
    namespaces: Vec<Arc<str>>,
}

/// `CONNECT_ERROR` with `{"message": message}`.
fn connect_error(namespace: &str, message: &str) -> Frame {
    let json = serde_json::json!({ "message": message }).to_string();
    Frame::text(|b| {
        b.push(b'4');
        packet::write(b, Kind::ConnectError, 0, namespace, None, json.as_bytes());
    })
}
