//! The HTTP/1.1 front for Engine.IO: reads request heads (httparse) and bodies through the
//! thread's shared buffer, answers the requests of a mounted engine path itself, and hands a
//! connection whose request is for any other path to the application's HTTP server (hyper),
//! with the bytes already read.
//!
//! Why not hyper for these too: hyper keeps an 8 KiB read buffer and a write buffer per
//! connection for its whole life, more than a long-polling client or a WebSocket may cost here
//! (the crate's README has the figures). Requests on a connection hyper already serves still
//! reach the engine, through [`Mount::handle`].

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::options::Handshake;
use super::sid::Sid;
use super::stats::{Cutoff, ProtocolError, Stats};

/// Longest request head read; a longer one is answered 431.
const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request head.
const MAX_HEADERS: usize = 64;
/// After answering a request whose body it did not read, the connection reads and discards
/// what is still coming for at most this long, and this much, before it closes.
const LINGER_FOR: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Options,
    Other,
}

/// A request head, with the few headers Engine.IO (and the handshake) reads copied out.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: Box<str>,
    pub query: Box<str>,
    /// Lower-case names and their values, for the headers [`wanted`] keeps.
    pub headers: Vec<(Box<str>, Box<str>)>,
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| &**n == name).map(|(_, v)| &**v)
    }

    /// The body's length: digits only, and every copy of the header the same (RFC 9112 6.3),
    /// so that no proxy in front can read the request another way.
    fn content_length(&self) -> Result<usize, ()> {
        let mut length = None;
        for (_, v) in self.headers.iter().filter(|(n, _)| &**n == "content-length") {
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            let n: usize = v.parse().map_err(|_| ())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
        Ok(length.unwrap_or(0))
    }
}

/// Whether a header is one the engine, its handshake or the front itself reads.
pub fn wanted(name: &str, handshake: &[&str]) -> bool {
    const READ: [&str; 10] = [
        "origin",
        "accept-encoding",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "access-control-request-headers",
    ];
    READ.contains(&name) || handshake.contains(&name)
}

/// What the HTTP front learnt from an upgrade request.
pub struct Upgrade {
    /// The long-polling session to upgrade; `None` opens a new session over WebSocket.
    pub(super) sid: Option<Sid>,
    pub(super) handshake: Handshake,
    /// `sid` is another instance's session, moving here with this upgrade (see `moving`).
    pub(super) arriving: bool,
    /// The connection negotiated permessage-deflate (see `deflate`).
    pub(super) deflate: bool,
}

impl Upgrade {
    /// The `Sec-WebSocket-Extensions` header the 101 answer carries, if any.
    pub fn extensions(&self) -> Option<&'static str> {
        self.deflate.then_some(super::deflate::ACCEPTED)
    }
}

/// An answer from the engine.
pub enum Reply {
    Response(Response),
    /// Switch to WebSocket: the 101 carries `accept`, then the engine takes the connection.
    Upgrade {
        accept: String,
        upgrade: Upgrade,
    },
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self { status, headers: vec![("Content-Type", content_type.to_owned())], body: body.into() }
    }
}

/// An engine as the front sees it.
pub trait Mount: Send + Sync + 'static {
    /// The path prefix it serves, e.g. `/socket.io/`.
    fn path(&self) -> &str;
    fn headers_wanted(&self) -> &[&'static str];
    fn max_payload(&self) -> usize;
    fn request_timeout(&self) -> Duration;
    /// How long an idle keep-alive connection is kept.
    fn idle_timeout(&self) -> Duration;
    fn write_timeout(&self) -> Duration;
    fn stats(&self) -> &Stats;
    /// The answer to a request that no body could make succeed (a polling POST without a
    /// session, or for one that is unknown or closed): sent without reading the body.
    fn answer_before_body(&self, request: &Request) -> Option<Response>;
    fn handle(&self, request: Request, body: Bytes) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>>;
    /// Takes a connection switched to WebSocket (its 101 written); `leftover` is what the
    /// client sent after its request.
    fn accept_websocket(&self, upgrade: Upgrade, stream: TcpStream, leftover: Bytes);
}

