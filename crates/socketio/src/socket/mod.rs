//! Sockets: a client's membership of a namespace, what the application implements to hear from
//! them ([`Handler`]), and the Socket.IO layer over the engine's sessions that makes and drives
//! them: reads each session's packets (joining binary attachments to their packet), connects
//! sockets to namespaces, and moves a session's sockets with it to another instance. These
//! name each other, so they share this file; what the server sends a socket is in `send`.

pub(crate) mod send;

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use serde_json::value::RawValue;

use super::engine::{self, CloseReason, Frame, Handshake, ProtocolError, Session, Sid};
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

/// How long a session about to move waits for a connect under way.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl<H: Handler> Layer<H> {
    pub(crate) fn new(handler: Arc<H>, namespaces: Vec<String>) -> Self {
        Self { handler, namespaces: namespaces.into_iter().map(Arc::from).collect() }
    }

    fn dispatch(&self, session: &Arc<Session<Self>>, p: &packet::Packet<'_>, attachments: &[Bytes]) {
        let connection = session.state();
        match p.kind {
            Kind::Connect => self.connect(session, p),
            Kind::ConnectError => session.protocol_error(ProtocolError::BadSocketPacket),
            Kind::Disconnect => match connection.find(p.namespace) {
                Some(socket) => {
                    connection.remove(&socket);
                    if socket.state.swap(GONE, Ordering::AcqRel) == CONNECTED {
                        self.handler.disconnected(&socket, DisconnectReason::ClientDisconnect);
                    }
                }
                None => session.protocol_error(ProtocolError::BadSocketPacket),
            },
            Kind::Event | Kind::BinaryEvent => {
                let Some(socket) = connection.find(p.namespace).filter(|s| s.accepts_packets()) else {
                    return session.protocol_error(ProtocolError::BadSocketPacket);
                };
                let (name, args) = packet::event_parts(p.payload.expect("an event has a payload"));
                let ack = p.id.map(|id| AckSender { socket: socket.clone(), id });
                self.handler.event(&socket, Event { name: &name, args, attachments, ack });
            }
            // The server sends no events that wait for an ack: an ack is read and dropped.
            Kind::Ack | Kind::BinaryAck => {
                if !connection.find(p.namespace).is_some_and(|s| s.accepts_packets()) {
                    session.protocol_error(ProtocolError::BadSocketPacket);
                }
            }
        }
    }

    fn connect(&self, session: &Arc<Session<Self>>, p: &packet::Packet<'_>) {
        let Some(namespace) = self.namespaces.iter().find(|n| ***n == *p.namespace) else {
            let refusal = connect_error(p.namespace, "Invalid namespace");
            let _ = session.send_control_frame(&refusal);
            return;
        };
        let socket = {
            let mut state = session.state().lock();
            if state.closed {
                return;
            }
            if state.sockets.iter().any(|s| s.namespace == *namespace) {
                drop(state);
                return session.protocol_error(ProtocolError::BadSocketPacket);
            }
            let socket = Arc::new(Socket {
                id: Sid::random(),
                namespace: namespace.clone(),
                session: session.clone(),
                data: OnceLock::new(),
                state: AtomicU8::new(CONNECTING),
                early: Mutex::new(Vec::new()),
            });
            state.sockets.push(socket.clone());
            socket
        };
        let auth = p.payload.map(|a| a.to_owned());
        let handler = self.handler.clone();
        tokio::spawn(async move {
            match H::connect(handler.clone(), socket.clone(), auth).await {
                Ok(data) => {
                    let _ = socket.data.set(data);
                    if !socket.connect_succeeded(&handler) {
                        // The session ended while the application was deciding.
                        handler.disconnected(&socket, DisconnectReason::Transport(CloseReason::TransportClose));
                    }
                }
                Err(message) => {
                    socket.state.store(GONE, Ordering::Release);
                    socket.session.state().remove(&socket);
                    let _ = socket.session.send_control_frame(&connect_error(&socket.namespace, &message));
                }
            }
        });
    }
}

/// A socket moving with its session to another instance, as `export` writes it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Moved {
    #[serde(rename = "n")]
    namespace: String,
    #[serde(rename = "i")]
    id: String,
    /// What the application's `departing` gave.
    #[serde(rename = "d")]
    data: Box<RawValue>,
}

impl<H: Handler> engine::Handler for Layer<H> {
    type State = Connection<H>;

    fn state(&self) -> Connection<H> {
        Connection { inner: Mutex::new(ConnectionState::default()) }
    }

    fn text(&self, session: &Arc<Session<Self>>, text: &str) {
        if session.is_closed() {
            // What followed the packet that ended the session is not read.
            return;
        }
        if session.state().lock().binary.is_some() {
            // Attachments were announced: only binary messages may come now.
            return session.protocol_error(ProtocolError::BadSocketPacket);
        }
        let Ok(p) = packet::parse(text) else { return session.protocol_error(ProtocolError::BadSocketPacket) };
        if p.attachments > 0 {
            session.state().lock().binary =
                Some(Box::new(PendingBinary { text: text.to_owned(), expected: p.attachments, attachments: Vec::new(), bytes: 0 }));
            return;
        }
        self.dispatch(session, &p, &[]);
    }

