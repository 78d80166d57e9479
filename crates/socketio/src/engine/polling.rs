//! The HTTP long-polling transport: the handshake's open packet, a GET that waits for packets
//! (one at a time per session), and a POST that carries the client's packets.

use std::sync::Arc;

use bytes::Bytes;

use super::front::Response;
use super::options::{Handshake, Options};
use super::packet::{self, Packet};
use super::session::{CLOSE, CloseReason, Frame, NOOP, Session, Transport};
use super::session::{Handler, Shared};
use super::sid::Sid;
use super::stats::ProtocolError;

/// `0{"sid":...,"upgrades":[...],"pingInterval":...,"pingTimeout":...,"maxPayload":...}`.
pub(super) fn open_packet(options: &Options, sid: Sid, upgrades: bool) -> Frame {
    Frame::text(|b| {
        let upgrades = if upgrades { r#"["websocket"]"# } else { "[]" };
        let json = format!(
            r#"0{{"sid":"{sid}","upgrades":{upgrades},"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
            options.ping_interval.as_millis(),
            options.ping_timeout.as_millis(),
            options.max_payload
        );
        b.extend_from_slice(json.as_bytes());
    })
}

pub(super) const TEXT: &str = "text/plain; charset=UTF-8";

/// A new session over long-polling: the response carries its open packet.
pub(super) fn handshake<H: Handler>(engine: &Arc<Shared<H>>, handshake: Handshake) -> Response {
    let session = Session::new(engine, Transport::Polling, handshake);
    let open = open_packet(&engine.options, session.sid, true);
    engine.sessions.insert(session.sid, session.clone());
    engine.stats.opened(false);
    engine.wheel.opened(&session);
    engine.handler.opened(&session);
    if engine.closing.load(std::sync::atomic::Ordering::Acquire) {
        // `close_all` may have listed the sessions before this one was in the table.
        session.close(CloseReason::ServerShutdown);
    }
    // Whatever the layer above sent on opening follows in the next poll.
    Response::new(200, TEXT, Bytes::copy_from_slice(open.packet()))
}

/// The most packets one poll answers with; the rest wait for the next poll, which the client
/// sends at once. python-engineio's client refuses a payload of more than 16 packets ("Too many
/// packets in payload") and drops its connection, so a burst must not reach it in one payload.
pub(super) const PACKETS_PER_POLL: usize = 16;

/// A GET: what is queued, or the next packets as they come (a ping comes every interval, so
/// the wait is bounded).
pub(super) async fn poll<H: Handler>(session: &Arc<Session<H>>) -> Result<Response, ProtocolError> {
    {
        let mut out = session.lock();
        if out.polling_get {
            drop(out);
            // Two polls at once: the client is broken or hostile; the session ends.
            session.close(CloseReason::ProtocolError);
            return Err(ProtocolError::OverlappingPoll);
        }
        out.polling_get = true;
    }
    // A poll dropped unanswered (its client went away while hyper served it) is no longer
    // waiting: the next one is not an overlap.
    struct Waiting<'a, H: Handler>(&'a Session<H>);
    impl<H: Handler> Drop for Waiting<'_, H> {
        fn drop(&mut self) {
            self.0.lock().polling_get = false;
        }
    }
    let _waiting = Waiting(session);
    loop {
        let notified = session.poll_waiter.notified();
        {
            let mut out = session.lock();
            let closing = out.closing;
            let upgraded = out.transport == Transport::WebSocket;
            let queued = out.has_queued();
            if queued || closing.is_some() || upgraded {
                out.polling_get = false;
                let mut body = if upgraded { Vec::new() } else { out.take_polling_payload(PACKETS_PER_POLL) };
                // The goodbye goes alone, after what was queued (a DISCONNECT, say): a client
                // handles Socket.IO packets a tick late, and a close packet in the same payload
                // would end its transport before it read them.
                let goodbye = closing.filter(|_| !upgraded && !queued);
                if let Some(reason) = goodbye {
                    // The client asked to close: its poll just ends. Otherwise it is told.
                    body.extend_from_slice(if reason == CloseReason::ClientClose { NOOP.packet() } else { CLOSE.packet() });
                }
                if body.is_empty() {
                    // Upgraded meanwhile: a noop ends this poll.
                    body.extend_from_slice(NOOP.packet());
                }
                drop(out);
                if goodbye.is_some() {
                    // The goodbye is collected: the session can go.
                    session.forget();
                }
                return Ok(Response::new(200, TEXT, body));
            }
        }
        notified.await;
    }
}

/// A POST: the client's packets, handled in order. The payload is refused whole if any
/// packet cannot be read.
pub(super) fn post<H: Handler>(engine: &Shared<H>, session: &Arc<Session<H>>, body: &[u8]) -> Result<Response, ProtocolError> {
    let packets = match packet::parse_payload(body) {
        Ok(p) => p,
        Err(packet::PacketError::BadUtf8) => return Err(ProtocolError::BadUtf8),
        Err(_) => return Err(ProtocolError::BadEnginePacket),
    };
    for p in packets {
        if session.is_closed() {
            break;
        }
        match p {
            Packet::Pong(_) => {
                session.pong(engine.wheel.now_ms());
            }
            Packet::Text(t) => engine.handler.text(session, t),
            Packet::Binary(b) => engine.handler.binary(session, &b),
            Packet::Close => {
                // Nothing after a close packet is read.
                close_after_poll(session);
                break;
            }
            Packet::Noop => {}
            // In v4 only the server pings.
            Packet::Ping(_) | Packet::Upgrade => return Err(ProtocolError::BadEnginePacket),
        }
    }
    Ok(Response::new(200, "text/html", "ok"))
}

/// How long a client's close waits for the poll it may have in flight on another connection.
const CLOSE_GRACE_MS: u64 = 100;

/// A client closing over long-polling: its waiting GET ends with a noop. Its GET and this POST
/// travel on two connections and may arrive in either order, so a GET that is not there yet
/// gets a moment to arrive and be answered, instead of finding no session.
fn close_after_poll<H: Handler>(session: &Arc<Session<H>>) {
    if session.lock().polling_get {
        return session.close(CloseReason::ClientClose);
    }
    let session = session.clone();
    tokio::spawn(async move {
        for _ in 0..CLOSE_GRACE_MS / 5 {
            if session.lock().polling_get {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        session.close(CloseReason::ClientClose);
    });
}
