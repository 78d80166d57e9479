//! A long-polling client, as browsers run one: a GET always waiting on one keep-alive
//! connection, POSTs (the CONNECT, pongs) on another. Only what herald's clients use:
//! the open packet, CONNECT and its answer, ping/pong, and events.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::seen::{Seen, field};
use crate::stats::now_us;

pub struct Session {
    server: SocketAddr,
    get: Conn,
    post: Conn,
    path: String,
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(server: SocketAddr, bind: IpAddr) -> anyhow::Result<Self> {
        let socket = crate::stats::client_socket(bind)?;
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::new() })
    }

    /// Sends a request and reads its response body (Content-Length framing).
    async fn request(&mut self, server: SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {server}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(format!("{head}{body}").as_bytes()).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?.to_ascii_lowercase();
                anyhow::ensure!(head.starts_with("http/1.1 200"), "{method} answered {}", head.lines().next().unwrap_or(""));
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("no content-length"))?;
                if self.buf.len() >= end + 4 + len {
                    let body = String::from_utf8(self.buf[end + 4..end + 4 + len].to_vec())?;
                    self.buf.drain(..end + 4 + len);
                    return Ok(body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Opens an Engine.IO session over long-polling and completes the Socket.IO CONNECT.
pub async fn open(server: SocketAddr, bind: IpAddr, token: &str) -> anyhow::Result<Session> {
    let mut get = Conn::open(server, bind).await?;
    let open = get.request(server, "GET", "/socket.io/?EIO=4&transport=polling", "").await?;
    let sid = open.split("\"sid\":\"").nth(1).and_then(|s| s.split('"').next()).ok_or_else(|| anyhow::anyhow!("no sid: {open}"))?;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut post = Conn::open(server, bind).await?;
    post.request(server, "POST", &path, &format!("40{{\"token\":\"{token}\"}}")).await?;
    let mut session = Session { server, get, post, path };
    for _ in 0..16 {
        for packet in session.poll().await? {
            if packet.starts_with("40") {
                return Ok(session);
            } else if packet.starts_with("44") {
                anyhow::bail!("connect_error: {packet}");
            }
        }
    }
    anyhow::bail!("no CONNECT answer")
}

impl Session {
    /// The session id.
    pub fn sid(&self) -> &str {
        self.path.rsplit("sid=").next().unwrap_or_default()
    }

    /// One GET: the packets it brought (pings answered on the POST connection).
    async fn poll(&mut self) -> anyhow::Result<Vec<String>> {
        let payload = self.get.request(self.server, "GET", &self.path, "").await?;
        let packets: Vec<String> = payload.split('\u{1e}').map(str::to_owned).collect();
        for p in &packets {
            if p == "2" {
                self.post.request(self.server, "POST", &self.path, "3").await?;
            }
        }
        Ok(packets)
    }
}

/// Polls and records notifications until `stop`.
pub async fn listen(mut session: Session, received: Arc<AtomicU64>, stop: CancellationToken) -> Vec<Seen> {
    let mut arrivals = Vec::new();
    loop {
        let packets = tokio::select! {
            _ = stop.cancelled() => break,
            p = session.poll() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        for p in packets {
            if p.starts_with("42")
                && let Some(seq) = field(&p, "\"seq\":")
            {
                arrivals.push((seq, now_us()));
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    arrivals
}
