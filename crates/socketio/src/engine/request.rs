//! Routes one Engine.IO HTTP request: a new session (long-polling or WebSocket), a poll, a
//! POST of packets, or an upgrade; and the errors Engine.IO defines for the rest, checked in
//! the reference server's order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::Engine;
use super::front::{Method, Mount, Reply, Request, Response, Upgrade};
use super::options::Handshake;
use super::peer::{ForwardedRequest, ForwardedResponse};
use super::session::{CloseReason, Handler, Session, Shared, Transport};
use super::sid::Sid;
use super::stats::{ProtocolError, Stats};
use super::websocket;

/// How long a GET that arrives while a WebSocket probe is under way may wait for the upgrade
/// to finish (it is refused then) before it is answered with a noop.
const UPGRADE_HOLD: Duration = Duration::from_millis(100);

/// The Engine.IO error answers: code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EioError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    UnsupportedProtocolVersion,
}

impl EioError {
    fn code_and_message(self) -> (u8, &'static str) {
        match self {
            Self::UnknownTransport => (0, "Transport unknown"),
            Self::UnknownSid => (1, "Session ID unknown"),
            Self::BadHandshakeMethod => (2, "Bad handshake method"),
            Self::BadRequest => (3, "Bad request"),
            Self::UnsupportedProtocolVersion => (5, "Unsupported protocol version"),
        }
    }

    fn response(self) -> Response {
        let (code, message) = self.code_and_message();
        Response::new(400, "application/json", format!(r#"{{"code":{code},"message":"{message}"}}"#))
    }
}

struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

fn query(q: &str) -> Query<'_> {
    let mut out = Query { eio: None, transport: None, sid: None };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "EIO" => out.eio = Some(v),
            "transport" => out.transport = Some(v),
            "sid" => out.sid = Some(v),
            _ => {}
        }
    }
    out
}

impl<H: Handler> Engine<H> {
    async fn route(&self, request: Request, body: Bytes) -> Reply {
        let engine = &self.shared;
        let cors = cors_headers(&engine.options.allowed_origins, request.header("origin"));
        if request.method == Method::Options {
            let mut r = Response::new(204, "text/plain", Bytes::new());
            r.headers.clear();
            r.headers.extend(cors);
            r.headers.push(("Access-Control-Allow-Methods", "GET, POST, OPTIONS".into()));
            if let Some(h) = request.header("access-control-request-headers") {
                r.headers.push(("Access-Control-Allow-Headers", h.to_owned()));
                r.headers.push(("Vary", "Access-Control-Request-Headers".into()));
            }
            return Reply::Response(r);
        }
        let gzip = super::deflate::accepts_gzip(request.header("accept-encoding"));
        match self.route_request(request, body).await {
            Reply::Response(mut r) => {
                r.headers.extend(cors);
                r.headers.push(("Cache-Control", "no-store".into()));
                // Long-polling payloads (text) worth compressing, here or from another instance.
                if r.status == 200
                    && let Some(threshold) = engine.deflate_over()
                    && r.body.len() >= threshold
                {
                    r.headers.push(("Vary", "Accept-Encoding".into()));
                    if gzip {
                        r.body = super::deflate::gzip(&r.body).into();
                        r.headers.push(("Content-Encoding", "gzip".into()));
                        engine.stats.writes.compressed();
                    }
                }
                Reply::Response(r)
            }
            upgrade => upgrade,
        }
    }

    /// Answers a request another instance forwarded, as a local one (`None`: the session id
    /// names another instance, which answers it).
    pub async fn answer_forwarded(&self, request: ForwardedRequest) -> Option<ForwardedResponse> {
        if Some(*request.sid.tag()) != self.shared.options.instance_tag {
            return None;
        }
        self.shared.stats.forwarded_in();
        let head = Request {
            method: if request.post { Method::Post } else { Method::Get },
            path: self.shared.options.path.clone().into(),
            query: format!("EIO=4&transport=polling&sid={}", request.sid).into(),
            headers: request.content_type.map(|t| (Box::from("content-type"), t)).into_iter().collect(),
            keep_alive: true,
        };
        let Reply::Response(response) = self.route_request(head, request.body).await else {
            // A polling request is never answered with an upgrade.
            return None;
        };
        let content_type = response.headers.iter().find(|(n, _)| *n == "Content-Type").map(|(_, v)| v.clone()).unwrap_or_default();
        Some(ForwardedResponse { status: response.status, content_type, body: response.body })
    }

