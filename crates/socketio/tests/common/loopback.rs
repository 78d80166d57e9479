//! Bare WebSocket sessions on loopback for measuring the send path (herald's `tests/allocations.rs`,
//! `benches/send_path.rs`): an engine handler that keeps every session it opens, and clients
//! that open them over plain TCP and then never read.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use socketio::engine::{self, Engine, Session};
use socketio::{CloseReason, Mount};

/// An engine serving on a free loopback port, `n` sessions its clients opened, and the clients.
pub struct Sessions {
    pub engine: Engine<Collect>,
    pub sessions: Vec<Arc<Session<Collect>>>,
    /// Held open: a session lives while its client does.
    _clients: Vec<std::net::TcpStream>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Sessions {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Starts an engine on `/engine.io/` with `options` and opens `n` WebSocket sessions on it.
pub async fn sessions(options: engine::Options, n: usize) -> Sessions {
    let engine = Engine::start(engine::Options { path: "/engine.io/".into(), ..options }, Collect(Mutex::new(Vec::new())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mounts: Arc<[Arc<dyn Mount>]> = Arc::new([Arc::new(engine.clone()) as Arc<dyn Mount>]);
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mounts = mounts.clone();
            tokio::spawn(async move {
                let _ = socketio::serve(stream, &mounts).await;
            });
        }
    });
    let clients = tokio::task::spawn_blocking(move || (0..n).map(|_| open(addr)).collect::<Vec<_>>()).await.unwrap();
    let sessions = std::mem::take(&mut *engine.handler().0.lock().unwrap());
    assert_eq!(sessions.len(), n);
    Sessions { engine, sessions, _clients: clients, accept }
}

/// Keeps every session it opens, for the senders.
pub struct Collect(pub Mutex<Vec<Arc<Session<Collect>>>>);

impl engine::Handler for Collect {
    type State = ();
    fn state(&self) {}
    fn opened(&self, session: &Arc<Session<Self>>) {
        self.0.lock().unwrap().push(session.clone());
    }
    fn text(&self, _: &Arc<Session<Self>>, _: &str) {}
    fn binary(&self, _: &Arc<Session<Self>>, _: &[u8]) {}
    fn closed(&self, _: &Arc<Session<Self>>, _: CloseReason) {}
}

/// A WebSocket session opened over plain TCP on `/engine.io/`: the upgrade, then its open
/// packet read; nothing is read after that.
fn open(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!(
        "GET /engine.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).expect("upgrade");
    let (mut seen, mut buf) = (Vec::new(), [0u8; 1024]);
    // The 101 head, then the open packet's frame (a text frame starting `0{`).
    while !(seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.windows(2).any(|w| w == b"0{")) {
        let n = tcp.read(&mut buf).expect("the upgrade's answer");
        assert!(n > 0, "closed during the upgrade");
        seen.extend_from_slice(&buf[..n]);
    }
    tcp
}
