//! The conformance fixture's handlers and accept loop, shared by the example and by the crate's own
//! protocol tests (`tests/protocol.rs`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use socketio::engine::{self, Session};
use socketio::{self, CloseReason, DisconnectReason, Event, Frame, Mount, Served, SocketRef};
use tokio::net::TcpListener;

/// The settings the suites expect: pingInterval 300 ms, pingTimeout 200 ms, maxPayload
/// 1,000,000, any origin.
pub fn engine_options(path: &str) -> engine::Options {
    engine::Options {
        path: path.into(),
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        ..Default::default()
    }
}

/// Engine.IO echo: every message goes back unchanged.
pub struct Echo;

impl engine::Handler for Echo {
    type State = ();

    fn state(&self) {}

    fn text(&self, session: &Arc<Session<Self>>, text: &str) {
        let _ = session.send(&Frame::text(|b| {
            b.push(b'4');
            b.extend_from_slice(text.as_bytes());
        }));
    }

    fn binary(&self, session: &Arc<Session<Self>>, data: &[u8]) {
        let _ = session.send(&Frame::binary(data));
    }

    fn closed(&self, _: &Arc<Session<Self>>, _: CloseReason) {}
}

/// The Socket.IO fixture.
pub struct Fixture;

impl socketio::Handler for Fixture {
    /// The handshake's auth, as sent.
    type Data = Box<RawValue>;

    async fn connect(self: Arc<Self>, _socket: SocketRef<Self>, auth: Option<Box<RawValue>>) -> Result<Box<RawValue>, String> {
        Ok(auth.unwrap_or_else(|| RawValue::from_string("{}".into()).expect("valid JSON")))
    }

    fn connected(self: &Arc<Self>, socket: &SocketRef<Self>) {
        // The suites read each packet with a listener attached after the previous one arrived,
        // and miss a packet that arrives in the same read as the one before it
        // (socket.io-protocol#32): `auth` follows the CONNECT reply a moment later.
        let socket = socket.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let auth = socket.data().expect("set by connect");
            let _ = socket.emit("auth", &[auth]);
        });
    }

    fn event(self: &Arc<Self>, socket: &SocketRef<Self>, event: Event<'_, Self>) {
        if socket.namespace() != "/" {
            return;
        }
        match (event.name, event.ack) {
            ("message", _) if event.attachments.is_empty() => {
                let _ = socket.emit("message-back", &event.args);
            }
            ("message", _) => {
                let _ = socket.emit_binary("message-back", &event.args, event.attachments);
            }
            ("message-with-ack", Some(ack)) if event.attachments.is_empty() => {
                let _ = ack.send(&event.args);
            }
            ("message-with-ack", Some(ack)) => {
                let _ = ack.send_binary(&event.args, event.attachments);
            }
            _ => {}
        }
    }

    fn disconnected(self: &Arc<Self>, _: &SocketRef<Self>, _: DisconnectReason) {}
}

/// Both servers, as the suites expect them: Engine.IO echo on `/engine.io/`, Socket.IO with
/// namespaces `/` and `/custom` and a 1,000 ms connect timeout on `/socket.io/`.
pub struct Servers {
    pub engine: engine::Engine<Echo>,
    pub socketio: socketio::Server<Fixture>,
}

impl Servers {
    pub fn start() -> Self {
        let engine = engine::Engine::start(engine_options("/engine.io/"), Echo);
        let socketio = socketio::Server::start(
            socketio::Options {
                engine: engine::Options { join_timeout: Some(Duration::from_millis(1000)), ..engine_options("/socket.io/") },
                namespaces: vec!["/".into(), "/custom".into()],
            },
            Arc::new(Fixture),
        );
        Self { engine, socketio }
    }

    /// Serves both on `listener` until the task is dropped; other paths get 404.
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        serve(listener, Arc::new([Arc::new(self.engine.clone()) as Arc<dyn Mount>, self.socketio.mount()])).await
    }
}

/// Serves `mounts` on `listener`; other paths get 404.
pub async fn serve(listener: TcpListener, mounts: Arc<[Arc<dyn Mount>]>) -> std::io::Result<()> {
    {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let mounts = mounts.clone();
            tokio::spawn(async move {
                if let Served::Handoff(other) = socketio::serve(stream, &mounts).await {
                    let (stream, _) = other.into_parts();
                    let _ = stream.try_write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            });
        }
    }
}