    pub(super) async fn route_request(&self, request: Request, body: Bytes) -> Reply {
        let engine = &self.shared;
        let q = query(&request.query);
        let websocket = match q.transport {
            Some("polling") => false,
            Some("websocket") => true,
            _ => return refuse(engine, EioError::UnknownTransport),
        };
        if let Some(sid) = q.sid {
            let Some(session) = Sid::parse(sid).and_then(|sid| engine.sessions.get(&sid).map(|s| s.value().clone())) else {
                // Another instance's session: it answers, as if the client had reached it; or,
                // for its upgrade, the session moves here.
                if let Some(owned_elsewhere) = self.forwardable(sid) {
                    if websocket {
                        if engine.closing.load(std::sync::atomic::Ordering::Acquire) {
                            return Reply::Response(Response::new(503, "text/plain", "shutting down\n"));
                        }
                        return match accept_key(&request) {
                            Some(accept) => {
                                let handshake = handshake(&engine.options.handshake_headers, &request);
                                Reply::Upgrade {
                                    accept,
                                    upgrade: Upgrade {
                                        sid: Some(owned_elsewhere),
                                        handshake,
                                        arriving: true,
                                        deflate: deflate(engine, &request),
                                    },
                                }
                            }
                            None => refuse(engine, EioError::BadRequest),
                        };
                    }
                    if let Some(response) = self.forward(owned_elsewhere, &request, body).await {
                        return Reply::Response(response);
                    }
                }
                return refuse(engine, EioError::UnknownSid);
            };
            if session.is_closed() && request.method != Method::Get {
                // Closed, kept only for its goodbye to be polled.
                return refuse(engine, EioError::UnknownSid);
            }
            if session.heartbeat_expired(engine.wheel.now_ms(), engine.options.ping_timeout) {
                // The heartbeat task may not have run yet: a dead session is dead now.
                session.close(CloseReason::PingTimeout);
                return refuse(engine, EioError::UnknownSid);
            }
            if websocket {
                return match accept_key(&request) {
                    Some(accept) => Reply::Upgrade {
                        accept,
                        upgrade: Upgrade {
                            sid: Some(session.sid()),
                            handshake: Handshake::default(),
                            arriving: false,
                            deflate: deflate(engine, &request),
                        },
                    },
                    None => refuse(engine, EioError::BadRequest),
                };
            }
            return self.polling(session, request.method, &request, body).await;
        }
        if request.method != Method::Get {
            return refuse(engine, EioError::BadHandshakeMethod);
        }
        let accept = if websocket {
            match accept_key(&request) {
                Some(accept) => Some(accept),
                None => return refuse(engine, EioError::BadRequest),
            }
        } else {
            None
        };
        if q.eio != Some("4") {
            return refuse(engine, EioError::UnsupportedProtocolVersion);
        }
        if engine.closing.load(std::sync::atomic::Ordering::Acquire) {
            return Reply::Response(Response::new(503, "text/plain", "shutting down\n"));
        }
        let handshake = handshake(&engine.options.handshake_headers, &request);
        match accept {
            Some(accept) => {
                let deflate = deflate(engine, &request);
                Reply::Upgrade { accept, upgrade: Upgrade { sid: None, handshake, arriving: false, deflate } }
            }
            None => Reply::Response(super::polling::handshake(engine, handshake)),
        }
    }

    async fn polling(&self, session: Arc<Session<H>>, method: Method, request: &Request, body: Bytes) -> Reply {
        let engine = &self.shared;
        let (transport, probing) = {
            let out = session.lock();
            (out.transport, out.probing)
        };
        match transport {
            Transport::WebSocket => return refuse(engine, EioError::BadRequest),
            Transport::Upgrading | Transport::Polling if probing && method == Method::Get => {
                // A client that sent its upgrade does not poll: wait a moment to tell which it is.
                let upgraded = Box::pin(tokio::time::timeout(UPGRADE_HOLD, async {
                    loop {
                        let notified = session.upgraded.notified();
                        if session.lock().transport == Transport::WebSocket {
                            return;
                        }
                        notified.await;
                    }
                }))
                .await
                .is_ok();
                if upgraded {
                    return refuse(engine, EioError::BadRequest);
                }
            }
            _ => {}
        }
        let result = match method {
            Method::Get => super::polling::poll(&session).await,
            Method::Post if request.header("content-type").is_some_and(|t| t.starts_with("application/octet-stream")) => {
                session.close(CloseReason::ProtocolError);
                Err(ProtocolError::BadEnginePacket)
            }
            Method::Post => super::polling::post(engine, &session, &body),
            _ => return Reply::Response(Response::new(400, "text/plain", Bytes::new())),
        };
        match result {
            Ok(r) => Reply::Response(r),
            Err(e) => {
                engine.stats.protocol_error(e);
                session.close(CloseReason::ProtocolError);
                Reply::Response(Response::new(400, "text/plain", Bytes::new()))
            }
        }
    }
}

/// Whether the WebSocket `request` opens uses permessage-deflate: compression is on and the
/// client offered it in a form herald accepts.
fn deflate<H: Handler>(engine: &Shared<H>, request: &Request) -> bool {
    engine.options.compression.is_some() && super::deflate::accepts(request.header("sec-websocket-extensions"))
}

fn refuse<H: Handler>(engine: &Shared<H>, error: EioError) -> Reply {
    engine.stats.protocol_error(ProtocolError::BadHandshake);
    Reply::Response(error.response())
}

