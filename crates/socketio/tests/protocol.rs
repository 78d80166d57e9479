//! The Socket.IO server against the protocols, written from the specs (Engine.IO v4,
//! Socket.IO v5, RFC 6455) with raw HTTP and WebSocket clients: the conformance fixture of
//! `examples/protocol_echo` on port 0, every rule a client can meet or break.

#[path = "../examples/protocol_echo/fixture.rs"]
mod fixture;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use socketio::ProtocolError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{WebSocketStream, client_async};

const WITHIN: Duration = Duration::from_secs(5);

struct Server {
    addr: SocketAddr,
    servers: Arc<fixture::Servers>,
    http: reqwest::Client,
    _task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let servers = Arc::new(fixture::Servers::start());
        let task = {
            let servers = servers.clone();
            tokio::spawn(async move {
                let _ = servers.serve(listener).await;
            })
        };
        Self { addr, servers, http: reqwest::Client::new(), _task: task }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    fn errors(&self, kind: ProtocolError, socketio: bool) -> u64 {
        if socketio { self.servers.socketio.stats().protocol_errors(kind) } else { self.servers.engine.stats().protocol_errors(kind) }
    }

    /// A long-polling session on `path`: the query with its sid.
    async fn polling(&self, path: &str) -> String {
        let body = self.http.get(self.url(&format!("{path}?EIO=4&transport=polling"))).send().await.unwrap().text().await.unwrap();
        let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
        format!("{path}?EIO=4&transport=polling&sid={}", open["sid"].as_str().unwrap())
    }