/// A connection handed on to another HTTP server: reads replay the bytes the front had read.
pub struct Handoff {
    stream: TcpStream,
    prefix: Bytes,
}

impl Handoff {
    pub fn new(stream: TcpStream, prefix: Bytes) -> Self {
        Self { stream, prefix }
    }

    /// The stream and the bytes read from it but not yet consumed.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.stream, self.prefix)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Handoff {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Handoff {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How a connection left the front.
pub enum Served {
    /// Closed, or taken over by an engine (WebSocket).
    Done,
    /// Its next request is for another path.
    Handoff(Handoff),
}

/// What reading a request head gave.
enum Head {
    Request(Request, usize),
    /// The client closed, or sent nothing in time, between requests.
    Gone,
    Refused(u16),
}

/// Serves the requests on `stream` for the `mounts`' paths, until the client closes, the
/// connection becomes a WebSocket, or a request for another path arrives.
pub async fn serve(stream: TcpStream, mounts: &[Arc<dyn Mount>]) -> Served {
    let Some(first) = mounts.first() else { return Served::Handoff(Handoff::new(stream, Bytes::new())) };
    let (request_timeout, idle_timeout) = (first.request_timeout(), first.idle_timeout());
    let mut buf: Vec<u8> = Vec::new();
    let mut first_request = true;
    loop {
        // A keep-alive connection may idle between requests; from a head's first byte (on a new
        // connection, from the start) the whole head must arrive within `request_timeout`.
        if !first_request && buf.is_empty() {
            match tokio::time::timeout(idle_timeout, read_some(&stream, &mut buf, MAX_HEAD)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Served::Done,
            }
        }
        first_request = false;
        let head = match tokio::time::timeout(request_timeout, read_head(&stream, &mut buf, mounts)).await {
            Ok(head) => head,
            // A half-sent head gets the same end as silence: the connection is closed.
            Err(_) => {
                first.stats().cut(Cutoff::HeadTimeout);
                Head::Gone
            }
        };
        let (request, head_len) = match head {
            Head::Request(r, len) => (r, len),
            Head::Gone => return Served::Done,
            Head::Refused(status) => {
                first.stats().protocol_error(ProtocolError::BadHttp);
                let _ =
                    Box::pin(write_response(&stream, &Response::new(status, "text/plain", "bad request\n"), false, first.write_timeout()))
                        .await;
                return Served::Done;
            }
        };
        let Some(mount) = mounts.iter().find(|m| request.path.starts_with(m.path())) else {
            return Served::Handoff(Handoff::new(stream, Bytes::from(buf)));
        };
        buf.drain(..head_len);
        // Boxed: an idle connection's task holds only the wait for the next head.
        match Box::pin(exchange(&stream, &mut buf, &**mount, request)).await {
            Next::Request => {}
            Next::Close => return Served::Done,
            Next::WebSocket(upgrade) => {
                mount.accept_websocket(upgrade, stream, Bytes::from(buf));
                return Served::Done;
            }
        }
        if buf.is_empty() {
            // An idle connection keeps no buffer.
            buf = Vec::new();
        }
    }
}

/// What a connection does after a request.
enum Next {
    /// Wait for the next one.
    Request,
    Close,
    /// It is a WebSocket now (its 101 written).
    WebSocket(Upgrade),
}

/// Reads a request's body, has `mount` answer it, and writes the answer.
async fn exchange(stream: &TcpStream, buf: &mut Vec<u8>, mount: &dyn Mount, request: Request) -> Next {
    let write_timeout = mount.write_timeout();
    if let Ok(len) = request.content_length()
        && len > buf.len()
        && let Some(answer) = mount.answer_before_body(&request)
    {
        // The body still on its way is never kept: the connection closes after the answer.
        mount.stats().cut(Cutoff::AnsweredFromHead);
        if write_response(stream, &answer, false, write_timeout).await.is_ok() {
            linger(stream).await;
        }
        return Next::Close;
    }
    let body = match read_body(stream, buf, &request, mount.max_payload(), mount.request_timeout()).await {
        Ok(body) => body,
        Err(status) => {
            match status {
                413 => mount.stats().cut(Cutoff::AnsweredFromHead),
                408 => mount.stats().cut(Cutoff::BodyTimeout),
                _ => {}
            }
            mount.stats().protocol_error(if status == 413 { ProtocolError::TooLarge } else { ProtocolError::BadHttp });
            if status != 0
                && write_response(stream, &Response::new(status, "text/plain", "bad request\n"), false, write_timeout).await.is_ok()
                && status == 413
            {
                linger(stream).await;
            }
            return Next::Close;
        }
    };
    let keep_alive = request.keep_alive;
    match mount.handle(request, body).await {
        Reply::Response(response) => {
            if write_response(stream, &response, keep_alive, write_timeout).await.is_err() || !keep_alive {
                return Next::Close;
            }
            Next::Request
        }
        Reply::Upgrade { accept, upgrade } => {
            let extensions = upgrade.extensions().map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n")).unwrap_or_default();
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
            );
            match write_all(stream, &[IoSlice::new(head.as_bytes())], write_timeout).await {
                Ok(()) => Next::WebSocket(upgrade),
                Err(_) => Next::Close,
            }
        }
    }
}

