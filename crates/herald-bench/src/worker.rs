//! A client process: holds Socket.IO connections for a range of users and records when each
//! notification arrives. Spawned by `run`; it speaks a line protocol on stdin/stdout.
//!
//! Only the part of Engine.IO v4 / Socket.IO v5 that herald's clients use, over WebSocket (or
//! long-polling, in `polling.rs`): the open packet `0{...}`, CONNECT `40{"token":...}`, its
//! answer `40{...}` or `44{...}`, ping `2` / pong `3`, and events `42["notification",{...}]`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::deflate_ws::DeflateWs;
use crate::seen::{Seen, field};
use crate::stats::{cpu_micros, now_us, raise_fd_limit};

#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub server: SocketAddr,
    #[arg(long)]
    pub bind: IpAddr,
    #[arg(long)]
    pub first_user: usize,
    #[arg(long)]
    pub users: usize,
    #[arg(long)]
    pub secret: String,
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 20)]
    pub connect_timeout_secs: u64,
    /// Long-polling instead of WebSocket.
    #[arg(long)]
    pub polling: bool,
    /// Open each session over long-polling here, then upgrade it on --server.
    #[arg(long)]
    pub open_on: Option<SocketAddr>,
    /// WebSockets offer permessage-deflate.
    #[arg(long)]
    pub deflate: bool,
    /// The last this many of its users connect and then never read.
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Users whose tokens name the group `bench-team`: this many of --all-users, spread evenly
    /// over them (user i is one when (i + 1) * M / U > i * M / U).
    #[arg(long, default_value_t = 0)]
    pub group_members: usize,
    #[arg(long, default_value_t = 0)]
    pub all_users: usize,
    /// Hand back, per notification, how many sockets got it, how many twice, and the first and
    /// last arrival ("f seq count duplicates first last"), instead of every arrival.
    #[arg(long)]
    pub summary: bool,
}

/// The group a fan-out run addresses.
pub const GROUP: &str = "bench-team";

/// Whether user `i` of `all` is one of the `members` spread evenly over them.
pub fn is_member(i: usize, members: usize, all: usize) -> bool {
    all > 0 && (i + 1) * members / all > i * members / all
}

/// A connected client, over either transport.
enum Client {
    WebSocket(Ws),
    Polling(crate::polling::Session),
    Deflate(DeflateWs),
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let connect_timeout = Duration::from_secs(args.connect_timeout_secs);
    raise_fd_limit();
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let failures = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", args.server);
    let mut tasks = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let user = format!("b{}", args.first_user + i);
        let member = is_member(args.first_user + i, args.group_members, args.all_users);
        let token = token(&args.secret, &user, member)?;
        let (url, gate, received, stop) = (url.clone(), gate.clone(), received.clone(), stop.clone());
        let (failures, connected) = (failures.clone(), connected.clone());
        let (server, bind, timeout, polling, open_on) = (args.server, args.bind, connect_timeout, args.polling, args.open_on);
        let deflate = args.deflate;
        let stalls = i >= args.users.saturating_sub(args.stalled);
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok();
            let opened = async {
                if polling {
                    crate::polling::open(server, bind, &token).await.map(Client::Polling)
                } else if deflate {
                    open_deflate(server, bind, &token).await.map(Client::Deflate)
                } else if let Some(open_on) = open_on {
                    upgraded(server, open_on, bind, &token).await.map(Client::WebSocket)
                } else {
                    open(server, bind, &url, &token).await.map(Client::WebSocket)
                }
            };
            let client = match tokio::time::timeout(timeout, opened).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("herald-bench worker: {user}: {e:#}");
                    }
                    return Vec::new();
                }
                Err(_) => {
                    if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("herald-bench worker: {user}: connect timed out");
                    }
                    return Vec::new();
                }
            };
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            match client {
                // Holds the connection and reads nothing: herald's queue for it fills up.
                Client::WebSocket(ws) if stalls => {
                    stop.cancelled().await;
                    drop(ws);
                    Vec::new()
                }
                Client::WebSocket(ws) => listen(ws, received, stop).await,
                Client::Polling(session) => crate::polling::listen(session, received, stop).await,
                Client::Deflate(ws) => listen_deflate(ws, received, stop).await,
            }
        }));
    }
    // Ready once every connection attempt is over (bounded by the connect timeout each).
    let deadline = Instant::now() + connect_timeout * 4 + Duration::from_secs(60);
    while (connected.load(Ordering::Relaxed) + failures.load(Ordering::Relaxed)) < args.users as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say(&format!("ready {} {} {}", connected.load(Ordering::Relaxed), failures.load(Ordering::Relaxed), started.elapsed().as_millis()));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            _ => break, // The coordinator is gone: stop.
        };
        match line.trim() {
            "count" => say(&format!("count {}", received.load(Ordering::Relaxed))),
            "cpu" => say(&format!("cpu {}", cpu_micros())),
            "stop" => break,
            other => eprintln!("herald-bench worker: unknown command {other:?}"),
        }
    }
    stop.cancel();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut summary = Summary::default();
    for task in tasks {
        if let Ok(arrivals) = task.await {
            if args.summary {
                summary.add(arrivals);
                continue;
            }
            for (seq, at) in arrivals {
                writeln!(out, "d {seq} {at}")?;
            }
        }
    }
    for (seq, s) in summary.0 {
        writeln!(out, "f {seq} {} {} {} {}", s.count, s.duplicates, s.first, s.last)?;
    }
    writeln!(out, "end {}", cpu_micros())?;
    out.flush()?;
    Ok(())
}