    async fn get(&self, path_and_query: &str) -> (u16, String) {
        let r = self.http.get(self.url(path_and_query)).timeout(WITHIN).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn post(&self, path_and_query: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let r = self.http.post(self.url(path_and_query)).body(body).timeout(WITHIN).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn ws(&self, path_and_query: &str) -> Ws {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let (ws, _) = client_async(format!("ws://{}{path_and_query}", self.addr), tcp).await.unwrap();
        ws
    }

    /// A WebSocket session on `path`, its open packet read.
    async fn ws_session(&self, path: &str) -> (Ws, Value) {
        let mut ws = self.ws(&format!("{path}?EIO=4&transport=websocket")).await;
        let open = next_text(&mut ws).await;
        (ws, serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap())
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(WITHIN, ws.next()).await.expect("a message in time").expect("open").expect("a message")
}

async fn next_text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t.as_str().to_owned(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The next text that is not a ping (pings are answered).
async fn next_text_answering_pings(ws: &mut Ws) -> String {
    loop {
        let t = next_text(ws).await;
        if t != "2" {
            return t;
        }
        ws.send(Message::text("3")).await.unwrap();
    }
}

/// Reads until the server closes; its close frame, if it sent one.
async fn closed(ws: &mut Ws) -> Option<CloseFrame> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("the server closes in time") {
            Some(Ok(Message::Close(frame))) => return frame,
            None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

fn engine_error(code: u8, message: &str) -> String {
    json!({"code": code, "message": message}).to_string()
}

// ---------------------------------------------------------------------------------------------
// Engine.IO over long-polling

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_handshake_gives_the_settings_and_bad_requests_get_engine_io_errors() {
    let s = Server::start().await;
    let r = s.http.get(s.url("/engine.io/?EIO=4&transport=polling")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=UTF-8");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let body = r.text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    let keys: Vec<_> = open.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 5, "{open}");
    assert_eq!((open["upgrades"].clone(), open["pingInterval"].clone()), (json!(["websocket"]), json!(300)));
    assert_eq!((open["pingTimeout"].clone(), open["maxPayload"].clone()), (json!(200), json!(1_000_000)));
    let sid = open["sid"].as_str().unwrap();
    assert!(sid.len() == 20 && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "URL-safe: {sid}");

    let cases = [
        ("/engine.io/?EIO=3&transport=polling", engine_error(5, "Unsupported protocol version")),
        ("/engine.io/?transport=polling", engine_error(5, "Unsupported protocol version")),
        ("/engine.io/?EIO=4", engine_error(0, "Transport unknown")),
        ("/engine.io/?EIO=4&transport=flash", engine_error(0, "Transport unknown")),
        ("/engine.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA", engine_error(1, "Session ID unknown")),
        ("/engine.io/?EIO=4&transport=websocket", engine_error(3, "Bad request")),
    ];
    for (query, error) in cases {
        assert_eq!(s.get(query).await, (400, error), "{query}");
    }
    assert_eq!(s.post("/engine.io/?EIO=4&transport=polling", "").await, (400, engine_error(2, "Bad handshake method")));
    assert!(s.errors(ProtocolError::BadHandshake, false) >= 7);

    // A CORS preflight.
    let r = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/engine.io/?EIO=4&transport=polling"))
        .header("origin", "http://app.example")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-headers"], "content-type");
    assert!(r.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_payload_carries_several_packets_each_way() {
    let s = Server::start().await;
    let session = s.polling("/engine.io/").await;
    assert_eq!(s.post(&session, "4hello\u{1e}4wörld\u{1e}bAQIDBA==").await, (200, "ok".into()));
    assert_eq!(s.get(&session).await, (200, "4hello\u{1e}4wörld\u{1e}bAQIDBA==".into()), "all echoes in one response");
    // A payload refused whole: nothing of it is handled, and the session ends.
    let (status, _) = s.post(&session, "4fine\u{1e}9bad").await;
    assert_eq!(status, 400);
    assert_eq!(s.get(&session).await.0, 400, "the session is gone");
    assert!(s.errors(ProtocolError::BadEnginePacket, false) >= 1);
}

/// python-engineio's client drops its connection on a payload of more than 16 packets; a burst
/// is answered 16 packets a poll, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_a_polling_client_at_most_16_packets_a_poll() {
    let s = Server::start().await;
    let session = s.polling("/engine.io/").await;
    let sent: Vec<String> = (0..40).map(|n| format!("4m{n}")).collect();
    assert_eq!(s.post(&session, sent.join("\u{1e}")).await, (200, "ok".into()));
    let mut got = Vec::new();
    for expected in [16, 16, 8] {
        let (status, body) = s.get(&session).await;
        assert_eq!(status, 200);
        let packets: Vec<String> = body.split('\u{1e}').map(String::from).collect();
        assert_eq!(packets.len(), expected, "{body}");
        got.extend(packets);
    }
    assert_eq!(got, sent, "every echo, once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_poll_while_one_waits_ends_the_session() {
    let s = Arc::new(Server::start().await);
    let session = s.polling("/engine.io/").await;
    // Two polls at once, in whichever order they arrive: the one that waits is told the
    // session closed, the other is refused, and so is any poll after.
    let poll = |s: Arc<Server>, session: String| tokio::spawn(async move { s.get(&session).await });
    let (a, b) = (poll(s.clone(), session.clone()), poll(s.clone(), session.clone()));
    let mut answers = [a.await.unwrap(), b.await.unwrap()];
    answers.sort();
    assert_eq!(answers[0], (200, "1".into()), "the waiting poll is told the session closed");
    assert_eq!(answers[1].0, 400, "the overlapping poll");
    assert_eq!(s.get(&session).await.0, 400);
    assert_eq!(s.errors(ProtocolError::OverlappingPoll, false), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_heartbeats_go_out_each_interval_and_a_missed_pong_ends_the_session() {
    let s = Server::start().await;
    let session = s.polling("/engine.io/").await;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(s.get(&session).await, (200, "2".into()));
        assert!(started.elapsed() > Duration::from_millis(200), "the ping waits for its interval");
        assert_eq!(s.post(&session, "3").await, (200, "ok".into()));
    }
    // No pong: 300 ms to the ping, 200 more to the timeout, which ends the session.
    let deadline = Instant::now() + WITHIN;
    while s.servers.engine.stats().ping_timeouts() == 0 {
        assert!(Instant::now() < deadline, "no ping timeout within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.get(&session).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_ends_a_polling_session_and_its_waiting_poll() {
    let s = Arc::new(Server::start().await);
    let session = s.polling("/engine.io/").await;
    // The client's poll and its close travel on two connections, in either order (the server
    // gives a poll not there yet a moment): the poll ends with a noop, the session with it.
    let waiting = {
        let (s, session) = (s.clone(), session.clone());
        tokio::spawn(async move { s.get(&session).await })
    };
    assert_eq!(s.post(&session, "1").await, (200, "ok".into()));
    assert_eq!(waiting.await.unwrap(), (200, "6".into()), "a noop ends the poll");
    assert_eq!(s.get(&session).await.0, 400);
}

// ---------------------------------------------------------------------------------------------
// Engine.IO over WebSocket, and the upgrade

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_echoes_text_and_binary_and_keeps_its_heartbeat() {
    let s = Server::start().await;
    let (mut ws, open) = s.ws_session("/engine.io/").await;
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["maxPayload"], json!(1_000_000));
    ws.send(Message::text("4héllo")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "4héllo");
    ws.send(Message::binary(vec![1, 2, 3, 4])).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![1, 2, 3, 4]));
    for _ in 0..2 {
        assert_eq!(next_text(&mut ws).await, "2");
        ws.send(Message::text("3")).await.unwrap();
    }
    // Silence: the ping goes unanswered and the session is closed, cleanly.
    assert_eq!(next_text(&mut ws).await, "2");
    let frame = closed(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Normal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_packet_or_frame_closes_a_websocket_session() {
    let s = Server::start().await;
    let (mut ws, _) = s.ws_session("/engine.io/").await;
    ws.send(Message::text("1")).await.unwrap();
    assert!(closed(&mut ws).await.is_some(), "a close frame after the close packet");
    let (mut ws, _) = s.ws_session("/engine.io/").await;
    ws.close(None).await.unwrap();
    assert!(closed(&mut ws).await.is_some(), "the close frame is answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_upgrades_to_websocket_and_keeps_its_packets_in_order() {
    let s = Server::start().await;
    let session = s.polling("/engine.io/").await;
    let sid = session.rsplit("sid=").next().unwrap().to_owned();
    let mut ws = s.ws(&format!("/engine.io/?EIO=4&transport=websocket&sid={sid}")).await;
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "3probe", "no open packet on an upgrade");
    // Still polling until the upgrade packet: an echo queued now goes out on the WebSocket.
    assert_eq!(s.post(&session, "4during").await, (200, "ok".into()));
    let (status, body) = s.get(&session).await;
    assert_eq!(status, 200);
    assert!(body.split('\u{1e}').any(|p| p == "6"), "a noop ends the last poll: {body}");
    let during_over_polling = body.contains("4during");
    ws.send(Message::text("5")).await.unwrap();
    ws.send(Message::text("4after")).await.unwrap();
    if !during_over_polling {
        assert_eq!(next_text(&mut ws).await, "4during", "queued while upgrading, sent after the switch");
    }
    assert_eq!(next_text(&mut ws).await, "4after");
    assert_eq!(s.get(&session).await, (400, engine_error(3, "Bad request")), "no polling after the upgrade");
    // Another WebSocket with the same sid is closed; the session is not disturbed.
    let mut second = s.ws(&format!("/engine.io/?EIO=4&transport=websocket&sid={sid}")).await;
    assert!(closed(&mut second).await.is_some());
    ws.send(Message::text("4still")).await.unwrap();
    assert_eq!(next_text_answering_pings(&mut ws).await, "4still");
    assert_eq!(s.servers.engine.stats().upgrades(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_session_outlives_the_upgrade_deadline() {
    // An echo that gives a probe 300 ms to finish the upgrade, with a heartbeat to answer.
    let options = socketio::engine::Options {
        path: "/short/".into(),
        upgrade_timeout: Duration::from_millis(300),
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let engine = socketio::engine::Engine::start(options, fixture::Echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mounts: Arc<[Arc<dyn socketio::Mount>]> = Arc::new([Arc::new(engine.clone()) as Arc<dyn socketio::Mount>]);
    let _server = tokio::spawn(fixture::serve(listener, mounts));
    let http = reqwest::Client::new();
    let open = http.get(format!("http://{addr}/short/?EIO=4&transport=polling")).send().await.unwrap().text().await.unwrap();
    let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"].as_str().unwrap().to_owned();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = client_async(format!("ws://{addr}/short/?EIO=4&transport=websocket&sid={sid}"), tcp).await.unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.unwrap();
    // Three times the probe's deadline, answering pings, then an echo.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(100), ws.next()).await
            && t.as_str() == "2"
        {
            ws.send(Message::text("3")).await.unwrap();
        }
    }
    ws.send(Message::text("4still here")).await.unwrap();
    assert_eq!(next_text_answering_pings(&mut ws).await, "4still here", "the upgraded connection is still served");
    assert_eq!(engine.sessions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_bodies_over_the_payload_limit_are_refused() {
    let s = Server::start().await;
    let (mut ws, _) = s.ws_session("/engine.io/").await;
    ws.send(Message::text(format!("4{}", "x".repeat(999_999)))).await.unwrap();
    assert_eq!(next_text(&mut ws).await.len(), 1_000_000, "at the limit: handled");
    ws.send(Message::text(format!("4{}", "x".repeat(1_000_000)))).await.unwrap();
    let frame = closed(&mut ws).await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Size);
    let session = s.polling("/engine.io/").await;
    assert_eq!(s.post(&session, format!("4{}", "x".repeat(1_000_000))).await.0, 413);
    assert!(s.errors(ProtocolError::TooLarge, false) >= 2);
}

// ---------------------------------------------------------------------------------------------
// WebSocket framing, byte by byte

/// A WebSocket opened by hand over TCP, its open packet read.
struct RawWs {
    tcp: TcpStream,
    read: Vec<u8>,
}

impl RawWs {
    async fn open(s: &Server, path: &str) -> Self {
        Self::open_with(s, path, "").await.0
    }

    /// Opens with more request headers (each ending in CRLF); also returns the 101's head.
    async fn open_with(s: &Server, path: &str, headers: &str) -> (Self, String) {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let request = format!(
            "GET {path}?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut ws = Self { tcp, read: Vec::new() };
        while !ws.read.windows(4).any(|w| w == b"\r\n\r\n") {
            ws.fill().await;
        }
        let end = ws.read.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&ws.read[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455's example key: {head}");
        ws.read.drain(..end);
        let (opcode, open) = ws.frame().await.expect("the open packet");
        assert_eq!((opcode, open[0]), (1, b'0'));
        (ws, head)
    }

    /// The next server frame with its first byte whole (FIN, RSV bits, opcode).
    async fn frame_with_bits(&mut self) -> Option<(u8, Vec<u8>)> {
        let first = loop {
            if let Some(b) = self.read.first() {
                break *b;
            }
            if self.fill().await == 0 {
                return None;
            }
        };
        self.frame().await.map(|(_, payload)| (first, payload))
    }

    async fn fill(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WITHIN, self.tcp.read(&mut buf)).await.expect("data in time").unwrap_or(0);
        self.read.extend_from_slice(&buf[..n]);
        n
    }

    /// The next server frame (opcode, payload), `None` once the connection is closed.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.read.len() >= 2 {
                assert_eq!(self.read[1] & 0x80, 0, "server frames are unmasked");
                let (len, at) = match self.read[1] & 0x7F {
                    126 if self.read.len() >= 4 => (u16::from_be_bytes([self.read[2], self.read[3]]) as usize, 4),
                    127 if self.read.len() >= 10 => (u64::from_be_bytes(self.read[2..10].try_into().unwrap()) as usize, 10),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.read.len() >= at + len {
                    let opcode = self.read[0] & 0x0F;
                    let payload = self.read[at..at + len].to_vec();
                    self.read.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Reads frames until a close frame; its code. Then the connection must end.
    async fn close_code(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Some((8, payload)) => {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let mut rest = [0u8; 64];
                    let n = tokio::time::timeout(WITHIN, self.tcp.read(&mut rest)).await.expect("the server closes TCP");
                    assert!(matches!(n, Ok(0) | Err(_)), "nothing after the close frame");
                    return code;
                }
                Some(_) => {}
                None => panic!("closed without a close frame"),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }
}

/// A client frame: `first` is the first byte (FIN, RSV, opcode), masked with a fixed key.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    socketio::engine::framing::client_frame(first, payload, [0x12, 0x34, 0x56, 0x78])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_read_as_rfc_6455_says() {
    let s = Server::start().await;
    let mut ws = RawWs::open(&s, "/engine.io/").await;
    // A message in three fragments, with a ping between them.
    ws.send(&client_frame(0x01, b"4fr")).await;
    ws.send(&client_frame(0x89, b"are you there")).await;
    ws.send(&client_frame(0x00, b"agm")).await;
    ws.send(&client_frame(0x80, b"ents")).await;
    assert_eq!(ws.frame().await, Some((0xA, b"are you there".to_vec())), "the ping is answered with its payload");
    assert_eq!(ws.frame().await, Some((1, b"4fragments".to_vec())));
    // A frame sent one byte at a time.
    for byte in client_frame(0x81, b"4slowly") {
        ws.send(&[byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(ws.frame().await, Some((1, b"4slowly".to_vec())));
    // Many frames in one write.
    let burst: Vec<u8> = (0..100).flat_map(|i| client_frame(0x81, format!("4n{i}").as_bytes())).collect();
    ws.send(&burst).await;
    for i in 0..100 {
        assert_eq!(ws.frame().await, Some((1, format!("4n{i}").into_bytes())));
    }

    let mut unmasked = client_frame(0x81, b"4x");
    unmasked[1] &= 0x7F;
    let cases: [(&str, Vec<u8>, u16, ProtocolError); 7] = [
        ("an unmasked frame", unmasked, 1002, ProtocolError::BadFrame),
        ("a reserved bit", client_frame(0xC1, b"4x"), 1002, ProtocolError::BadFrame),
        ("an unknown opcode", client_frame(0x83, b"4x"), 1002, ProtocolError::BadFrame),
        ("a continuation with nothing to continue", client_frame(0x80, b"4x"), 1002, ProtocolError::BadFrame),
        ("a fragmented ping", client_frame(0x09, b""), 1002, ProtocolError::BadFrame),
        ("invalid UTF-8 in a text frame", client_frame(0x81, &[b'4', 0xFF, 0xFE]), 1007, ProtocolError::BadUtf8),
        ("an unknown Engine.IO packet", client_frame(0x81, b"abc"), 1002, ProtocolError::BadEnginePacket),
    ];
    for (name, bytes, code, kind) in cases {
        let before = s.errors(kind, false);
        let mut ws = RawWs::open(&s, "/engine.io/").await;
        ws.send(&bytes).await;
        assert_eq!(ws.close_code().await, code, "{name}");
        assert_eq!(s.errors(kind, false), before + 1, "{name} is counted");
    }
    // A new data frame inside a fragmented message.
    let mut ws = RawWs::open(&s, "/engine.io/").await;
    ws.send(&[client_frame(0x01, b"4a"), client_frame(0x81, b"4b")].concat()).await;
    assert_eq!(ws.close_code().await, 1002);
    // A frame announcing more than the limit is refused before its payload comes.
    let mut ws = RawWs::open(&s, "/engine.io/").await;
    ws.send(&[0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4]).await;
    assert_eq!(ws.close_code().await, 1009);
    // A client close frame is answered with one, and the connection ends.
    let mut ws = RawWs::open(&s, "/engine.io/").await;
    ws.send(&client_frame(0x88, &1000u16.to_be_bytes())).await;
    assert_eq!(ws.close_code().await, 1000);
}

// ---------------------------------------------------------------------------------------------
// Socket.IO

/// A Socket.IO connection over WebSocket, connected to `/` with `auth`.
async fn sio_connected(s: &Server, auth: &str) -> Ws {
    let (mut ws, _) = s.ws_session("/socket.io/").await;
    ws.send(Message::text(format!("40{auth}"))).await.unwrap();
    let reply = next_text(&mut ws).await;
    let sid: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    assert_eq!(sid.as_object().unwrap().len(), 1, "only the sid: {reply}");
    assert!(sid["sid"].is_string());
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_connects_namespaces_with_their_auth() {
    let s = Server::start().await;
    let mut ws = sio_connected(&s, "").await;
    assert_eq!(next_text(&mut ws).await, r#"42["auth",{}]"#);
    let mut ws = sio_connected(&s, r#"{"token":"123","n":[1,2.5]}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"42["auth",{"token":"123","n":[1,2.5]}]"#, "the auth as sent, byte for byte");

    ws.send(Message::text(r#"40/custom,{"token":"abc"}"#)).await.unwrap();
    let reply = next_text(&mut ws).await;
    assert!(reply.starts_with(r#"40/custom,{"sid":""#), "{reply}");
    assert_eq!(next_text(&mut ws).await, r#"42/custom,["auth",{"token":"abc"}]"#);
    ws.send(Message::text("40/random")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, r#"44/random,{"message":"Invalid namespace"}"#);
    // Still connected after the refusal.
    ws.send(Message::text(r#"42["message","still here"]"#)).await.unwrap();
    assert_eq!(next_text_answering_pings(&mut ws).await, r#"42["message-back","still here"]"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_events_acks_and_binary_attachments_go_both_ways() {
    let s = Server::start().await;
    let mut ws = sio_connected(&s, "").await;
    next_text(&mut ws).await; // auth
    ws.send(Message::text(r#"42["message",1,"2",{"3":[true]}]"#)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, r#"42["message-back",1,"2",{"3":[true]}]"#);
    ws.send(Message::text(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, r#"43456[1,"2",{"3":[false]}]"#);

    let placeholders = r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#;
    ws.send(Message::text(format!(r#"452-["message",{placeholders}]"#))).await.unwrap();
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    ws.send(Message::binary(vec![4, 5, 6])).await.unwrap();
    assert_eq!(next_text(&mut ws).await, format!(r#"452-["message-back",{placeholders}]"#));
    assert_eq!(next(&mut ws).await, Message::binary(vec![1, 2, 3]));
    assert_eq!(next(&mut ws).await, Message::binary(vec![4, 5, 6]));
    ws.send(Message::text(format!(r#"452-789["message-with-ack",{placeholders}]"#))).await.unwrap();
    ws.send(Message::binary(vec![7])).await.unwrap();
    ws.send(Message::binary(vec![8])).await.unwrap();
    assert_eq!(next_text(&mut ws).await, format!("462-789[{placeholders}]"));
    assert_eq!(next(&mut ws).await, Message::binary(vec![7]));
    assert_eq!(next(&mut ws).await, Message::binary(vec![8]));

    // Leaving the namespace gets no answer; the connection stays, with its heartbeat.
    ws.send(Message::text("41")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_works_over_long_polling_binary_included() {
    let s = Server::start().await;
    let session = s.polling("/socket.io/").await;
    assert_eq!(s.post(&session, r#"40{"token":"t"}"#).await, (200, "ok".into()));
    let (_, reply) = s.get(&session).await;
    assert!(reply.starts_with(r#"40{"sid":""#), "{reply}");
    let mut got = reply;
    while !got.contains(r#"42["auth",{"token":"t"}]"#) {
        got.push_str(&s.get(&session).await.1);
    }
    assert_eq!(s.post(&session, "42[\"message\",\"x\"]\u{1e}451-[\"message\",{\"_placeholder\":true,\"num\":0}]\u{1e}bAQID").await.0, 200);
    assert_eq!(
        s.get(&session).await.1,
        "42[\"message-back\",\"x\"]\u{1e}451-[\"message-back\",{\"_placeholder\":true,\"num\":0}]\u{1e}bAQID"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_the_moment_connect_arrives_is_handled() {
    // A client may answer the CONNECT reply at once; the server must already read it as
    // connected (an event it reads as "before CONNECT" would close the connection).
    let s = Arc::new(Server::start().await);
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut ws = sio_connected(&s, "").await;
                ws.send(Message::text(format!(r#"42{i}["message-with-ack",{i}]"#))).await.unwrap();
                // The `auth` event the fixture emits on connect may come before or after it.
                let ack = format!("43{i}[{i}]");
                for _ in 0..2 {
                    let got = next_text_answering_pings(&mut ws).await;
                    if got == ack {
                        return;
                    }
                    assert_eq!(got, r#"42["auth",{}]"#, "socket {i}");
                }
                panic!("socket {i}: no ack");
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(s.errors(ProtocolError::BadSocketPacket, true), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_socket_io_packets_close_the_connection_and_are_counted() {
    let s = Server::start().await;
    let cases: [(&str, Vec<Message>); 8] = [
        ("an unknown packet type", vec![Message::text("4abc")]),
        ("an event that is not an array", vec![Message::text("42{}")]),
        ("a bad ack id", vec![Message::text(r#"42abc["message-with-ack",1]"#)]),
        ("an event to a namespace never joined", vec![Message::text(r#"42/custom,["message"]"#)]),
        ("a CONNECT_ERROR from the client", vec![Message::text(r#"44{"message":"x"}"#)]),
        ("a second CONNECT to the same namespace", vec![Message::text("40")]),
        ("an attachment nobody announced", vec![Message::binary(vec![1, 2])]),
        (
            "text while attachments are awaited",
            vec![Message::text(r#"451-["message",{"_placeholder":true,"num":0}]"#), Message::text("42[\"x\"]")],
        ),
    ];
    for (name, messages) in cases {
        let before = s.errors(ProtocolError::BadSocketPacket, true);
        let mut ws = sio_connected(&s, "").await;
        next_text(&mut ws).await; // auth
        for m in messages {
            ws.send(m).await.unwrap();
        }
        assert!(closed(&mut ws).await.is_some(), "{name}: closed with a close frame");
        assert_eq!(s.errors(ProtocolError::BadSocketPacket, true), before + 1, "{name} is counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_joins_no_namespace_is_closed_after_the_connect_timeout() {
    let s = Server::start().await;
    let started = Instant::now();
    let (mut ws, _) = s.ws_session("/socket.io/").await;
    // Its pings are answered: only the connect timeout (1 s) can end it.
    loop {
        match tokio::time::timeout(WITHIN, ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => ws.send(Message::text("3")).await.unwrap(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_without_reading_is_bounded_and_others_are_served() {
    // An echo whose queue holds 100 frames, and no heartbeat to end the test early.
    let options =
        socketio::engine::Options { path: "/flood/".into(), max_queue: 100, ping_interval: Duration::from_secs(60), ..Default::default() };
    let engine = socketio::engine::Engine::start(options, fixture::Echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mounts: Arc<[Arc<dyn socketio::Mount>]> = Arc::new([Arc::new(engine.clone()) as Arc<dyn socketio::Mount>]);
    let _server = tokio::spawn(fixture::serve(listener, mounts));
    let open = async || {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut ws, _) = client_async(format!("ws://{addr}/flood/?EIO=4&transport=websocket"), tcp).await.unwrap();
        next_text(&mut ws).await;
        ws
    };
    let mut flood = open().await;
    let big = format!("4{}", "x".repeat(10_000));
    // 50 MB of echoes for a client that reads none: the kernel's buffers, then the session's
    // queue fill, and the rest is dropped rather than held.
    for _ in 0..5_000 {
        flood.send(Message::text(big.clone())).await.unwrap();
    }
    let mut other = open().await;
    other.send(Message::text("4ping")).await.unwrap();
    assert_eq!(next_text(&mut other).await, "4ping", "another client is served meanwhile");
    let mut echoes = 0;
    while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_millis(500), flood.next()).await {
        assert_eq!(t.len(), big.len());
        echoes += 1;
    }
    assert!((100..5_000).contains(&echoes), "{echoes} echoes: the queue held its bound and no more");
    // The flooder is still served once it reads again.
    flood.send(Message::text("4again")).await.unwrap();
    assert_eq!(next_text(&mut flood).await, "4again");

    // Pings the server must answer, from a client that reads none of the pongs: the answers
    // may pass the queue's bound, but only by a little; then the client is cut off.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let upgrade = "GET /flood/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    raw.write_all(upgrade.as_bytes()).await.unwrap();
    let ping = client_frame(0x89, &[7; 125]);
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..200_000 {
        if raw.write_all(&ping).await.is_err() {
            cut = true;
            break;
        }
        if engine.stats().protocol_errors(ProtocolError::Flood) > 0 {
            cut = true;
            break;
        }
    }
    assert!(cut, "the ping flood was never cut off");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    tokio::time::timeout(WITHIN, async {
        while engine.stats().protocol_errors(ProtocolError::Flood) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("counted as a flood");
}

/// permessage-deflate (RFC 7692) as herald accepts it: no context takeover on either side, so
/// every message is compressed alone (the same bytes each time) and client messages too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_negotiated_without_context_takeover_and_each_message_compressed_alone() {
    use socketio::engine::deflate;
    let s = Server::start().await;
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let (mut ws, head) = RawWs::open_with(&s, "/engine.io/", offer).await;
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
        "{head}"
    );
    // A long message, compressed by the client (RSV1), is inflated; its echo comes compressed,
    // the same bytes both times; a short one goes and comes back plain.
    let long = format!("4{}", "the same words again and again, ".repeat(100));
    for _ in 0..2 {
        ws.send(&client_frame(0xC1, &deflate::compress(long.as_bytes()))).await;
    }
    let (first, echo) = ws.frame_with_bits().await.unwrap();
    assert_eq!(first, 0xC1, "FIN, RSV1, text");
    assert!(echo.len() * 10 < long.len(), "{} of {}", echo.len(), long.len());
    assert_eq!(deflate::inflate(&echo, 1 << 20).unwrap(), long.as_bytes());
    assert_eq!(ws.frame_with_bits().await.unwrap(), (0xC1, echo), "no context carried over: the same frame");
    ws.send(&client_frame(0x81, b"4short")).await;
    assert_eq!(ws.frame_with_bits().await.unwrap(), (0x81, b"4short".to_vec()));
    // A compressed message in fragments: RSV1 on the first one only.
    let packed = deflate::compress(b"4in two parts");
    let (a, b) = packed.split_at(packed.len() / 2);
    ws.send(&[client_frame(0x41, a), client_frame(0x80, b)].concat()).await;
    assert_eq!(ws.frame_with_bits().await.unwrap(), (0x81, b"4in two parts".to_vec()));
    assert_eq!(s.servers.engine.stats().deflate(), (2, 3), "each long echo compressed; three compressed messages inflated");

    // RSV1 on a continuation frame or a control frame, RSV2, bytes that are not deflate data,
    // and a message that inflates past maxPayload each end the connection.
    let bomb = deflate::compress(&vec![b'4'; 2_000_000]);
    for (frames, code) in [
        ([client_frame(0x01, b"4a"), client_frame(0xC0, b"b")].concat(), 1002),
        (client_frame(0xC9, b""), 1002),
        (client_frame(0xA1, b"4x"), 1002),
        (client_frame(0xC1, &[0xff, 0xff, 0xff, 0xff]), 1007),
        (client_frame(0xC1, &bomb), 1009),
    ] {
        let (mut ws, _) = RawWs::open_with(&s, "/engine.io/", offer).await;
        ws.send(&frames).await;
        assert_eq!(ws.close_code().await, code, "{:02x?}", &frames[..2]);
    }
    // Without the offer, RSV1 is a protocol error, and an offer herald cannot accept is declined.
    let mut plain = RawWs::open(&s, "/engine.io/").await;
    plain.send(&client_frame(0xC1, &deflate::compress(b"4x"))).await;
    assert_eq!(plain.close_code().await, 1002);
    let narrow = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
    let (_, head) = RawWs::open_with(&s, "/engine.io/", narrow).await;
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
}

/// Long-polling responses of at least the threshold go gzip-compressed to a client that
/// accepts it, plain to one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_responses_are_gzipped_for_clients_that_accept_it() {
    use std::io::Read;
    let s = Server::start().await;
    let path = s.polling("/engine.io/").await;
    let long = format!("4{}", "x".repeat(3000));
    for (accept, gzipped) in [("gzip, deflate", true), ("identity", false)] {
        assert_eq!(s.post(&path, long.clone()).await.0, 200);
        let raw = reqwest::Client::builder().no_gzip().build().unwrap();
        let r = raw.get(s.url(&path)).header("accept-encoding", accept).send().await.unwrap();
        assert_eq!(r.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_owned()), gzipped.then(|| "gzip".to_owned()));
        let body = r.bytes().await.unwrap();
        let text = if gzipped {
            let mut out = String::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut out).unwrap();
            assert!(body.len() * 10 < out.len());
            out
        } else {
            String::from_utf8(body.to_vec()).unwrap()
        };
        assert_eq!(text, long, "{accept}");
    }
}