/// A lingering close (RFC 9112, 9.6): a client still sending a body this side will not read
/// would have its connection reset by the close, and could lose the answer before reading it.
/// So this side half-closes (the client sees the answer end at once), then reads and discards
/// what still comes until the client closes too, for a bounded time and amount.
async fn linger(stream: &TcpStream) {
    if socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + LINGER_FOR;
    let mut left = LINGER_BYTES;
    while left > 0 {
        let mut sink = Vec::new();
        match tokio::time::timeout_at(deadline, read_some(stream, &mut sink, left.min(64 << 10))).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => return,
        }
    }
}

/// Reads until `buf` holds a whole request head.
async fn read_head(stream: &TcpStream, buf: &mut Vec<u8>, mounts: &[Arc<dyn Mount>]) -> Head {
    loop {
        if !buf.is_empty() {
            match parse_head(buf, &|name| mounts.iter().any(|m| m.headers_wanted().contains(&name))) {
                Ok(Some((request, len))) => return Head::Request(request, len),
                Ok(None) if buf.len() >= MAX_HEAD => return Head::Refused(431),
                Ok(None) => {}
                Err(status) => return Head::Refused(status),
            }
        }
        match read_some(stream, buf, MAX_HEAD).await {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(_) => {}
        }
    }
}

