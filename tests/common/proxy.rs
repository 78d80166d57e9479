//! Load balancers without affinity. As a Kubernetes Service without `sessionAffinity` is
//! (`PerConnection`): each TCP connection goes to the next instance in turn, whatever requests it
//! carries. As an HTTP balancer is (`PerRequest`, Ingress controllers and cloud balancers without
//! a cookie): each request goes to the next instance, even on a kept-alive connection; a
//! WebSocket upgrade stays where its request went. `UpgradesElsewhere` is that, with each
//! WebSocket upgrade sent to an instance other than the one that opened its session (learned
//! from the handshakes it passed), so every session has to move.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    PerConnection,
    PerRequest,
    UpgradesElsewhere,
}

pub struct RoundRobin {
    pub addr: SocketAddr,
    /// Connections (or requests, per request) handed to each instance, in the order given.
    pub per_instance: Arc<Vec<AtomicUsize>>,
    accept: JoinHandle<()>,
}

struct Picker {
    instances: Vec<SocketAddr>,
    next: AtomicUsize,
    counts: Arc<Vec<AtomicUsize>>,
    /// The instance that opened each session, by session id (`UpgradesElsewhere`).
    owners: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Picker {
    /// The next instance in turn, skipping `not` (when there is another).
    fn next(&self, not: Option<usize>) -> usize {
        let mut i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len();
        if not == Some(i) && self.instances.len() > 1 {
            i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len();
        }
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        i
    }
}

impl RoundRobin {
    pub async fn start(instances: Vec<SocketAddr>) -> Self {
        Self::start_with(instances, Balance::PerConnection).await
    }

    pub async fn start_with(instances: Vec<SocketAddr>, balance: Balance) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let per_instance: Arc<Vec<AtomicUsize>> = Arc::new(instances.iter().map(|_| AtomicUsize::new(0)).collect());
        let picker = Arc::new(Picker { instances, next: AtomicUsize::new(0), counts: per_instance.clone(), owners: Default::default() });
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let picker = picker.clone();
                tokio::spawn(async move {
                    match balance {
                        Balance::PerConnection => {
                            if let Ok(mut upstream) = TcpStream::connect(picker.instances[picker.next(None)]).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            }
                        }
                        Balance::PerRequest => per_request(client, &picker, false).await,
                        Balance::UpgradesElsewhere => per_request(client, &picker, true).await,
                    }
                });
            }
        });
        RoundRobin { addr, per_instance, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections (or requests) each instance was given.
    pub fn counts(&self) -> Vec<usize> {
        self.per_instance.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

/// Requests of one client connection (HTTP/1.1, bodies with a `Content-Length`, as the clients
/// and herald send them), each on a new connection to the next instance.
async fn per_request(mut client: TcpStream, picker: &Picker, upgrades_elsewhere: bool) {
    let mut from_client = Vec::new();
    while let Some(request_len) = read_message(&mut client, &mut from_client).await {
        let target = std::str::from_utf8(&from_client[..request_len]).ok().and_then(|r| r.split(' ').nth(1)).unwrap_or("").to_owned();
        let sid = target.split(['?', '&']).find_map(|p| p.strip_prefix("sid=")).map(str::to_owned);
        let owner = sid.as_ref().and_then(|sid| picker.owners.lock().unwrap().get(sid).copied());
        let upgrade = target.contains("transport=websocket");
        let i = picker.next(owner.filter(|_| upgrades_elsewhere && upgrade));
        let Ok(mut upstream) = TcpStream::connect(picker.instances[i]).await else { return };
        if upstream.write_all(&from_client[..request_len]).await.is_err() {
            return;
        }
        from_client.drain(..request_len);
        let mut from_upstream = Vec::new();
        let Some(response_len) = read_message(&mut upstream, &mut from_upstream).await else { return };
        if client.write_all(&from_upstream[..response_len]).await.is_err() {
            return;
        }
        if sid.is_none() {
            // A handshake: its open packet names the session this instance holds.
            let body = from_upstream[..response_len].windows(4).position(|w| w == b"\r\n\r\n").map(|h| &from_upstream[h + 4..response_len]);
            let open = body.and_then(|b| b.strip_prefix(b"0")).and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
            if let Some(sid) = open.as_ref().and_then(|o| o["sid"].as_str()) {
                picker.owners.lock().unwrap().insert(sid.to_owned(), i);
            }
        }
        if from_upstream.starts_with(b"HTTP/1.1 101") {
            // A WebSocket from here on, to the instance its upgrade reached.
            if upstream.write_all(&from_client).await.is_ok() && client.write_all(&from_upstream[response_len..]).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            return;
        }
        if header(&from_upstream[..response_len], "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            return;
        }
    }
}

/// Reads into `buf` until it holds one whole HTTP message (a head, and its body as long as its
/// `Content-Length` says, none for a 101); its length, or `None` if the peer closed first.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = &buf[..end];
            let body = if head.starts_with(b"HTTP/1.1 101") {
                0
            } else {
                header(head, "content-length").and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0)
            };
            if buf.len() >= end + body {
                return Some(end + body);
            }
        }
        let mut chunk = [0u8; 16 << 10];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A header's value in a message head.
fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(head).ok()?.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