    fn binary(&self, session: &Arc<Session<Self>>, data: &[u8]) {
        if session.is_closed() {
            return;
        }
        let complete = {
            let mut state = session.state().lock();
            let Some(pending) = state.binary.as_mut() else {
                drop(state);
                return session.protocol_error(ProtocolError::BadSocketPacket);
            };
            pending.bytes += data.len();
            if pending.bytes > session.max_payload() {
                drop(state);
                return session.protocol_error(ProtocolError::TooLarge);
            }
            pending.attachments.push(Bytes::copy_from_slice(data));
            if pending.attachments.len() < pending.expected {
                return;
            }
            state.binary.take().expect("checked above")
        };
        match packet::parse(&complete.text) {
            Ok(p) => self.dispatch(session, &p, &complete.attachments),
            Err(_) => session.protocol_error(ProtocolError::BadSocketPacket),
        }
    }

    fn movable(&self, session: &Arc<Session<Self>>) -> bool {
        let state = session.state().lock();
        !state.closed && state.binary.is_none()
    }

    fn export(&self, session: &Arc<Session<Self>>) -> impl Future<Output = Option<String>> + Send + 'static {
        let (handler, session) = (self.handler.clone(), session.clone());
        async move {
            // A connect under way (the client sent it just before pausing) finishes first.
            let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
            let sockets = loop {
                {
                    let state = session.state().lock();
                    if state.closed || state.binary.is_some() {
                        return None;
                    }
                    if state.sockets.iter().all(|s| s.state.load(Ordering::Acquire) != CONNECTING) {
                        break state.sockets.clone();
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            };
            let mut moved = Vec::with_capacity(sockets.len());
            for socket in sockets {
                if !socket.is_connected() {
                    return None;
                }
                let data = RawValue::from_string(H::departing(handler.clone(), socket.clone()).await?).ok()?;
                moved.push(Moved { namespace: socket.namespace.to_string(), id: socket.id().to_owned(), data });
            }
            serde_json::to_string(&moved).ok()
        }
    }

    fn import(&self, session: &Arc<Session<Self>>, state: String) -> impl Future<Output = bool> + Send + 'static {
        let (handler, namespaces, session) = (self.handler.clone(), self.namespaces.clone(), session.clone());
        async move {
            let Ok(moved) = serde_json::from_str::<Vec<Moved>>(&state) else { return false };
            for m in &moved {
                let (Some(namespace), Some(id)) = (namespaces.iter().find(|n| ***n == *m.namespace), Sid::parse(&m.id)) else {
                    return false;
                };
                let socket = Arc::new(Socket {
                    id,
                    namespace: namespace.clone(),
                    session: session.clone(),
                    data: OnceLock::new(),
                    state: AtomicU8::new(CONNECTING),
                    early: Mutex::new(Vec::new()),
                });
                {
                    let mut state = session.state().lock();
                    if state.closed {
                        return false;
                    }
                    state.sockets.push(socket.clone());
                }
                match H::arriving(handler.clone(), socket.clone(), m.data.get().to_owned()).await {
                    Ok(data) => {
                        let _ = socket.data.set(data);
                        if !socket.arrived() {
                            // The session ended while the application was taking it.
                            handler.disconnected(&socket, DisconnectReason::Transport(CloseReason::TransportClose));
                            return false;
                        }
                    }
                    Err(_) => {
                        socket.state.store(GONE, Ordering::Release);
                        session.state().remove(&socket);
                        return false;
                    }
                }
            }
            if !moved.is_empty() {
                session.mark_joined();
            }
            true
        }
    }

    fn cut(&self, session: &Arc<Session<Self>>) -> impl Future<Output = bool> + Send + 'static {
        let sockets = session.state().lock().sockets.clone();
        let handler = self.handler.clone();
        async move {
            for socket in sockets {
                if !H::cut(handler.clone(), socket).await {
                    return false;
                }
            }
            true
        }
    }

    fn departed(&self, session: &Arc<Session<Self>>) {
        let sockets = {
            let mut state = session.state().lock();
            state.closed = true;
            std::mem::take(&mut state.sockets)
        };
        for socket in sockets {
            if socket.state.swap(GONE, Ordering::AcqRel) == CONNECTED {
                self.handler.departed(&socket);
            }
        }
    }

    fn closed(&self, session: &Arc<Session<Self>>, reason: CloseReason) {
        let sockets = {
            let mut state = session.state().lock();
            state.closed = true;
            state.binary = None;
            std::mem::take(&mut state.sockets)
        };
        for socket in sockets {
            if socket.state.swap(GONE, Ordering::AcqRel) == CONNECTED {
                self.handler.disconnected(&socket, DisconnectReason::Transport(reason));
            }
        }
    }
}