/// `Access-Control-Allow-Origin` for a request from `origin`: `*` when any origin is allowed,
/// else the origin itself if it is listed.
fn cors_headers(allowed: &[String], origin: Option<&str>) -> Vec<(&'static str, String)> {
    if allowed.is_empty() {
        return vec![("Access-Control-Allow-Origin", "*".into())];
    }
    match origin {
        Some(o) if allowed.iter().any(|a| a == o) => vec![("Access-Control-Allow-Origin", o.to_owned()), ("Vary", "Origin".into())],
        _ => vec![("Vary", "Origin".into())],
    }
}

/// The `Sec-WebSocket-Accept` for a valid upgrade request, `None` if it is not one.
fn accept_key(request: &Request) -> Option<String> {
    let upgrade = request.header("upgrade")?;
    let connection = request.header("connection")?;
    if request.method != Method::Get
        || !upgrade.eq_ignore_ascii_case("websocket")
        || !connection.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        || request.header("sec-websocket-version") != Some("13")
    {
        return None;
    }
    let key = request.header("sec-websocket-key")?.trim();
    Some(derive_accept_key(key))
}

/// RFC 6455 section 4.2.2: base64 of the SHA-1 of the client's key and the protocol's GUID.
fn derive_accept_key(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

fn handshake(wanted: &[&'static str], request: &Request) -> Handshake {
    let headers = wanted.iter().filter_map(|name| request.header(name).map(|v| (*name, Box::<str>::from(v)))).collect();
    Handshake { query: request.query.clone(), headers }
}

impl<H: Handler> Mount for Engine<H> {
    fn path(&self) -> &str {
        &self.shared.options.path
    }

    fn headers_wanted(&self) -> &[&'static str] {
        &self.shared.options.handshake_headers
    }

    fn max_payload(&self) -> usize {
        self.shared.options.max_payload
    }

    fn request_timeout(&self) -> Duration {
        self.shared.options.request_timeout
    }

    fn idle_timeout(&self) -> Duration {
        self.shared.options.ping_interval + self.shared.options.ping_timeout
    }

    fn write_timeout(&self) -> Duration {
        self.shared.options.write_timeout
    }

    fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    fn answer_before_body(&self, request: &Request) -> Option<Response> {
        if request.method != Method::Post {
            return None;
        }
        let engine = &self.shared;
        let q = query(&request.query);
        let error = match (q.transport, q.sid) {
            (Some("polling" | "websocket"), None) => EioError::BadHandshakeMethod,
            (Some("polling" | "websocket"), Some(sid)) => {
                match Sid::parse(sid).and_then(|sid| engine.sessions.get(&sid).map(|s| s.is_closed())) {
                    Some(false) => return None, // a live session: its body decides
                    // Another instance's: the body goes there.
                    None if self.forwardable(sid).is_some() => return None,
                    _ => EioError::UnknownSid,
                }
            }
            _ => EioError::UnknownTransport,
        };
        engine.stats.protocol_error(ProtocolError::BadHandshake);
        let mut response = error.response();
        response.headers.extend(cors_headers(&engine.options.allowed_origins, request.header("origin")));
        response.headers.push(("Cache-Control", "no-store".into()));
        Some(response)
    }

    fn handle(&self, request: Request, body: Bytes) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(self.route(request, body))
    }

    fn accept_websocket(&self, upgrade: Upgrade, stream: TcpStream, leftover: Bytes) {
        websocket::accept(self.shared.clone(), upgrade, stream, leftover);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_the_one_rfc_6455_gives_for_its_sample_key() {
        assert_eq!(derive_accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn reads_the_query_engine_io_needs() {
        let q = query("EIO=4&transport=polling&t=x&sid=abc");
        assert_eq!((q.eio, q.transport, q.sid), (Some("4"), Some("polling"), Some("abc")));
        let q = query("");
        assert_eq!((q.eio, q.transport, q.sid), (None, None, None));
    }

    #[test]
    fn error_bodies_are_engine_io_s() {
        let r = EioError::UnknownTransport.response();
        assert_eq!((r.status, &r.body[..]), (400, &br#"{"code":0,"message":"Transport unknown"}"#[..]));
        assert_eq!(EioError::UnsupportedProtocolVersion.response().body, &br#"{"code":5,"message":"Unsupported protocol version"}"#[..]);
    }

    #[test]
    fn cors_follows_the_allowed_origins() {
        assert_eq!(cors_headers(&[], Some("http://a")), vec![("Access-Control-Allow-Origin", "*".to_owned())]);
        let allowed = vec!["http://a".to_owned()];
        assert_eq!(cors_headers(&allowed, Some("http://a"))[0], ("Access-Control-Allow-Origin", "http://a".to_owned()));
        assert!(cors_headers(&allowed, Some("http://b")).iter().all(|(n, _)| *n != "Access-Control-Allow-Origin"));
    }
}
