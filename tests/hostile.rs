//! Hostile and broken input at the gateway: HTTP garbage, malformed Engine.IO and Socket.IO
//! packets over WebSocket and long-polling, oversized frames, connection storms, handshakes
//! that never finish and junk tokens. Each test checks that the offender is closed or refused,
//! that nothing else is disturbed, and (for the storms, against the built binary) that memory
//! stays bounded.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

const SOCKETS: &str = "herald_gateway_sockets";

// ---------------------------------------------------------------------------------------------
// Raw clients

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `bytes` on a fresh connection (ignoring a write the server cut short), then reads
/// until the server closes. Returns what it answered, or `None` if it kept the connection
/// open longer than `within`.
async fn send_raw(addr: SocketAddr, bytes: &[u8], within: Duration) -> Option<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|_| answer)
}

fn status_line(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer).lines().next().unwrap_or("").to_owned()
}

type Ws = WebSocketStream<TcpStream>;

/// A raw WebSocket transport, after the Engine.IO open packet.
async fn ws_open(addr: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = client_async(format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"), tcp).await.unwrap();
    let open = ws_next(&mut ws, Duration::from_secs(10)).await.expect("the Engine.IO open packet");
    assert!(open.starts_with("0{"), "open packet: {open}");
    ws
}

/// A raw WebSocket joined to the default namespace as `user`.
async fn ws_connected(addr: SocketAddr, user: &str) -> Ws {
    let mut ws = ws_open(addr).await;
    ws.send(Message::text(format!("40{}", json!({"token": token(user)})))).await.unwrap();
    let reply = ws_next(&mut ws, Duration::from_secs(10)).await.expect("a CONNECT reply");
    assert!(reply.starts_with("40{\"sid\""), "CONNECT reply: {reply}");
    ws
}

/// The next text message, answering Engine.IO pings; `None` once closed or after `within`.
async fn ws_next(ws: &mut Ws, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                let _ = ws.send(Message::text("3")).await;
            }
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_owned()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads until the server closes the WebSocket; the messages it sent first, or `None` if it
/// was still open after `within`.
async fn ws_closed(ws: &mut Ws, within: Duration) -> Option<Vec<String>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return Some(seen),
            Ok(Some(Ok(Message::Text(t)))) => seen.push(t.as_str().to_owned()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// An Engine.IO long-polling session: its base URL with `sid`.
async fn polling_open(http: &reqwest::Client, base: &str) -> String {
    let body = http.get(format!("{base}/socket.io/?EIO=4&transport=polling")).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap_or_else(|| panic!("open packet: {body}"))).unwrap();
    format!("{base}/socket.io/?EIO=4&transport=polling&sid={}", open["sid"].as_str().unwrap())
}

/// True once the polling session is gone: the server refuses its sid or sends it a close packet.
async fn polling_gone(http: &reqwest::Client, session: &str) -> bool {
    match http.get(session).timeout(Duration::from_secs(5)).send().await {
        Ok(r) if !r.status().is_success() => true,
        Ok(r) => r.text().await.is_ok_and(|b| b.split('\u{1e}').any(|p| p == "1")),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The built binary, for memory

/// herald run as a user runs it (embedded broker), so its RSS can be read.
struct Binary {
    process: HeraldProcess,
    addr: SocketAddr,
    url: String,
}

impl Binary {
    /// `server` is merged into the `server` section, e.g. `"{connect_timeout_ms: 1000}"`.
    async fn start(server: impl Overlay) -> Self {
        let mut yaml = json!({
            "server": {"shutdown_grace_secs": 5},
            "kafka": {
                "brokers": "embedded",
                "embedded": {"listen": format!("127.0.0.1:{}", free_port())},
                "options": {"auto.offset.reset": "earliest"},
            },
            "auth": {"jwt": {"secret": SECRET}},
            "log": {"level": "error"},
        });
        merge_into(&mut yaml, json!({"server": server.into_value()}));
        let process = HeraldProcess::start(&yaml.to_string()).await;
        let url = process.url.clone();
        let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
        Binary { process, addr, url }
    }

    fn rss_kib(&self) -> u64 {
        self.process.rss_kib()
    }

    async fn produce(&self, user: &str, n: u32) {
        let record = json!({"userId": user, "type": "t", "body": {"n": n}}).to_string();
        let out = self.process.run(&["produce", &record]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// A real socket.io-client connects and receives a notification.
    async fn serves_a_real_client(&self, c: &mut Clients, id: &str, n: u32) {
        c.connect_as(id, &self.url, id).await;
        self.produce(id, n).await;
        assert_eq!(c.expect(id, "notification").await["body"]["n"], n);
        c.close(id).await;
    }

    /// After a storm: a real client still works, RSS grew less than `limit_kib` since
    /// `rss_before`, and herald stops cleanly.
    async fn still_serves_then_stop(self, mut c: Clients, rss_before: u64, limit_kib: u64) {
        self.serves_a_real_client(&mut c, "after", 2).await;
        let growth = self.rss_kib().saturating_sub(rss_before);
        eprintln!("RSS {rss_before} KiB before, grew by {growth} KiB");
        assert!(growth < limit_kib, "RSS grew by {growth} KiB");
        c.stop().await;
        self.stop().await;
    }

    async fn stop(self) {
        let status = self.process.terminate().await;
        assert!(status.success(), "herald exited with {status:?}: it must survive the hostile input and stop cleanly");
    }
}

/// Growth allowed across a storm of garbage. Generous, so allocator noise cannot fail it, yet
/// far below what keeping per-connection state (tens of KiB each) for thousands of connections
/// would take.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

async fn healthz(url: &str) -> bool {
    matches!(reqwest::get(format!("{url}/healthz")).await, Ok(r) if r.status().is_success())
}

async fn sockets(url: &str) -> f64 {
    scrape(url, SOCKETS).await
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_garbage_is_closed_and_the_server_keeps_serving() {
    let h = Binary::start("{connect_timeout_ms: 1000}").await;
    let mut c = Clients::start().await;
    h.serves_a_real_client(&mut c, "before", 1).await;
    let rss_before = h.rss_kib();

    let huge_header = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let many_headers =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", (0..10_000).map(|i| format!("X-{i}: v\r\n")).collect::<String>());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", garbage(1, 64 << 10)),
        ("nul bytes", vec![0; 4096]),
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec()),
        ("bad version", b"GET / HTTP/9.9\r\n\r\n".to_vec()),
        ("bad method", b"G\x01T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("huge uri", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(1 << 20)).into_bytes()),
        ("huge header", huge_header.into_bytes()),
        ("many headers", many_headers.into_bytes()),
        ("bad header", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        ("half a request", b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec()),
        ("silence", Vec::new()),
        (
            "bad chunked body",
            b"POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        ),
        ("bad content length", b"POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec()),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("tls hello", [&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..], &garbage(2, 512)].concat()),
    ];
    // Every case is closed by the server (a half request or silence by the 1 s header deadline);
    // an answer, when there is one, is an HTTP error.
    for round in 0..3 {
        for (name, bytes) in &cases {
            let answer = send_raw(h.addr, bytes, Duration::from_secs(10)).await;
            let answer = answer.unwrap_or_else(|| panic!("{name}: the server kept the connection open"));
            let status = status_line(&answer);
            assert!(status.is_empty() || status.starts_with("HTTP/1.1 4"), "{name}: answered `{status}`");
            assert!(healthz(&h.url).await, "{name} (round {round}): /healthz failed afterwards");
        }
    }
    // A request body that stops half way, on a live long-polling session: closed by the body
    // deadline (the same 1 s), the session unaffected by the connection's end.
    let session = polling_open(&reqwest::Client::new(), &h.url).await;
    let path = session.strip_prefix(&h.url).unwrap();
    let stalled = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n40{{\"tok");
    let answer = send_raw(h.addr, stalled.as_bytes(), Duration::from_secs(10)).await.expect("a stalled body was left open");
    let status = status_line(&answer);
    assert!(status.is_empty() || status.starts_with("HTTP/1.1 4"), "stalled body: answered `{status}`");

    // A burst of them at once, bounded.
    let started = Instant::now();
    let burst: Vec<_> = (0..400u64)
        .map(|i| {
            let addr = h.addr;
            tokio::spawn(async move { send_raw(addr, &garbage(i + 10, 2048 + i as usize * 16), Duration::from_secs(20)).await.is_some() })
        })
        .collect();
    for t in burst {
        assert!(t.await.unwrap(), "a garbage connection was left open");
    }
    assert!(started.elapsed() < Duration::from_secs(60), "the burst took {:?}", started.elapsed());

    h.still_serves_then_stop(c, rss_before, RSS_GROWTH_LIMIT_KIB).await;
}

/// Opens 2000 connections to `h` (silent TCP, Engine.IO opened without CONNECT, and full
/// Socket.IO sockets, at most 200 being opened at a time), checks only the full sockets count,
/// drops them all at once, and waits for the socket gauge to return to 0.
async fn storm(h: &Binary) {
    const SILENT: usize = 700;
    const OPENED: usize = 700;
    const JOINED: usize = 600;
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    let spawn_all = |n: usize, kind: u8| {
        (0..n)
            .map(|i| {
                let (gate, addr) = (gate.clone(), h.addr);
                tokio::spawn(async move {
                    let _permit = gate.acquire().await.unwrap();
                    match kind {
                        0 => (Some(TcpStream::connect(addr).await.unwrap()), None),
                        1 => (None, Some(ws_open(addr).await)),
                        _ => (None, Some(ws_connected(addr, &format!("storm-{}", i % 50)).await)),
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    let tasks: Vec<_> = spawn_all(SILENT, 0).into_iter().chain(spawn_all(OPENED, 1)).chain(spawn_all(JOINED, 2)).collect();
    let mut held = Vec::with_capacity(tasks.len());
    for t in tasks {
        held.push(t.await.unwrap());
    }
    assert_eq!(held.len(), SILENT + OPENED + JOINED);
    assert!(started.elapsed() < Duration::from_secs(90), "opening took {:?}", started.elapsed());
    assert_eq!(sockets(&h.url).await, JOINED as f64, "only the sockets that joined the namespace count");
    assert!(healthz(&h.url).await);

    drop(held);
    eventually(Duration::from_secs(30), "the socket gauge back to 0", async || sockets(&h.url).await == 0.0).await;
    assert!(started.elapsed() < Duration::from_secs(150), "the storm took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_connections_opened_and_dropped_leave_nothing_behind() {
    let h = Binary::start("{connect_timeout_ms: 1000}").await;
    let mut c = Clients::start().await;
    h.serves_a_real_client(&mut c, "before", 1).await;
    eventually(Duration::from_secs(10), "no socket before the storm", async || sockets(&h.url).await == 0.0).await;
    let rss_before = h.rss_kib();
    // The allocator keeps much of what a storm freed (here RSS levels off about 45 MiB up after
    // two storms). Later storms must reuse it: state kept per connection would add as much with
    // every storm (4 KiB each is 8 MiB). One storm alone added 2-5 MiB, and once 9.9 MiB with
    // the other test binaries running, so the limit is on the mean of the third and fourth.
    storm(&h).await;
    storm(&h).await;
    let rss_after_two = h.rss_kib();
    storm(&h).await;
    let rss_after_three = h.rss_kib();
    storm(&h).await;
    let (third, fourth) = (rss_after_three.saturating_sub(rss_after_two), h.rss_kib().saturating_sub(rss_after_three));
    eprintln!("RSS {rss_before} KiB before, {rss_after_two} KiB after two storms, then +{third} KiB and +{fourth} KiB");
    assert!((third + fourth) / 2 < 8 * 1024, "storms three and four grew RSS by {third} and {fourth} KiB");
    h.still_serves_then_stop(c, rss_before, 2 * RSS_GROWTH_LIMIT_KIB).await;
}

/// An in-process herald with a witness: a real client whose notifications must keep arriving.
/// `server` is merged into the `server` section, e.g. `{connect_timeout_ms: 1000}`.
async fn with_witness(server: impl Overlay) -> Scenario {
    let mut s = Stack::default().instance(json!({"server": server.into_value()})).start().await;
    s.heralds[0].wait_assigned(4).await;
    let url = s.url(0);
    s.c.connect_as("witness", &url, "witness").await;
    s
}

/// The witness still receives its notifications and is the only socket counted; then stops.
async fn witness_still_served_then_stop(mut s: Scenario) {
    s.kafka.notify("witness", json!({"n": 1})).await;
    assert_eq!(s.c.expect("witness", "notification").await["body"]["n"], 1);
    let h = &s.heralds[0];
    eventually(Duration::from_secs(10), "only the witness counted", async || h.metric(SOCKETS).await == 1.0).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_are_closed_and_never_counted() {
    let s = with_witness("{connect_timeout_ms: 1000}").await;
    let h = &s.heralds[0];
    let http = reqwest::Client::new();
    let started = Instant::now();

    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    let mut opened = ws_open(h.addr).await;
    let polling = polling_open(&http, &h.url()).await;
    assert_eq!(h.metric(SOCKETS).await, 1.0, "an unfinished handshake counts as a socket");

    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent TCP connection was not closed: {read:?}");
    assert!(ws_closed(&mut opened, Duration::from_secs(10)).await.is_some(), "an Engine.IO session without CONNECT was not closed");
    eventually(Duration::from_secs(10), "the polling session without CONNECT closed", async || polling_gone(&http, &polling).await).await;
    assert!(started.elapsed() < Duration::from_secs(15), "cleanup took {:?} with a 1 s timeout", started.elapsed());

    witness_still_served_then_stop(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_over_websocket_close_only_their_socket() {
    let s = with_witness("{connect_timeout_ms: 1000}").await;
    let h = &s.heralds[0];
    let auth = json!({"token": token("mallory")}).to_string();
    let before_connect: Vec<(&str, Message)> = vec![
        ("unknown engine.io type", Message::text("9hello")),
        ("empty message", Message::text("")),
        ("unknown socket.io type", Message::text("49[]")),
        ("bad connect json", Message::text("40{\"token\":")),
        ("event before connect", Message::text("42[\"auth_refresh\",{}]")),
        ("ack before connect", Message::text("43[1]")),
        ("binary garbage", Message::binary(garbage(3, 4096))),
        ("binary attachments announced", Message::text("451-[\"auth_refresh\",{\"_placeholder\":true,\"num\":0}]")),
        ("invalid utf-8 in binary", Message::binary(vec![b'4', b'0', 0xff, 0xfe])),
    ];
    for (name, msg) in before_connect {
        let mut ws = ws_open(h.addr).await;
        ws.send(msg).await.unwrap();
        let seen = ws_closed(&mut ws, Duration::from_secs(10)).await.unwrap_or_else(|| panic!("{name}: left open"));
        assert!(seen.iter().all(|m| !m.starts_with("40{\"sid\"")), "{name}: admitted: {seen:?}");
        assert_eq!(h.metric(SOCKETS).await, 1.0, "{name}: counted as a socket");
    }

    // An unknown namespace is refused with a CONNECT_ERROR.
    let mut ws = ws_open(h.addr).await;
    ws.send(Message::text(format!("40/nope,{auth}"))).await.unwrap();
    let reply = ws_next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert!(reply.starts_with("44/nope,"), "unknown namespace: {reply}");

    // After a good CONNECT: garbage closes the socket, and it stops counting.
    let after_connect: Vec<(&str, Message)> = vec![
        ("bad event json", Message::text("42[\"auth_refresh\",{bad")),
        ("event not an array", Message::text("42{\"a\":1}")),
        ("unknown engine.io type", Message::text("7")),
        ("binary garbage", Message::binary(garbage(4, 4096))),
    ];
    for (name, msg) in after_connect {
        let mut ws = ws_connected(h.addr, "mallory").await;
        eventually(Duration::from_secs(5), "mallory counted", async || h.metric(SOCKETS).await == 2.0).await;
        ws.send(msg).await.unwrap();
        let seen = ws_closed(&mut ws, Duration::from_secs(10)).await;
        assert!(seen.is_some(), "{name}: left open");
        eventually(Duration::from_secs(5), "mallory no longer counted", async || h.metric(SOCKETS).await == 1.0).await;
    }

    // Ack ids: one that overflows an i64 is dropped (the event is handled, nothing is echoed
    // back), the largest i64 is answered as given.
    let mut ws = ws_connected(h.addr, "mallory").await;
    let huge = "9".repeat(5000);
    ws.send(Message::text(format!("42{huge}[\"auth_refresh\",{{}}]"))).await.unwrap();
    ws.send(Message::text(format!("42{}[\"auth_refresh\",{{}}]", i64::MAX))).await.unwrap();
    let mut replies = Vec::new();
    while !replies.iter().any(|r: &String| r.starts_with(&format!("43{}[", i64::MAX))) {
        replies.push(ws_next(&mut ws, Duration::from_secs(10)).await.expect("the ack for the largest i64 id"));
    }
    assert!(replies.iter().all(|r| !r.contains(&huge[..30])), "{replies:?}");
    assert_eq!(h.metric(SOCKETS).await, 2.0);
    drop(ws);

    witness_still_served_then_stop(s).await;
}

/// A masked client text frame.
fn client_text_frame(text: &str) -> Vec<u8> {
    socketio::engine::framing::client_frame(0x81, text.as_bytes(), [3, 1, 4, 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_after_the_packet_that_ended_a_session_is_read() {
    let mut s = with_witness("{connect_timeout_ms: 1000}").await;
    let (h, c) = (&s.heralds[0], &mut s.c);
    // A broken packet, then a good CONNECT, in one write: the second must not connect a socket
    // to the session the first one ended.
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let upgrade = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let both = [client_text_frame("4x"), client_text_frame(&format!("40{}", json!({"token": token("mallory")})))].concat();
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    tcp.write_all(&both).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the connection was not closed");
    assert!(!String::from_utf8_lossy(&sink).contains("40{\"sid\""), "a socket was connected: {:?}", String::from_utf8_lossy(&sink));
    // A sentinel connects after it: had the CONNECT been read, it would have been accepted first.
    c.connect_as("sentinel", &h.url(), "mallory").await;
    assert_eq!(h.metric("herald_gateway_connections_total").await, 2.0, "only the witness and the sentinel were accepted");
    eventually(Duration::from_secs(5), "the witness and the sentinel", async || h.metric(SOCKETS).await == 2.0).await;
    c.close("sentinel").await;
    witness_still_served_then_stop(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_over_long_polling_end_only_their_session() {
    let s = with_witness("{connect_timeout_ms: 1000, ping_interval_secs: 1}").await;
    let h = &s.heralds[0];
    let http = reqwest::Client::new();
    let bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unknown engine.io type", b"9hello".to_vec(), 400),
        ("unknown socket.io type", b"49[]".to_vec(), 200),
        ("bad connect json", b"40{\"token\":".to_vec(), 200),
        ("event before connect", b"42[\"auth_refresh\",{}]".to_vec(), 200),
        ("random bytes", garbage(5, 4096), 400),
        ("bad separators", b"\x1e\x1e\x1e".to_vec(), 400),
        ("bad base64 binary", b"bnot base64!!".to_vec(), 400),
    ];
    for (name, body, expected) in bodies {
        let session = polling_open(&http, &h.url()).await;
        let status = http.post(&session).body(body).send().await.unwrap().status();
        // What the Engine.IO payload decoder cannot read is refused at once; a packet it reads
        // but Socket.IO cannot use is accepted, then the session is closed.
        assert_eq!(status.as_u16(), expected, "{name}");
        eventually(Duration::from_secs(10), &format!("{name}: session closed"), async || polling_gone(&http, &session).await).await;
        assert_eq!(h.metric(SOCKETS).await, 1.0, "{name}: counted as a socket");
    }
    // A POST to a session that does not exist, and a bad sid.
    for sid in ["AAAAAAAAAAAAAAAAAAAA", "%00%ff", &"x".repeat(10_000)] {
        let r = http.post(format!("{}/socket.io/?EIO=4&transport=polling&sid={sid}", h.url())).body("40").send().await.unwrap();
        assert!(r.status().is_client_error(), "sid {}: {}", &sid[..sid.len().min(20)], r.status());
    }
    witness_still_served_then_stop(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_close_the_connection() {
    let s = with_witness("{max_payload_bytes: 4096}").await;
    let h = &s.heralds[0];
    let refresh = |len: usize| format!("421[\"auth_refresh\",{{\"token\":\"{}\"}}]", "a".repeat(len));

    // Under the limit, a message is handled (the refresh is refused, by an ack).
    let mut ws = ws_connected(h.addr, "mallory").await;
    ws.send(Message::text(refresh(3000))).await.unwrap();
    // Sent the moment CONNECT arrives: the handler must already be registered.
    let ack = ws_next(&mut ws, Duration::from_secs(10)).await.expect("an ack");
    assert!(ack.starts_with("431["), "ack: {ack}");
    // Over it, the connection is closed.
    ws.send(Message::text(refresh(8000))).await.unwrap();
    assert!(ws_closed(&mut ws, Duration::from_secs(10)).await.is_some(), "an oversized WebSocket message left the socket open");

    // A frame far over the limit before CONNECT.
    let mut ws = ws_open(h.addr).await;
    let _ = ws.send(Message::binary(garbage(6, 1 << 20))).await;
    assert!(ws_closed(&mut ws, Duration::from_secs(10)).await.is_some(), "a 1 MiB frame left the socket open");

    // Long-polling: a body over the limit is refused and ends the session.
    let http = reqwest::Client::new();
    let session = polling_open(&http, &h.url()).await;
    let status = http.post(&session).body(format!("40{}", json!({"token": token("mallory")}))).send().await.unwrap().status();
    assert!(status.is_success(), "{status}");
    eventually(Duration::from_secs(5), "the polling socket counted", async || h.metric(SOCKETS).await == 2.0).await;
    let status = http.post(&session).body(refresh(8000)).send().await.unwrap().status();
    assert!(status.is_client_error(), "an oversized polling body was answered {status}");
    eventually(Duration::from_secs(10), "the oversized polling session closed", async || polling_gone(&http, &session).await).await;

    witness_still_served_then_stop(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_tokens_get_a_fixed_connect_error() {
    // Room for a 1 MB token, so it reaches the verifier instead of the payload limit.
    let mut s = with_witness("{max_payload_bytes: 2000000}").await;
    let (h, c) = (&s.heralds[0], &mut s.c);
    let binary: String = garbage(7, 2048).iter().map(|b| char::from(*b)).collect();
    let huge_jwt = format!("eyJhbGciOiJIUzI1NiJ9.{}.c2ln", "A".repeat(1_000_000));
    let cases = [
        ("binary", json!({"token": binary}), "invalid token"),
        ("huge", json!({"token": "x".repeat(1_000_000)}), "invalid token"),
        ("huge-jwt", json!({"token": huge_jwt}), "invalid token"),
        ("dots", json!({"token": "..."}), "invalid token"),
        ("number", json!({"token": 12345}), "missing token"),
        ("object", json!({"token": {"sub": "admin"}}), "missing token"),
        ("array", json!({"token": [token("admin")]}), "missing token"),
        ("null", json!({"token": null}), "missing token"),
        ("empty", json!({"token": ""}), "missing token"),
        ("auth-string", json!(token("admin")), "missing token"),
        ("auth-array", json!([token("admin")]), "missing token"),
    ];
    for (id, auth, message) in cases {
        assert_eq!(c.connect(id, &h.url(), json!({"auth": auth})).await, Err(message.into()), "{id}");
    }
    assert!(healthz(&h.url()).await);
    witness_still_served_then_stop(s).await;
}
