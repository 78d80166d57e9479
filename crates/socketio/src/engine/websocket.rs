//! The WebSocket transport: one task per connection that reads client frames through a buffer
//! shared by every connection on its thread, keeps only the bytes of an unfinished frame, and
//! writes queued frames when the socket has room again. Sends normally bypass it (see
//! [`Session::send`]).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::framing::{self, Assembled, AssemblyError, FrameError, OpCode, close_code};
use super::front::Upgrade;
use super::moving;
use super::packet::{self, Packet};
use super::peer::MoveStep;
use super::scratch::with_scratch;
use super::session::{CloseReason, Flushed, Frame, Handler, NOOP, PONG_PROBE, Session, Shared, Transport};
use super::stats::ProtocolError;

/// Reads per wake-up before other connections get their turn.
const READS_PER_WAKE: usize = 4;
/// How long a closing connection waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// Takes an accepted WebSocket (its 101 already written): opens its session, or probes the
/// upgrade of one, and spawns the task that runs it.
pub(super) fn accept<H: Handler>(engine: Arc<Shared<H>>, upgrade: Upgrade, stream: TcpStream, leftover: Bytes) {
    let deflate = upgrade.deflate;
    let connection = match upgrade.sid {
        None => {
            if engine.closing.load(std::sync::atomic::Ordering::Acquire) {
                let _ = stream.try_write(&framing::close_frame(close_code::GOING_AWAY));
                return;
            }
            let session = Session::new(&engine, Transport::WebSocket, upgrade.handshake);
            if deflate {
                session.set_deflate();
            }
            let _ = session.ws.set(stream);
            let open = super::polling::open_packet(&engine.options, session.sid, false);
            engine.sessions.insert(session.sid, session.clone());
            engine.stats.opened(true);
            engine.wheel.opened(&session);
            if session.send_control(&open).is_err() {
                return;
            }
            engine.handler.opened(&session);
            if engine.closing.load(std::sync::atomic::Ordering::Acquire) {
                // `close_all` may have listed the sessions before this one was in the table.
                session.close(CloseReason::ServerShutdown);
            }
            Connection::new(engine, session, None)
        }
        Some(sid) if upgrade.arriving => {
            let session = Session::arriving(&engine, sid, upgrade.handshake);
            Connection { arriving: true, ..Connection::new(engine, session, Some(stream)) }
        }
        Some(sid) => {
            let session = engine.sessions.get(&sid).map(|s| s.value().clone()).filter(|s| {
                let mut out = s.lock();
                let free = out.transport == Transport::Polling && !out.probing;
                out.probing |= free;
                free
            });
            match session {
                Some(session) => Connection::new(engine, session, Some(stream)),
                // Probed, upgrading or upgraded already: this connection is closed, the session untouched.
                None => {
                    let _ = stream.try_write(&framing::close_frame(close_code::NORMAL));
                    tokio::spawn(async move { shutdown_and_drain(&stream).await });
                    return;
                }
            }
        }
    };
    let mut connection = Connection { deflate, ..connection };
    if !leftover.is_empty() {
        connection.carry.extend_from_slice(&leftover);
        connection.process_carry();
    }
    tokio::spawn(connection.run());
}

/// What woke a connection's task.
enum Event {
    Woken,
    Readable,
    Writable,
    Failed,
    /// The client took nothing for the write timeout.
    Stalled,
}

/// Why reading stopped.
enum Stop {
    /// The client sent a close frame: it gets one back, with this code.
    CloseFrame(u16),
    /// The connection ended or failed, or the session must close for `reason`.
    Closed(CloseReason),
    /// The client broke the protocol.
    Protocol(ProtocolError, u16),
}

struct Connection<H: Handler> {
    engine: Arc<Shared<H>>,
    session: Arc<Session<H>>,
    /// The stream while it still probes an upgrade; then it lives in the session.
    probing: Option<TcpStream>,
    /// The bytes of a frame not yet complete.
    carry: Vec<u8>,
    messages: framing::Assembler,
    stop: Option<Stop>,
    /// Its session is another instance's, moving here with this upgrade.
    arriving: bool,
    /// A step of that move, for `run` to take (it waits on the other instance).
    step: Option<MoveStep>,
    /// It negotiated permessage-deflate: the client may send compressed messages.
    deflate: bool,
}

