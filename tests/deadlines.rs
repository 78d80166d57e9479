//! Whole-request deadlines at the edge, tried as an attacker would: request heads and bodies
//! sent a few bytes at a time, on herald's own Socket.IO front and on the HTTP server behind it
//! (the API), each cut off `server.connect_timeout_ms` after it started however steadily it
//! trickles; requests that cannot succeed answered from their head, their body never read.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const API_KEY: &str = "an-api-key-of-at-least-16-characters";
/// `server.connect_timeout_ms` in these tests.
const DEADLINE: Duration = Duration::from_secs(1);
/// How long past the deadline a cut may come (timer and scheduling slack on a busy machine).
const SLACK: Duration = Duration::from_millis(1500);

async fn start() -> (HeraldProcess, SocketAddr) {
    let yaml = json!({
        "server": {"connect_timeout_ms": DEADLINE.as_millis() as u64, "shutdown_grace_secs": 5},
        "kafka": {"brokers": "embedded", "embedded": {"listen": format!("127.0.0.1:{}", free_port())}},
        "auth": {"jwt": {"secret": SECRET}},
        "api": {"key": API_KEY},
        "log": {"level": "error"},
    });
    let process = HeraldProcess::start(&yaml.to_string()).await;
    let addr = process.url.strip_prefix("http://").unwrap().parse().unwrap();
    (process, addr)
}

/// What the server did with a request sent as `head`, then `trickle` one byte every 200 ms.
struct Outcome {
    /// When the server closed the connection, from the first byte sent.
    closed_after: Duration,
    answer: String,
    /// Bytes of `trickle` written before the server closed.
    trickled: usize,
}

/// Sends `head` (itself a byte at a time when `slow_head`), then `trickle` a byte every 200 ms,
/// until the server closes the connection; gives up after 20 s.
async fn send_slowly(addr: SocketAddr, head: &str, slow_head: bool, trickle: &[u8]) -> Outcome {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = tcp.split();
    let mut answer = Vec::new();
    let mut trickled = 0;
    let send = async {
        if slow_head {
            for b in head.bytes() {
                writer.write_all(&[b]).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else {
            writer.write_all(head.as_bytes()).await?;
        }
        for b in trickle {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.write_all(&[*b]).await?;
            trickled += 1;
        }
        std::future::pending::<std::io::Result<()>>().await
    };
    let receive = async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let until_closed = async {
        tokio::select! {
            _ = send => {}
            _ = receive => {}
        }
    };
    tokio::time::timeout(Duration::from_secs(20), until_closed).await.expect("the server kept a trickling request for 20 s");
    Outcome { closed_after: started.elapsed(), answer: String::from_utf8_lossy(&answer).into_owned(), trickled }
}

/// The path of a new long-polling session's requests.
async fn polling_session(h: &HeraldProcess) -> String {
    let open = reqwest::get(format!("{}/socket.io/?EIO=4&transport=polling", h.url)).await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    format!("/socket.io/?EIO=4&transport=polling&sid={}", open["sid"].as_str().unwrap())
}

fn post(path: &str, length: usize, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n{extra}\r\n")
}

async fn cut(h: &HeraldProcess, reason: &str) -> f64 {
    scrape(&h.url, &format!("herald_http_requests_cut_total{{reason=\"{reason}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_are_cut_off_at_the_deadline() {
    let (h, addr) = start().await;
    let body = vec![b'x'; 60_000];

    // A long-polling POST on a live session (herald's own front).
    let polling = send_slowly(addr, &post(&polling_session(&h).await, body.len(), ""), false, &body).await;
    // The publish API (hyper, behind the front).
    let auth = format!("Authorization: Bearer {API_KEY}\r\n");
    let api = send_slowly(addr, &post("/api/publish", body.len(), &auth), false, &body).await;

    for (what, outcome) in [("polling POST", &polling), ("POST /api/publish", &api)] {
        eprintln!("{what}: closed after {:?}, {} body bytes sent", outcome.closed_after, outcome.trickled);
        assert!(outcome.closed_after < DEADLINE + SLACK, "{what} kept for {:?}", outcome.closed_after);
        assert!(outcome.trickled < 20, "{what}: {} bytes trickled before the cut", outcome.trickled);
        assert!(outcome.answer.is_empty() || outcome.answer.starts_with("HTTP/1.1 4"), "{what}: {}", outcome.answer);
    }
    eventually(Duration::from_secs(5), "both counted", async || cut(&h, "body_timeout").await == 2.0).await;
    assert!(h.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_heads_are_cut_off_at_the_deadline_also_on_a_kept_alive_connection() {
    let (h, addr) = start().await;
    let head = post("/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA", 0, "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    let outcome = send_slowly(addr, &head, true, b"").await;
    eprintln!("a trickled head: closed after {:?}", outcome.closed_after);
    assert!(outcome.closed_after < DEADLINE + SLACK, "kept for {:?}", outcome.closed_after);

    // The same after a first request on the connection: an idle keep-alive connection may wait
    // for its next request, but once that starts it has the same deadline.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 204"), "{}", String::from_utf8_lossy(&buf[..n]));
    tokio::time::sleep(DEADLINE * 2).await; // idle between requests: allowed
    let started = Instant::now();
    let trickle = async {
        for b in head.bytes() {
            if tcp.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        std::future::pending::<()>().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), trickle).await;
    eprintln!("a trickled second head: closed after {:?}", started.elapsed());
    assert!(started.elapsed() < DEADLINE + SLACK, "kept for {:?}", started.elapsed());
    eventually(Duration::from_secs(5), "both counted", async || cut(&h, "head_timeout").await >= 2.0).await;
    assert!(h.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_succeed_are_answered_from_their_head() {
    let (h, addr) = start().await;
    let live = polling_session(&h).await;
    let cases = [
        ("a polling POST without a session", post("/socket.io/?EIO=4&transport=polling", 60_000, ""), "HTTP/1.1 400"),
        (
            "a polling POST for an unknown session",
            post("/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA", 60_000, ""),
            "HTTP/1.1 400",
        ),
        ("a polling POST over the payload limit", post(&live, 50_000_000, ""), "HTTP/1.1 413"),
        (
            "a publish over the API's body limit",
            post("/api/publish", 50_000_000, &format!("Authorization: Bearer {API_KEY}\r\n")),
            "HTTP/1.1 413",
        ),
    ];
    for (what, head, status) in cases {
        // Nothing of the body is sent: the answer must not wait for it.
        let outcome = send_slowly(addr, &head, false, b"").await;
        eprintln!("{what}: `{}` after {:?}", outcome.answer.lines().next().unwrap_or(""), outcome.closed_after);
        assert!(outcome.answer.starts_with(status), "{what}: {}", outcome.answer);
        assert!(outcome.closed_after < DEADLINE, "{what}: answered only after {:?}", outcome.closed_after);
    }
    eventually(Duration::from_secs(5), "counted", async || cut(&h, "answered_from_head").await == 4.0).await;
    assert!(h.terminate().await.success());
}
