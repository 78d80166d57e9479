//! herald's Redis connections, opened as the URL says: to one server, to the master its
//! Sentinels name at that moment (so a failover is followed), or to one node of a cluster;
//! with TLS when the URL asks, authenticated, the URL's database selected.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::link::{self, Link, LinkError};
use super::resp::{self, Value};
use crate::config::{RedisAddress, RedisTarget};

/// A node's host and port.
pub type Endpoint = (String, u16);

/// What every connection needs: where, who, which database, which TLS, how long to wait.
#[derive(Clone)]
pub struct Access {
    pub address: RedisAddress,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
}

impl Access {
    /// A connection to the server, or to the master the Sentinels name now; on a cluster, to
    /// the first seed node that answers.
    pub async fn connect(&self) -> Result<Link, LinkError> {
        match &self.address.target {
            RedisTarget::Server { host, port } => self.node(host, *port).await,
            RedisTarget::Sentinel { sentinels, master, username, password } => {
                let (host, port) = self.ask_sentinels(sentinels, master, username.as_deref(), password.as_deref()).await?;
                let mut link = self.node(&host, port).await?;
                // A Sentinel may name a master that has just been demoted: only a master will do.
                match request(&mut link, &[b"ROLE"], self.timeout).await? {
                    Value::Array(Some(parts)) if parts.first().and_then(Value::as_str) == Some("master") => Ok(link),
                    other => Err(LinkError::Unreachable(format!("{host}:{port}, named master by the Sentinels, is not one: {other:?}"))),
                }
            }
            RedisTarget::Cluster { seeds } => {
                let mut last = None;
                for (host, port) in seeds {
                    match self.node(host, *port).await {
                        Ok(link) => return Ok(link),
                        Err(e @ (LinkError::Untrusted(_) | LinkError::Refused(_))) => return Err(e),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| LinkError::Unreachable("no cluster node in redis.url".into())))
            }
        }
    }

    /// A connection to one node, authenticated, with the database selected.
    pub async fn node(&self, host: &str, port: u16) -> Result<Link, LinkError> {
        let mut link = self.open(host, port).await?;
        let a = &self.address;
        authenticate(&mut link, a.username.as_deref(), a.password.as_deref(), self.timeout).await?;
        if let Some(db) = a.database {
            let db = db.to_string();
            if let Value::Error(e) = request(&mut link, &[b"SELECT", db.as_bytes()], self.timeout).await? {
                return Err(LinkError::Refused(format!("Redis refused SELECT {db}: {}", String::from_utf8_lossy(&e))));
            }
        }
        Ok(link)
    }

    async fn open(&self, host: &str, port: u16) -> Result<Link, LinkError> {
        let name = link::certificate_name(host, self.address.first_host());
        link::open(host, port, self.tls.as_ref().map(|c| (c, name)), self.timeout).await
    }

    /// The master's address from the first Sentinel that knows it.
    async fn ask_sentinels(
        &self,
        sentinels: &[Endpoint],
        master: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Endpoint, LinkError> {
        let mut problems = Vec::new();
        for (host, port) in sentinels {
            let answer = async {
                let mut s = self.open(host, *port).await?;
                authenticate(&mut s, username, password, self.timeout).await.map_err(|e| match e {
                    LinkError::Refused(why) => {
                        LinkError::Refused(format!("Sentinel {host}:{port}: {why} (the Sentinels' own password is `sentinel_password`)"))
                    }
                    other => other,
                })?;
                request(&mut s, &[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()], self.timeout).await
            };
            match answer.await {
                Ok(Value::Array(Some(parts))) if parts.len() == 2 => {
                    if let (Some(h), Some(p)) = (parts[0].as_str(), parts[1].as_str().and_then(|p| p.parse().ok())) {
                        return Ok((h.to_owned(), p));
                    }
                    problems.push(format!("{host}:{port}: unreadable answer"));
                }
                Ok(Value::Array(None)) => problems.push(format!("{host}:{port}: knows no master `{master}`")),
                Ok(Value::Error(e)) => {
                    return Err(LinkError::Refused(format!("Sentinel {host}:{port} refused herald: {}", String::from_utf8_lossy(&e))));
                }
                Ok(other) => problems.push(format!("{host}:{port}: {other:?}")),
                // Settings that are wrong for one Sentinel are wrong for all: say so at once.
                Err(e @ (LinkError::Untrusted(_) | LinkError::Refused(_))) => return Err(e),
                Err(e) => problems.push(e.to_string()),
            }
        }
        Err(LinkError::Unreachable(format!("no Sentinel named the master: {}", problems.join("; "))))
    }
}

/// AUTH [user] password, when there is a password.
async fn authenticate(link: &mut Link, username: Option<&str>, password: Option<&str>, timeout: Duration) -> Result<(), LinkError> {
    let Some(password) = password else { return Ok(()) };
    let mut args: Vec<&[u8]> = vec![b"AUTH"];
    if let Some(user) = username {
        args.push(user.as_bytes());
    }
    args.push(password.as_bytes());
    match request(link, &args, timeout).await? {
        Value::Error(e) => Err(LinkError::Refused(format!("Redis refused AUTH: {}", String::from_utf8_lossy(&e)))),
        _ => Ok(()),
    }
}

/// One command and its reply, on a connection doing nothing else.
pub async fn request(link: &mut Link, args: &[&[u8]], timeout: Duration) -> Result<Value, LinkError> {
    let mut out = Vec::new();
    resp::command(&mut out, args);
    let exchange = async {
        link.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(256);
        loop {
            if let Some(value) = resp::take(&mut buf).map_err(|e| e.to_string())? {
                return Ok(value);
            }
            if link.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed by Redis".to_owned());
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(LinkError::Unreachable(e)),
        Err(_) => Err(LinkError::Unreachable("no reply in time".into())),
    }
}
