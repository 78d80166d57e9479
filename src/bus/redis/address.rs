//! herald's own Redis connections: opened to the server of `redis.url`, or to the master its
//! Sentinels name at that moment (so a failover is followed), authenticated, with the URL's
//! database selected (history streams and the store script's keys live there).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::resp::{self, Frame};
use crate::config::{RedisAddress, RedisTarget};

/// A connection to the server, or to the master the Sentinels name now, authenticated.
pub async fn connect(address: &RedisAddress, timeout: Duration) -> Result<TcpStream, String> {
    let (host, port) = match &address.target {
        RedisTarget::Server { host, port } => (host.clone(), *port),
        RedisTarget::Sentinel { sentinels, master } => ask_sentinels(sentinels, master, timeout).await?,
    };
    let mut stream = open(&host, port, timeout).await?;
    if let Some(password) = &address.password {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = &address.username {
            args.push(user.as_bytes());
        }
        args.push(password.as_bytes());
        if let Frame::Error(e) = request(&mut stream, &args, timeout).await? {
            return Err(format!("Redis refused AUTH: {}", String::from_utf8_lossy(&e)));
        }
    }
    if let Some(db) = address.database {
        let db = db.to_string();
        if let Frame::Error(e) = request(&mut stream, &[b"SELECT", db.as_bytes()], timeout).await? {
            return Err(format!("Redis refused SELECT {db}: {}", String::from_utf8_lossy(&e)));
        }
    }
    if matches!(address.target, RedisTarget::Sentinel { .. }) {
        // A Sentinel may name a master that has just been demoted: only a master will do.
        match request(&mut stream, &[b"ROLE"], timeout).await? {
            Frame::Array(Some(parts)) if parts.first().and_then(Frame::as_str) == Some("master") => {}
            other => return Err(format!("{host}:{port}, named master by the Sentinels, is not one: {other:?}")),
        }
    }
    Ok(stream)
}

async fn open(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("connecting to {host}:{port} timed out"))?
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The master's address from the first Sentinel that knows it.
async fn ask_sentinels(sentinels: &[(String, u16)], master: &str, timeout: Duration) -> Result<(String, u16), String> {
    let mut problems = Vec::new();
    for (host, port) in sentinels {
        let answer = async {
            let mut s = open(host, *port, timeout).await?;
            request(&mut s, &[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()], timeout).await
        };
        match answer.await {
            Ok(Frame::Array(Some(parts))) if parts.len() == 2 => {
                if let (Some(h), Some(p)) = (parts[0].as_str(), parts[1].as_str().and_then(|p| p.parse().ok())) {
                    return Ok((h.to_owned(), p));
                }
                problems.push(format!("{host}:{port}: unreadable answer"));
            }
            Ok(Frame::Array(None)) => problems.push(format!("{host}:{port}: knows no master `{master}`")),
            Ok(other) => problems.push(format!("{host}:{port}: {other:?}")),
            Err(e) => problems.push(e),
        }
    }
    Err(format!("no Sentinel named the master: {}", problems.join("; ")))
}

/// One command and its reply, on a connection doing nothing else.
async fn request(stream: &mut TcpStream, args: &[&[u8]], timeout: Duration) -> Result<Frame, String> {
    let mut out = Vec::new();
    resp::command(&mut out, args);
    let exchange = async {
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(256);
        loop {
            if let Some(frame) = resp::take(&mut buf).map_err(|e| e.to_string())? {
                return Ok(frame);
            }
            if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed".to_owned());
            }
        }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| "no reply in time".to_owned())?
}
