//! herald's WebSocket server held to RFC 6455 with a raw client, case by case in the way the
//! Autobahn test suite groups its server-side cases: pings and pongs (2.x), reserved bits (3.x)
//! and opcodes (4.x), fragmentation with control frames in between (5.x), UTF-8 across
//! fragments (6.x), close codes and reasons (7.x), lengths in their shortest form and limits
//! (1.x, 9.x), masking (section 5.1). Each case runs on a fresh connection.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// `server.max_payload_bytes` in these tests.
const MAX_PAYLOAD: usize = 4096;

/// A masked client frame, with the reserved bits `rsv` (0-7) and the length in its shortest form.
fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    socketio::engine::framing::client_frame((u8::from(fin) << 7) | (rsv << 4) | opcode, payload, [0x37, 0xfa, 0x21, 0x3d])
}

fn whole(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, payload)
}

fn close_with(code: u16, reason: &[u8]) -> Vec<u8> {
    whole(CLOSE, &[&code.to_be_bytes()[..], reason].concat())
}

/// A raw WebSocket client on an Engine.IO session.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A server frame: FIN, opcode, payload.
type ServerFrame = (bool, u8, Vec<u8>);

impl Raw {
    /// Upgrades a fresh connection and reads the Engine.IO open packet.
    async fn open(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut raw = Raw { tcp, buf: Vec::new() };
        while !raw.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(raw.read_more().await, "the server closed during the handshake");
        }
        let end = raw.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        let (_, opcode, open) = raw.next().await.expect("the open packet");
        assert!(opcode == TEXT && open.starts_with(b"0{"), "{}", String::from_utf8_lossy(&open));
        raw
    }

    /// Opens, and joins the namespace with a CONNECT packet sent as one frame.
    async fn connected(addr: SocketAddr) -> Self {
        let mut raw = Self::open(addr).await;
        raw.send(&whole(TEXT, connect_packet().as_bytes())).await;
        raw.expect_connect_reply().await;
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed: what it said is read next.
        let _ = self.tcp.write_all(bytes).await;
    }

    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next server frame, skipping Engine.IO heartbeats; `None` once the connection ends.
    async fn next(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(f) = self.take_frame() {
                if f.1 == TEXT && f.2 == b"2" {
                    continue;
                }
                return Some(f);
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    fn take_frame(&mut self) -> Option<ServerFrame> {
        let [b0, b1, ..] = self.buf[..] else { return None };
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let (len, at) = match b1 & 0x7F {
            126 => (u16::from_be_bytes(self.buf.get(2..4)?.try_into().unwrap()) as usize, 4),
            127 => (u64::from_be_bytes(self.buf.get(2..10)?.try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        let payload = self.buf.get(at..at + len)?.to_vec();
        self.buf.drain(..at + len);
        Some((b0 & 0x80 != 0, b0 & 0x0F, payload))
    }

    /// The close code of the server's close frame, skipping other frames first.
    async fn close_code(&mut self) -> Option<u16> {
        while let Some((_, opcode, payload)) = self.next().await {
            if opcode == CLOSE {
                return Some(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])));
            }
        }
        None
    }

    async fn expect_pong(&mut self, payload: &[u8]) {
        let (fin, opcode, got) = self.next().await.expect("a pong");
        assert_eq!((fin, opcode, &got[..]), (true, PONG, payload));
    }

    async fn expect_connect_reply(&mut self) {
        let (_, opcode, reply) = self.next().await.expect("a CONNECT reply");
        assert!(opcode == TEXT && reply.starts_with(b"40{\"sid\""), "{}", String::from_utf8_lossy(&reply));
    }
}

fn connect_packet() -> String {
    format!("40{}", json!({"token": token("rfc"), "note": "κόσμε"}))
}

async fn server() -> (Scenario, SocketAddr) {
    let s = Stack::default().instance(json!({"server": {"max_payload_bytes": MAX_PAYLOAD}})).start().await;
    let addr = s.heralds[0].addr;
    (s, addr)
}

/// Sends `bytes` on a fresh joined connection and expects the server to fail it with `code`.
async fn fails_with(addr: SocketAddr, what: &str, bytes: &[u8], code: u16) {
    let mut raw = Raw::connected(addr).await;
    raw.send(bytes).await;
    assert_eq!(raw.close_code().await, Some(code), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_pongs_and_reserved_bits_and_opcodes() {
    let (s, addr) = server().await;
    // 2.1-2.4, 2.7-2.9: pings answered with their payload, up to 125 bytes, binary too;
    // unsolicited pongs ignored.
    let mut raw = Raw::connected(addr).await;
    let all_bytes: Vec<u8> = (0..125u8).map(|b| b.wrapping_mul(37)).collect();
    for payload in [&b""[..], b"Hello, world!", &[0xFE; 125], &all_bytes] {
        raw.send(&whole(PING, payload)).await;
        raw.expect_pong(payload).await;
    }
    raw.send(&whole(PONG, b"unsolicited")).await;
    raw.send(&whole(PING, b"still here")).await;
    raw.expect_pong(b"still here").await;
    // 2.5: a ping over 125 bytes.
    fails_with(addr, "a 126-byte ping", &whole(PING, &[0; 126]), 1002).await;
    // 3.1-3.7: reserved bits without an extension, on data and control frames.
    for rsv in 1..=7 {
        fails_with(addr, &format!("rsv {rsv} on text"), &frame(true, rsv, TEXT, b"3"), 1002).await;
    }
    fails_with(addr, "rsv on a ping", &frame(true, 4, PING, b""), 1002).await;
    // 4.1-4.2: reserved opcodes, data (3-7) and control (11-15).
    for opcode in [3, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
        fails_with(addr, &format!("opcode {opcode}"), &whole(opcode, b"x"), 1002).await;
    }
    // Section 5.1: client frames are masked.
    let mut unmasked = whole(TEXT, b"3");
    unmasked[1] &= 0x7F;
    unmasked.drain(2..6);
    fails_with(addr, "an unmasked frame", &unmasked, 1002).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmentation_with_control_frames_in_between() {
    let (s, addr) = server().await;
    // 5.3-5.8: a message in three fragments, with a ping between them, is one message.
    let packet = connect_packet();
    let (a, b) = packet.as_bytes().split_at(5);
    let (b, c) = b.split_at(7);
    let mut raw = Raw::open(addr).await;
    raw.send(&frame(false, 0, TEXT, a)).await;
    raw.send(&whole(PING, b"between")).await;
    raw.expect_pong(b"between").await;
    raw.send(&frame(false, 0, CONTINUATION, b)).await;
    raw.send(&frame(true, 0, CONTINUATION, c)).await;
    raw.expect_connect_reply().await;
    // 5.1-5.2: control frames may not be fragmented.
    fails_with(addr, "a fragmented ping", &frame(false, 0, PING, b"x"), 1002).await;
    fails_with(addr, "a fragmented close", &frame(false, 0, CLOSE, &[0x03, 0xe8]), 1002).await;
    // 5.9-5.14: a continuation with no message started.
    fails_with(addr, "a lone continuation", &frame(true, 0, CONTINUATION, b"3"), 1002).await;
    fails_with(addr, "a lone unfinished continuation", &frame(false, 0, CONTINUATION, b"3"), 1002).await;
    // 5.15-5.20: a new message while one is unfinished.
    let interleaved = [frame(false, 0, TEXT, b"4"), whole(TEXT, b"3")].concat();
    fails_with(addr, "a text frame inside a fragmented message", &interleaved, 1002).await;
    let interleaved = [frame(false, 0, BINARY, b"x"), frame(false, 0, TEXT, b"3")].concat();
    fails_with(addr, "a second message started", &interleaved, 1002).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_is_checked_across_fragments() {
    let (s, addr) = server().await;
    // 6.2-6.4: a valid message split inside a multi-byte character, at every byte.
    let packet = connect_packet();
    let kappa = packet.find('κ').unwrap();
    for split in [kappa + 1, kappa + 3] {
        let mut raw = Raw::open(addr).await;
        let (a, b) = packet.as_bytes().split_at(split);
        raw.send(&frame(false, 0, TEXT, a)).await;
        raw.send(&frame(true, 0, CONTINUATION, b)).await;
        raw.expect_connect_reply().await;
    }
    // 6.3, 6.6-6.21: invalid UTF-8 whole, and only in a later fragment.
    fails_with(addr, "invalid UTF-8", &whole(TEXT, b"4\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"), 1007).await;
    let split = [frame(false, 0, TEXT, b"42[\"x\",\""), frame(true, 0, CONTINUATION, b"\xc0\xaf\"]")].concat();
    fails_with(addr, "invalid UTF-8 in the last fragment", &split, 1007).await;
    let cut = [frame(false, 0, TEXT, b"42[\"\xce"), frame(true, 0, CONTINUATION, b"\"]")].concat();
    fails_with(addr, "a character cut and never finished", &cut, 1007).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames_by_the_rules() {
    let (s, addr) = server().await;
    // 7.1.1, 7.3.1: no payload; answered with 1000.
    let mut raw = Raw::connected(addr).await;
    raw.send(&whole(CLOSE, b"")).await;
    assert_eq!(raw.close_code().await, Some(1000));
    // 7.1.2-7.1.5: nothing after a close is read, the close answered once.
    let mut raw = Raw::connected(addr).await;
    raw.send(&[close_with(1000, b""), whole(PING, b"after"), whole(TEXT, b"3")].concat()).await;
    let mut after = Vec::new();
    while let Some((_, opcode, payload)) = raw.next().await {
        after.push((opcode, payload));
    }
    assert_eq!(after, [(CLOSE, 1000u16.to_be_bytes().to_vec())], "a close, then nothing");
    // 7.3.2: one byte cannot hold a code.
    fails_with(addr, "a one-byte close", &whole(CLOSE, b"\x03"), 1002).await;
    // 7.3.3-7.3.6, 7.7.x: a code and a reason up to 123 bytes, echoed.
    for code in [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
        let mut raw = Raw::connected(addr).await;
        raw.send(&close_with(code, &[b'x'; 123])).await;
        assert_eq!(raw.close_code().await, Some(code), "code {code} is echoed");
    }
    // 7.9.x: codes no peer may send.
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65_535] {
        fails_with(addr, &format!("close code {code}"), &close_with(code, b""), 1002).await;
    }
    // 7.5.1: a reason that is not UTF-8.
    fails_with(
        addr,
        "a close reason that is not UTF-8",
        &close_with(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
        1007,
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lengths_and_limits() {
    let (s, addr) = server().await;
    // 1.1-1.2: messages in the 7-bit and 16-bit length forms are read (a ping after each is
    // answered); the 64-bit form is over this server's limit, and frame.rs's unit test parses it.
    for filler in [10usize, 200, 3000] {
        let mut raw = Raw::connected(addr).await;
        let event = format!("42[\"receipt\",{{\"pad\":\"{}\"}}]", "p".repeat(filler));
        raw.send(&whole(TEXT, event.as_bytes())).await;
        raw.send(&whole(PING, b"after")).await;
        raw.expect_pong(b"after").await;
    }
    // Section 5.2: lengths in their shortest form only.
    let padded = |b1: u8, len: &[u8], payload: &[u8]| {
        let mask = [0u8; 4];
        [&[0x81, 0x80 | b1][..], len, &mask, payload].concat()
    };
    fails_with(addr, "5 bytes in the 16-bit form", &padded(126, &5u16.to_be_bytes(), b"3\x00\x00\x00\x00"), 1002).await;
    fails_with(addr, "200 bytes in the 64-bit form", &padded(127, &200u64.to_be_bytes(), &[b'3'; 200]), 1002).await;
    fails_with(addr, "a 64-bit length with its top bit set", &padded(127, &(1u64 << 63).to_be_bytes(), b""), 1002).await;
    // 9.x: a message over max_payload_bytes, whole or by its fragments.
    fails_with(addr, "a frame over the limit", &whole(TEXT, &vec![b'3'; MAX_PAYLOAD + 1]), 1009).await;
    let fragments =
        [frame(false, 0, TEXT, &vec![b'4'; MAX_PAYLOAD / 2 + 1]), frame(true, 0, CONTINUATION, &vec![b'x'; MAX_PAYLOAD / 2 + 1])];
    fails_with(addr, "fragments over the limit together", &fragments.concat(), 1009).await;
    s.stop().await;
}
