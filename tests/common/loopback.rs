//! Bare WebSocket sessions on loopback for measuring the send path (`tests/allocations.rs`,
//! `benches/send_path.rs`): an engine handler that keeps every session it opens, and a client
//! that opens one over plain TCP and then never reads.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use herald::socketio::CloseReason;
use herald::socketio::engine::{self, Session};

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
pub fn open(addr: std::net::SocketAddr) -> std::net::TcpStream {
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