impl<H: Handler> Connection<H> {
    fn new(engine: Arc<Shared<H>>, session: Arc<Session<H>>, probing: Option<TcpStream>) -> Self {
        Self {
            engine,
            session,
            probing,
            carry: Vec::new(),
            messages: framing::Assembler::default(),
            stop: None,
            arriving: false,
            step: None,
            deflate: false,
        }
    }

    fn stream(&self) -> &TcpStream {
        match &self.probing {
            Some(s) => s,
            None => self.session.ws.get().expect("a WebSocket session has its stream"),
        }
    }

    async fn run(mut self) {
        // The cold paths are boxed, so that an open connection's task holds only `serve`.
        if self.probing.is_some() {
            // Only the probe is timed: `serve` returns as soon as the upgrade is done.
            let probed = Box::pin(tokio::time::timeout(self.engine.options.upgrade_timeout, self.probe())).await;
            if probed.is_err() {
                self.stop = Some(Stop::Closed(CloseReason::TransportClose));
            }
            let failed = self.probing.take();
            {
                let mut out = self.session.lock();
                out.probing = false;
                if failed.is_some() && out.transport == Transport::Upgrading {
                    // Probed but never upgraded: the session polls on, and may probe again.
                    out.transport = Transport::Polling;
                }
            }
            if let Some(stream) = failed {
                // The probe failed or timed out: only this connection ends, the session polls on
                // (a session that was moving here ends: its client reconnects).
                let _ = stream.try_write(&framing::close_frame(close_code::NORMAL));
                if self.arriving {
                    self.session.close(CloseReason::TransportClose);
                }
                return;
            }
        }
        self.serve().await;
        Box::pin(self.finish()).await;
    }

    /// Serves a probing connection until it upgrades or stops, taking the steps of a move.
    async fn probe(&mut self) {
        loop {
            self.serve().await;
            let Some(step) = self.step.take() else { return };
            self.take_step(step).await;
            // What the client sent after the step's packet, in the same read.
            if self.stop.is_none() && !self.carry.is_empty() {
                self.process_carry();
            }
            if self.probing.is_none() {
                return;
            }
        }
    }

    /// A step of moving the session here, asked of the instance holding it.
    async fn take_step(&mut self, step: MoveStep) {
        let engine = self.engine.clone();
        match step {
            MoveStep::Probe => {
                if moving::ask_probe(&engine, self.session.sid).await {
                    self.session.lock().transport = Transport::Upgrading;
                    self.write_control(&PONG_PROBE);
                } else {
                    self.stop = Some(Stop::Closed(CloseReason::TransportClose));
                }
            }
            MoveStep::Take | MoveStep::Release => {
                if moving::take_over(&engine, &self.session).await {
                    self.upgrade();
                    engine.stats.moved_in();
                } else {
                    engine.stats.move_failed();
                    self.stop = Some(Stop::Closed(CloseReason::TransportClose));
                }
            }
        }
    }

    /// The client upgraded: the session's queue goes out on this connection from now on.
    fn upgrade(&mut self) {
        let stream = self.probing.take().expect("probing");
        if self.deflate {
            self.session.set_deflate();
        }
        if self.session.switch_to_websocket(stream).is_err() {
            self.stop = Some(Stop::Closed(CloseReason::TransportClose));
        }
        self.engine.stats.upgraded();
    }