/// One notification's arrivals over many sockets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Sockets that got it.
    pub count: u64,
    /// Further copies a socket got.
    pub duplicates: u64,
    pub first: u64,
    pub last: u64,
}

impl Spread {
    /// Nothing arrived yet.
    pub const NONE: Spread = Spread { count: 0, duplicates: 0, first: u64::MAX, last: 0 };

    /// Adds another's arrivals to this one.
    pub fn merge(&mut self, other: Spread) {
        self.count += other.count;
        self.duplicates += other.duplicates;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

/// Per notification, its [`Spread`] over the sockets added so far.
#[derive(Default)]
struct Summary(std::collections::BTreeMap<u64, Spread>);

impl Summary {
    /// Adds one socket's arrivals.
    fn add(&mut self, mut arrivals: Vec<Seen>) {
        arrivals.sort_unstable();
        let mut previous = None;
        for (seq, at) in arrivals {
            let once = if previous == Some(seq) {
                Spread { duplicates: 1, ..Spread::NONE }
            } else {
                Spread { count: 1, duplicates: 0, first: at, last: at }
            };
            previous = Some(seq);
            self.0.entry(seq).or_insert(Spread::NONE).merge(once);
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// An HS256 token for `user`, valid for a day (herald's default algorithm and claim), naming
/// [`GROUP`] in a `groups` claim when `member`.
fn token(secret: &str, user: &str, member: bool) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = serde_json::json!({"sub": user, "iat": now, "exp": now + 86_400});
    if member {
        claims["groups"] = serde_json::json!([GROUP]);
    }
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))?)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects from `bind`, upgrades to WebSocket, and completes the Socket.IO CONNECT.
async fn open(server: SocketAddr, bind: IpAddr, url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut ws = websocket(server, bind, url).await?;
    let mut sent_connect = false;
    for _ in 0..16 {
        let Some(message) = ws.next().await else { anyhow::bail!("closed during the handshake") };
        let Message::Text(text) = message? else { continue };
        if text.starts_with('0') && !sent_connect {
            ws.send(Message::text(format!("40{{\"token\":\"{token}\"}}"))).await?;
            sent_connect = true;
        } else if text.starts_with("40") {
            return Ok(ws);
        } else if text.starts_with("44") {
            anyhow::bail!("connect_error: {text}");
        } else if text.as_str() == "2" {
            ws.send(Message::text("3")).await?;
        }
    }
    anyhow::bail!("no CONNECT answer")
}

/// Opens a session over long-polling on `open_on`, then upgrades it on a WebSocket to `server`.
async fn upgraded(server: SocketAddr, open_on: SocketAddr, bind: IpAddr, token: &str) -> anyhow::Result<Ws> {
    let session = crate::polling::open(open_on, bind, token).await?;
    let url = format!("ws://{server}/socket.io/?EIO=4&transport=websocket&sid={}", session.sid());
    let mut ws = websocket(server, bind, &url).await?;
    ws.send(Message::text("2probe")).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "3probe" => break,
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
            Some(Ok(_)) => {}
            _ => anyhow::bail!("the probe was refused"),
        }
    }
    ws.send(Message::text("5")).await?;
    Ok(ws)
}