/// Reads what the socket has (at most `limit - buf.len()` more bytes, through the thread's
/// shared buffer) onto `buf`.
async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    loop {
        // Polled by hand: smaller than the `readable()` future, for a connection that idles here.
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        let read = super::scratch::with_scratch(|scratch| {
            let room = limit.saturating_sub(buf.len()).clamp(1, scratch.len());
            match stream.try_read(&mut scratch[..room]) {
                Ok(n) => {
                    buf.extend_from_slice(&scratch[..n]);
                    Ok(Some(n))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        if let Some(n) = read {
            return Ok(n);
        }
    }
}

/// Parses a request head; `keep` says which headers, beyond those Engine.IO reads, to keep.
/// `Ok(None)`: not complete yet; `Err(status)`: refused with that status.
pub fn parse_head(buf: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<Option<(Request, usize)>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        Err(_) => return Err(400),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut kept = Vec::new();
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if !wanted(&name, &[]) && !keep(&name) {
            continue;
        }
        let Ok(value) = std::str::from_utf8(h.value) else { return Err(400) };
        if name == "connection" {
            for token in value.split(',').map(str::trim) {
                connection_close |= token.eq_ignore_ascii_case("close");
                connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
        kept.push((name.into_boxed_str(), value.into()));
    }
    let keep_alive = if req.version == Some(0) { connection_keep_alive } else { !connection_close };
    Ok(Some((Request { method, path: path.into(), query: query.into(), headers: kept, keep_alive }, len)))
}

/// Reads the body `request` announces, all of it within `deadline`: its bytes, or the status to
/// refuse it with (0: the client went away; 408: too slow, however steadily it trickled).
async fn read_body(stream: &TcpStream, buf: &mut Vec<u8>, request: &Request, max: usize, deadline: Duration) -> Result<Bytes, u16> {
    if request.header("transfer-encoding").is_some() {
        // Engine.IO clients send a length; refusing chunked bodies keeps the front small.
        return Err(411);
    }
    let len = request.content_length().map_err(|_| 400u16)?;
    if len > max {
        return Err(413);
    }
    let whole = async {
        while buf.len() < len {
            match read_some(stream, buf, len).await {
                Ok(n) if n > 0 => {}
                _ => return Err(0u16),
            }
        }
        Ok(())
    };
    tokio::time::timeout(deadline, whole).await.map_err(|_| 408u16)??;
    let rest = buf.split_off(len);
    let body = std::mem::replace(buf, rest);
    Ok(Bytes::from(body))
}

/// Writes a response (head and body in one system call when they fit).
async fn write_response(stream: &TcpStream, response: &Response, keep_alive: bool, timeout: Duration) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    for (name, value) in &response.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("Content-Length: ");
    head.push_str(itoa::Buffer::new().format(response.body.len()));
    head.push_str(if keep_alive { "\r\n\r\n" } else { "\r\nConnection: close\r\n\r\n" });
    write_all(stream, &[IoSlice::new(head.as_bytes()), IoSlice::new(&response.body)], timeout).await
}

/// Writes every byte of `parts`, failing if the client takes nothing for `timeout`.
async fn write_all(stream: &TcpStream, parts: &[IoSlice<'_>], timeout: Duration) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        let mut skip = done;
        let mut slices = Vec::with_capacity(parts.len());
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
        match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(timeout, stream.writable()).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_engine_io_needs() {
        let raw = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: http://a\r\nAuthorization: Bearer t\r\nX-Other: y\r\n\r\nextra";
        let (r, len) = parse_head(raw, &|n| n == "authorization").unwrap().unwrap();
        assert_eq!(len, raw.len() - 5);
        assert_eq!((r.method, &*r.path, &*r.query, r.keep_alive), (Method::Get, "/socket.io/", "EIO=4&transport=polling", true));
        assert_eq!(r.header("origin"), Some("http://a"));
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert_eq!(r.header("x-other"), None, "not kept");
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:", &|_| false).unwrap().map(|r| r.1), None, "partial");
        let (r, _) = parse_head(b"POST /x HTTP/1.0\r\n\r\n", &|_| false).unwrap().unwrap();
        assert!(!r.keep_alive, "HTTP/1.0 closes by default");
        let (r, _) = parse_head(b"GET /x HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\n", &|_| false).unwrap().unwrap();
        assert!(!r.keep_alive);
        assert_eq!(parse_head(b"GARBAGE\r\n\r\n", &|_| false).unwrap_err(), 400);
        assert_eq!(parse_head(b"GET / HTTP/9.9\r\n\r\n", &|_| false).unwrap_err(), 400);
        let length = |head: &[u8]| parse_head(head, &|_| false).unwrap().unwrap().0.content_length();
        assert_eq!(length(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"), Ok(12));
        assert_eq!(length(b"POST / HTTP/1.1\r\n\r\n"), Ok(0));
        assert_eq!(length(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"), Err(()));
        assert_eq!(length(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), Err(()));
        assert_eq!(length(b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"), Ok(5));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", (0..100).map(|i| format!("X-{i}: v\r\n")).collect::<String>());
        assert_eq!(parse_head(many.as_bytes(), &|_| false).unwrap_err(), 431);
    }
}

#[cfg(test)]
mod size {
    /// Every connection the front serves holds one such task while it waits for a request
    /// (measured 504 bytes): requests, bodies and writes live in boxes of their own.
    #[tokio::test]
    async fn an_idle_connection_s_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mounts: Vec<std::sync::Arc<dyn super::Mount>> = Vec::new();
        let serve = super::serve(stream, &mounts);
        assert!(std::mem::size_of_val(&serve) <= 576, "{} bytes", std::mem::size_of_val(&serve));
    }
}
