//! The Socket.IO layer as the engine's handler: reads each session's packets (joining binary
//! attachments to their packet), connects sockets to namespaces through the application's
//! [`Handler`](super::Handler), and moves a session's sockets with it to another instance.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{
    AckSender, CONNECTED, CONNECTING, Connection, ConnectionState, DisconnectReason, Event, GONE, Handler, Layer, PendingBinary, Socket,
    connect_error,
};
use crate::engine::{self, CloseReason, ProtocolError, Session, Sid};
use crate::packet::{self, Kind};

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