    /// Reads and writes until the connection stops or the session closes. Its waits are polled
    /// by hand (the socket's readiness, the session's wake-up, the stall deadline), which keeps
    /// an idle connection's task small.
    async fn serve(&mut self) {
        let mut stall: Option<Pin<Box<Sleep>>> = None;
        let began_probing = self.probing.is_some();
        while self.stop.is_none() && self.step.is_none() {
            if began_probing && self.probing.is_none() {
                // Upgraded: the caller serves on, without the probe's deadline.
                return;
            }
            let (stalled, closing) = if self.probing.is_some() {
                (false, false)
            } else {
                let out = self.session.lock();
                (out.is_stalled(), out.closing.is_some())
            };
            if closing {
                return;
            }
            if !stalled {
                stall = None;
            } else if stall.is_none() {
                stall = Some(Box::pin(tokio::time::sleep(self.engine.options.write_timeout)));
            }
            // While probing, the session's wake-ups are for its long-polling GET.
            let probing = self.probing.is_some();
            let (stream, session) = (self.stream(), &self.session);
            let event = std::future::poll_fn(|cx| {
                if !probing && session.poll_woken(cx).is_ready() {
                    return Poll::Ready(Event::Woken);
                }
                if stalled && let Poll::Ready(r) = stream.poll_write_ready(cx) {
                    return Poll::Ready(r.map_or(Event::Failed, |()| Event::Writable));
                }
                if let Poll::Ready(r) = stream.poll_read_ready(cx) {
                    return Poll::Ready(r.map_or(Event::Failed, |()| Event::Readable));
                }
                match stall.as_mut().map(|s| s.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Event::Stalled),
                    _ => Poll::Pending,
                }
            })
            .await;
            match event {
                Event::Woken => {}
                Event::Writable => {
                    if self.flush_queue() {
                        stall = None;
                    }
                }
                Event::Readable => self.read(),
                Event::Failed => self.stop = Some(Stop::Closed(CloseReason::TransportClose)),
                Event::Stalled => self.stop = Some(Stop::Closed(CloseReason::WriteTimeout)),
            }
        }
    }

    /// Writes what is queued; returns whether any of it went out (which restarts the write
    /// timeout).
    fn flush_queue(&mut self) -> bool {
        let mut out = self.session.lock();
        match self.session.flush(&mut out) {
            Ok(Flushed::Empty) | Ok(Flushed::Partial { progress: true }) => true,
            Ok(Flushed::Partial { progress: false }) => false,
            Err(_) => {
                drop(out);
                self.stop = Some(Stop::Closed(CloseReason::TransportClose));
                false
            }
        }
    }

    /// Reads what the socket has, into the thread's buffer, and handles every whole frame.
    fn read(&mut self) {
        with_scratch(|scratch| {
            for _ in 0..READS_PER_WAKE {
                if self.stop.is_some() || self.step.is_some() {
                    return;
                }
                let n = match self.stream().try_read(scratch) {
                    Ok(0) => return self.stop = Some(Stop::Closed(CloseReason::TransportClose)),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(_) => return self.stop = Some(Stop::Closed(CloseReason::TransportClose)),
                };
                if self.carry.is_empty() {
                    // A step of a move stops processing: what follows it waits in `carry`.
                    let used = self.process(&mut scratch[..n]);
                    if used < n && self.stop.is_none() {
                        self.keep_partial(&scratch[used..n]);
                    }
                } else {
                    self.carry.extend_from_slice(&scratch[..n]);
                    self.process_carry();
                }
                if n < scratch.len() {
                    return;
                }
            }
        });
    }

    fn process_carry(&mut self) {
        let mut carry = std::mem::take(&mut self.carry);
        let used = self.process(&mut carry);
        if self.stop.is_none() && used < carry.len() {
            carry.drain(..used);
            self.carry = carry;
        }
    }

    /// Keeps an unfinished frame, with room for the rest of it once its header is known, up to
    /// a read's worth more: a header announcing a large frame does not allocate it before its
    /// bytes come.
    fn keep_partial(&mut self, bytes: &[u8]) {
        let whole = match framing::parse_header(bytes, self.engine.options.max_payload) {
            Ok(Some(h)) => h.header_len + h.len,
            _ => bytes.len(),
        };
        self.carry.reserve_exact(whole.min(bytes.len() + 64 * 1024));
        self.carry.extend_from_slice(bytes);
    }

    /// Handles the whole frames at the start of `buf` (unmasking them in place); returns the
    /// bytes used.
    fn process(&mut self, buf: &mut [u8]) -> usize {
        let mut at = 0;
        while self.stop.is_none() && self.step.is_none() {
            let header = match framing::parse_header_with(&buf[at..], self.engine.options.max_payload, self.deflate) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    let (kind, code) = match e {
                        FrameError::TooLarge => (ProtocolError::TooLarge, close_code::TOO_BIG),
                        _ => (ProtocolError::BadFrame, close_code::PROTOCOL_ERROR),
                    };
                    self.stop = Some(Stop::Protocol(kind, code));
                    break;
                }
            };
            let end = at + header.header_len + header.len;
            if buf.len() < end {
                break;
            }
            let payload = &mut buf[at + header.header_len..end];
            framing::unmask(payload, header.mask);
            self.on_frame(header, payload);
            at = end;
        }
        at
    }

    fn on_frame(&mut self, header: framing::Header, payload: &[u8]) {
        if header.compressed {
            self.engine.stats.writes.inflated();
        }
        match self.messages.frame(&header, payload, self.engine.options.max_payload) {
            Assembled::Pending | Assembled::Pong => {}
            Assembled::Ping(data) => {
                let pong = Frame::control(OpCode::Pong, data);
                self.write_control(&pong);
            }
            Assembled::Close(code) => self.stop = Some(Stop::CloseFrame(code)),
            Assembled::Fail(why, code) => {
                let kind = match why {
                    AssemblyError::Fragmentation => ProtocolError::BadFrame,
                    AssemblyError::TooLarge => ProtocolError::TooLarge,
                    AssemblyError::BadUtf8 => ProtocolError::BadUtf8,
                    AssemblyError::BadDeflate => ProtocolError::BadFrame,
                };
                self.stop = Some(Stop::Protocol(kind, code));
            }
            Assembled::Binary(data) => {
                if self.probing.is_some() {
                    return self.stop = Some(Stop::Protocol(ProtocolError::BadEnginePacket, close_code::PROTOCOL_ERROR));
                }
                self.engine.handler.binary(&self.session, &data);
            }
            Assembled::Text(text) => self.on_text(&text),
        }
    }

    fn on_text(&mut self, text: &str) {
        let packet = match packet::parse_text(text) {
            Ok(p) => p,
            Err(_) => return self.stop = Some(Stop::Protocol(ProtocolError::BadEnginePacket, close_code::PROTOCOL_ERROR)),
        };
        if self.probing.is_some() {
            return self.on_probe_packet(packet);
        }
        match packet {
            Packet::Pong(_) => {
                self.session.pong(self.engine.wheel.now_ms());
            }
            Packet::Text(t) => self.engine.handler.text(&self.session, t),
            Packet::Close => self.stop = Some(Stop::Closed(CloseReason::ClientClose)),
            Packet::Noop => {}
            // In v4 only the server pings; an upgrade packet belongs to a probe.
            Packet::Ping(_) | Packet::Upgrade | Packet::Binary(_) => {
                self.stop = Some(Stop::Protocol(ProtocolError::BadEnginePacket, close_code::PROTOCOL_ERROR));
            }
        }
    }

    /// The upgrade dance on a probing connection: `2probe` -> `3probe`, then `5` moves the
    /// session over.
    fn on_probe_packet(&mut self, packet: Packet<'_>) {
        match packet {
            Packet::Ping("probe") if self.arriving => {
                if self.session.lock().transport != Transport::Polling {
                    return self.stop = Some(Stop::Protocol(ProtocolError::BadHandshake, close_code::PROTOCOL_ERROR));
                }
                self.step = Some(MoveStep::Probe);
            }
            Packet::Upgrade if self.arriving && self.session.lock().transport == Transport::Upgrading => {
                self.step = Some(MoveStep::Take);
            }
            Packet::Ping("probe") => {
                {
                    let mut out = self.session.lock();
                    if out.transport != Transport::Polling || out.closing.is_some() {
                        drop(out);
                        return self.stop = Some(Stop::Protocol(ProtocolError::BadHandshake, close_code::PROTOCOL_ERROR));
                    }
                    out.transport = Transport::Upgrading;
                }
                self.write_control(&PONG_PROBE);
                // A waiting poll returns, so the client can pause its polling transport.
                let _ = self.session.send_control(&NOOP);
            }
            Packet::Upgrade if self.session.lock().transport == Transport::Upgrading => self.upgrade(),
            Packet::Noop => {}
            _ => self.stop = Some(Stop::Protocol(ProtocolError::BadEnginePacket, close_code::PROTOCOL_ERROR)),
        }
    }

    /// Writes a control frame the protocol owes the client: at once while probing, else
    /// through the session.
    fn write_control(&mut self, frame: &Frame) {
        match &self.probing {
            Some(s) => {
                if s.try_write(frame.ws()).map_or(true, |n| n < frame.ws().len()) {
                    self.stop = Some(Stop::Closed(CloseReason::TransportClose));
                }
            }
            None => {
                let _ = self.session.send_control(frame);
            }
        }
    }

    /// Ends the session (if it is not already) and the connection: what is queued, then a
    /// close frame, then the stream is shut and drained so nothing written is lost to a reset.
    async fn finish(mut self) {
        let (reason, code) = match self.stop.take() {
            Some(Stop::Protocol(kind, code)) => {
                self.engine.stats.protocol_error(kind);
                (CloseReason::ProtocolError, code)
            }
            // The client's own code echoed, as section 5.5.1 suggests.
            Some(Stop::CloseFrame(code)) => (CloseReason::ClientClose, code),
            Some(Stop::Closed(reason)) => (reason, close_code::NORMAL),
            None => {
                let reason = self.session.lock().closing.unwrap_or(CloseReason::ServerClose);
                let code = if reason == CloseReason::ServerShutdown { close_code::GOING_AWAY } else { close_code::NORMAL };
                (reason, code)
            }
        };
        self.session.closed_once(reason);
        let stream = self.session.ws.get().expect("a WebSocket session has its stream");
        if !matches!(reason, CloseReason::TransportClose | CloseReason::WriteTimeout) {
            let deadline = tokio::time::Instant::now() + self.engine.options.write_timeout.min(LINGER * 5);
            let _ = tokio::time::timeout_at(deadline, async {
                loop {
                    let done = {
                        let mut out = self.session.lock();
                        self.session.flush(&mut out)
                    };
                    match done {
                        Ok(Flushed::Empty) => break,
                        // While the client's data is discarded, a client blocked sending to
                        // us can go on to read what we send.
                        Ok(Flushed::Partial { .. }) => match stream.ready(Interest::READABLE | Interest::WRITABLE).await {
                            Ok(ready) if ready.is_readable() => discard(stream),
                            Ok(_) => {}
                            Err(_) => return,
                        },
                        Err(_) => return,
                    }
                }
                let _ = write_all(stream, &framing::close_frame(code)).await;
            })
            .await;
        }
        shutdown_and_drain(stream).await;
        self.session.mark_finished();
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads and drops what the client has sent.
fn discard(stream: &TcpStream) {
    with_scratch(|scratch| {
        for _ in 0..READS_PER_WAKE {
            if !matches!(stream.try_read(scratch), Ok(n) if n > 0) {
                return;
            }
        }
    });
}

/// Sends FIN after everything written, then reads until the client closes (or briefly), so
/// that unread client bytes do not make the kernel reset the connection and drop our last frames.
async fn shutdown_and_drain(stream: &TcpStream) {
    // shutdown(2) on the socket itself: tokio's shutdown needs the stream mutably, which the
    // reads below share.
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            let done = with_scratch(|scratch| match stream.try_read(scratch) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            });
            if done {
                return;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::super::tests::Nothing;
    use super::super::{Engine, Handshake, Options};
    use super::*;

    /// Every open WebSocket holds one such task: its future is what an idle connection costs
    /// beyond its session (measured 272 bytes; tokio adds about 100 and rounds to 128).
    #[tokio::test]
    async fn an_idle_connection_s_task_stays_small() {
        let engine = Engine::start(Options::default(), Nothing);
        let session = Session::new(&engine.shared, Transport::WebSocket, Handshake::default());
        let run = Connection::new(engine.shared.clone(), session, None).run();
        assert!(std::mem::size_of_val(&run) <= 320, "{} bytes", std::mem::size_of_val(&run));
    }
}