/// A WebSocket to `url` on `server`, from `bind`, with small buffers (the client side holds
/// tens of thousands of these).
async fn websocket(server: SocketAddr, bind: IpAddr, url: &str) -> anyhow::Result<Ws> {
    let socket = crate::stats::client_socket(bind)?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    Ok(tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?.0)
}

/// Connects over WebSocket offering permessage-deflate, and completes the Socket.IO CONNECT.
async fn open_deflate(server: SocketAddr, bind: IpAddr, token: &str) -> anyhow::Result<DeflateWs> {
    let mut ws = DeflateWs::connect(server, bind, "/socket.io/?EIO=4&transport=websocket").await?;
    let mut sent_connect = false;
    for _ in 0..16 {
        let Some(text) = ws.next_text().await? else { anyhow::bail!("closed during the handshake") };
        match text.as_bytes().first() {
            Some(b'0') if !sent_connect => {
                ws.send(&format!("40{{\"token\":\"{token}\"}}")).await?;
                sent_connect = true;
            }
            _ if text.starts_with("40") => return Ok(ws),
            _ if text.starts_with("44") => anyhow::bail!("connect_error: {text}"),
            _ if text == "2" => ws.send("3").await?,
            _ => {}
        }
    }
    anyhow::bail!("no CONNECT answer")
}

/// [`listen`] on a connection that negotiated permessage-deflate.
async fn listen_deflate(mut ws: DeflateWs, received: Arc<AtomicU64>, stop: CancellationToken) -> Vec<Seen> {
    let mut arrivals = Vec::new();
    loop {
        let text = tokio::select! {
            _ = stop.cancelled() => break,
            t = ws.next_text() => match t {
                Ok(Some(t)) => t,
                _ => break,
            },
        };
        if text == "2" {
            if ws.send("3").await.is_err() {
                break;
            }
        } else if let Some(seq) = notification_seq(&text) {
            arrivals.push((seq, now_us()));
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
    arrivals
}

/// The sequence number of a notification packet.
fn notification_seq(text: &str) -> Option<u64> {
    text.starts_with("42").then(|| field(text, "\"seq\":")).flatten()
}

/// Answers pings and records notifications until `stop`.
async fn listen(mut ws: Ws, received: Arc<AtomicU64>, stop: CancellationToken) -> Vec<Seen> {
    let mut arrivals = Vec::new();
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        let text = match message {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => break,
        };
        if text.as_str() == "2" {
            if ws.send(Message::text("3")).await.is_err() {
                break;
            }
        } else if let Some(seq) = notification_seq(&text) {
            arrivals.push((seq, now_us()));
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = ws.close(None).await;
    arrivals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_spread_evenly() {
        let members: Vec<usize> = (0..95_000).filter(|&i| is_member(i, 10_000, 95_000)).collect();
        assert_eq!(members.len(), 10_000);
        // Each of five instances' contiguous 19,000 users holds 2,000 of them.
        for part in 0..5 {
            assert_eq!(members.iter().filter(|&&i| i / 19_000 == part).count(), 2_000);
        }
        assert!(!is_member(3, 0, 10) && !is_member(3, 5, 0));
    }

    #[test]
    fn a_summary_counts_sockets_duplicates_and_the_spread() {
        let mut summary = Summary::default();
        summary.add(vec![(1, 10), (2, 30), (1, 12)]);
        summary.add(vec![(1, 5)]);
        assert_eq!(summary.0[&1], Spread { count: 2, duplicates: 1, first: 5, last: 10 });
        assert_eq!(summary.0[&2], Spread { count: 1, duplicates: 0, first: 30, last: 30 });
    }
}
