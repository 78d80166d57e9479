//! One byte stream to a Redis node: plain TCP, or TLS (rustls) with the certificate checked
//! against `redis.tls.ca_file` (or the system roots) for the node's name.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why a connection could not be made; `Untrusted` and `Refused` will not clear by retrying
/// until someone changes a setting, so start-up stops on them and `/readyz` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// TCP failed, timed out or closed: Redis may come back.
    Unreachable(String),
    /// The TLS handshake failed: an untrusted or expired certificate, a wrong name.
    Untrusted(String),
    /// Redis refused the credentials, the database or a command herald needs.
    Refused(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Unreachable(m) | LinkError::Untrusted(m) | LinkError::Refused(m) => f.write_str(m),
        }
    }
}

impl From<LinkError> for String {
    fn from(e: LinkError) -> String {
        e.to_string()
    }
}

pub enum Link {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens a connection to `host:port`, with TLS when `tls` is set. The certificate must be valid
/// for `name` (the node's host name, or the URL's when the node is known by its IP only).
pub async fn open(host: &str, port: u16, tls: Option<(&Arc<rustls::ClientConfig>, &str)>, timeout: Duration) -> Result<Link, LinkError> {
    let opening = async {
        let stream =
            TcpStream::connect((host, port)).await.map_err(|e| LinkError::Unreachable(format!("cannot connect to {host}:{port}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let Some((config, name)) = tls else { return Ok(Link::Plain(stream)) };
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| LinkError::Untrusted(format!("`{name}` cannot be checked against a certificate: {e}")))?;
        match TlsConnector::from(config.clone()).connect(server_name, stream).await {
            Ok(s) => Ok(Link::Tls(Box::new(s))),
            Err(e) => Err(classify_tls(host, port, e)),
        }
    };
    tokio::time::timeout(timeout, opening).await.map_err(|_| LinkError::Unreachable(format!("connecting to {host}:{port} timed out")))?
}

/// A handshake that failed on the certificate (or another TLS alert) is `Untrusted`; one whose
/// TCP connection dropped is `Unreachable`.
fn classify_tls(host: &str, port: u16, e: std::io::Error) -> LinkError {
    let tls = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).cloned();
    match tls {
        Some(tls) => LinkError::Untrusted(format!("TLS with {host}:{port} failed: {tls}")),
        None if e.kind() == std::io::ErrorKind::InvalidData => LinkError::Untrusted(format!("TLS with {host}:{port} failed: {e}")),
        None => LinkError::Unreachable(format!("TLS with {host}:{port} failed: {e}")),
    }
}

/// The name a node's certificate is checked against: its own host name, or, for a node known
/// only by an IP address (as Sentinels and cluster nodes usually announce themselves), the
/// host name of the URL, which managed services' certificates cover.
pub fn certificate_name<'a>(node_host: &'a str, url_host: &'a str) -> &'a str {
    let is_ip = |h: &str| h.parse::<std::net::IpAddr>().is_ok();
    if is_ip(node_host) && !is_ip(url_host) { url_host } else { node_host }
}

impl AsyncRead for Link {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Link::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Link::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_flush(cx),
            Link::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Link::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Link::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Link::Plain(s) => s.is_write_vectored(),
            Link::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_only_node_is_checked_against_the_url_host_name() {
        assert_eq!(certificate_name("10.0.0.7", "cache.example.com"), "cache.example.com");
        assert_eq!(certificate_name("node-1.example.com", "cache.example.com"), "node-1.example.com");
        assert_eq!(certificate_name("127.0.0.1", "127.0.0.1"), "127.0.0.1");
    }
}
