//! One Engine.IO session: its id, the write side of its transport (frames queued for a
//! WebSocket, or packets waiting for the next long-polling GET), its heartbeat state, and the
//! layer above's state. Sends come from any thread: they queue the frame and mark the session
//! for the flusher (WebSocket) or wake the waiting GET (long-polling).
//!
//! Here too, as the types a session names and that name it: the layer above's [`Handler`],
//! and what the engine's sessions share (its table of sessions, heartbeat and flushers).

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use futures::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub use super::encoded::Frame;
pub(super) use super::encoded::{CLOSE, NOOP, PING, PONG_PROBE};
use super::flusher::{Flusher, Marked};
use super::heartbeat::{Beating, Wheel};
use super::options::{Handshake, Options};
pub use super::outbox::SendError;
pub(super) use super::outbox::{Flushed, Outbox, Transport};
use super::peer::Forwarder;
use super::sid::Sid;
pub use super::stats::CloseReason;
use super::stats::{ProtocolError, Stats, WriteCounts};
use dashmap::DashMap;

/// What the layer above does with sessions. Every call is made on a runtime thread and must not
/// block; work that waits belongs in a task it spawns.
pub trait Handler: Sized + Send + Sync + 'static {
    /// Per-session state of the layer above.
    type State: Send + Sync + 'static;

    fn state(&self) -> Self::State;
    /// The session is open and the client knows its id.
    fn opened(&self, _session: &Arc<Session<Self>>) {}
    fn text(&self, session: &Arc<Session<Self>>, text: &str);
    fn binary(&self, session: &Arc<Session<Self>>, data: &[u8]);
    /// Called once, when the session ends for any reason.
    fn closed(&self, session: &Arc<Session<Self>>, reason: CloseReason);

    /// Moving a session to the instance that received its WebSocket upgrade (see `moving`):
    /// whether it may move now. By default sessions never move.
    fn movable(&self, _session: &Arc<Session<Self>>) -> bool {
        false
    }

    /// What the instance taking the session over needs, as text; `None`: it cannot move.
    fn export(&self, _session: &Arc<Session<Self>>) -> impl Future<Output = Option<String>> + Send + 'static {
        std::future::ready(None)
    }

    /// Takes over a session another instance held, from what its [`Handler::export`] gave;
    /// `false`: it could not (the session ends).
    fn import(&self, _session: &Arc<Session<Self>>, _state: String) -> impl Future<Output = bool> + Send + 'static {
        std::future::ready(false)
    }

    /// Resolves (`true`) once whatever the layer above sends the session from elsewhere has
    /// been cut between this instance and the one taking it over: what came before the cut
    /// is in the session's queue here, what comes after it goes to the other instance.
    fn cut(&self, _session: &Arc<Session<Self>>) -> impl Future<Output = bool> + Send + 'static {
        std::future::ready(false)
    }

    /// The session went on to another instance: release what it held here, without a close.
    fn departed(&self, _session: &Arc<Session<Self>>) {}
}

pub(crate) struct Shared<H: Handler> {
    pub(crate) options: Options,
    pub(crate) handler: H,
    pub(crate) sessions: DashMap<Sid, Arc<Session<H>>>,
    pub(crate) wheel: Wheel<Session<H>>,
    pub(crate) stats: Stats,
    /// The flushers (`Options::flushers`); each session belongs to one, given in turn, so a
    /// broadcast's writes are spread over every flusher and core, and senders to different
    /// sessions mostly take different locks.
    pub(crate) flushers: Box<[Arc<Flusher<Session<H>>>]>,
    pub(super) next_flusher: std::sync::atomic::AtomicUsize,
    /// Set by `Engine::close_all`: no new sessions.
    pub(crate) closing: std::sync::atomic::AtomicBool,
    /// Where requests for other instances' sessions go (`Engine::set_forwarder`).
    pub(crate) forwarder: std::sync::OnceLock<Arc<dyn Forwarder>>,
}

impl<H: Handler> Shared<H> {
    /// The flusher of a new session: each in turn.
    pub(crate) fn flusher(&self) -> Arc<Flusher<Session<H>>> {
        let i = self.next_flusher.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.flushers.len();
        self.flushers[i].clone()
    }
}

impl<H: Handler> Drop for Shared<H> {
    fn drop(&mut self) {
        // Sessions hold no strong reference back to the engine, so this runs once the engine's
        // handles, the fronts and the WebSocket tasks have let go.
        for f in self.flushers.iter() {
            f.stop();
        }
        self.sessions.clear();
    }
}

/// Frames past `max_queue` kept for what the protocol owes a client (pings, a CONNECT reply, a
/// DISCONNECT): enough for those, not for a client that floods requests for answers.
const CONTROL_ROOM: usize = 32;

/// The heartbeat: a ping went out and its pong has not come back.
const AWAITING_PONG: u8 = 1;
/// The layer above joined the session (for the join timeout).
const JOINED: u8 = 2;
/// Its WebSocket negotiated permessage-deflate.
const DEFLATE: u8 = 4;

pub struct Session<H: Handler> {
    pub(super) sid: Sid,
    pub(super) engine: Weak<Shared<H>>,
    /// The WebSocket, once there is one (at once, or after the upgrade); set once.
    pub(super) ws: OnceLock<TcpStream>,
    pub(super) out: Mutex<Outbox>,
    /// Its flusher: one of the engine's, each in turn, so that a broadcast's writes are shared
    /// by all of them, each on its own core.
    flusher: Arc<Flusher<Session<H>>>,
    writes: Arc<WriteCounts>,
    /// Wakes the WebSocket task (the socket has no room, or the session is closing): a flag and
    /// its waker, smaller to wait on than a `Notify`.
    task_woken: AtomicBool,
    task: AtomicWaker,
    /// Wakes the waiting long-polling GET.
    pub(super) poll_waiter: Notify,
    flags: AtomicU8,
    /// Milliseconds since the engine started at the last pong, and at the last ping.
    pub(super) last_pong_ms: AtomicU64,
    pub(super) last_ping_ms: AtomicU64,
    /// Notified when an upgrade to WebSocket completes.
    pub(super) upgraded: Notify,
    closed: AtomicBool,
    /// Notified once the transport has finished (see [`Session::finished`]).
    done: Notify,
    done_flag: AtomicBool,
    max_queue: usize,
    handshake: Handshake,
    state: H::State,
}

impl<H: Handler> Session<H> {
    pub(super) fn new(shared: &Arc<Shared<H>>, transport: Transport, handshake: Handshake) -> Arc<Self> {
        Self::with_sid(shared, Sid::tagged(shared.options.instance_tag.as_ref()), transport, handshake)
    }

    /// A session another instance holds, arriving with its upgrade: polling, being probed, not
    /// yet in the engine's table.
    pub(super) fn arriving(shared: &Arc<Shared<H>>, sid: Sid, handshake: Handshake) -> Arc<Self> {
        let session = Self::with_sid(shared, sid, Transport::Polling, handshake);
        session.lock().probing = true;
        session
    }

    fn with_sid(shared: &Arc<Shared<H>>, sid: Sid, transport: Transport, handshake: Handshake) -> Arc<Self> {
        Arc::new(Self {
            sid,
            engine: Arc::downgrade(shared),
            ws: OnceLock::new(),
            out: Mutex::new(Outbox::new(transport)),
            flusher: shared.flusher(),
            writes: shared.stats.writes.clone(),
            task_woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
            poll_waiter: Notify::new(),
            flags: AtomicU8::new(0),
            last_pong_ms: AtomicU64::new(0),
            last_ping_ms: AtomicU64::new(0),
            upgraded: Notify::new(),
            closed: AtomicBool::new(false),
            done: Notify::new(),
            done_flag: AtomicBool::new(false),
            max_queue: shared.options.max_queue,
            handshake,
            state: shared.handler.state(),
        })
    }

    pub fn sid(&self) -> Sid {
        self.sid
    }

    /// Wakes whoever waits on the session: its WebSocket task, or its long-polling GET.
    pub(super) fn wake(&self) {
        self.task_woken.store(true, Ordering::Release);
        self.task.wake();
        self.poll_waiter.notify_one();
    }

    /// Ready once [`Session::wake`] was called since the last time it was.
    pub(super) fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.task_woken.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Ready(());
        }
        self.task.register(cx.waker());
        if self.task_woken.swap(false, Ordering::AcqRel) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    }

    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    pub fn state(&self) -> &H::State {
        &self.state
    }

    /// The transport's name, as Engine.IO names it.
    pub fn transport(&self) -> &'static str {
        match self.lock().transport {
            Transport::WebSocket => "websocket",
            Transport::Polling | Transport::Upgrading => "polling",
        }
    }

    /// Marks the session as joined by the layer above (it is no longer subject to the join
    /// timeout).
    pub fn mark_joined(&self) {
        self.flags.fetch_or(JOINED, Ordering::AcqRel);
    }

    /// Its WebSocket negotiated permessage-deflate: long packets go compressed.
    pub(super) fn set_deflate(&self) {
        self.flags.fetch_or(DEFLATE, Ordering::AcqRel);
    }

    /// What `frame` is on this session's WebSocket.
    fn wire<'a>(&self, frame: &'a Frame) -> &'a [u8] {
        let over = if self.flags.load(Ordering::Relaxed) & DEFLATE != 0 { self.flusher.deflate_over } else { None };
        frame.wire(over, || self.writes.compressed())
    }

    pub(super) fn joined(&self) -> bool {
        self.flags.load(Ordering::Acquire) & JOINED != 0
    }

    pub(super) fn set_awaiting_pong(&self, now_ms: u64) {
        self.last_ping_ms.store(now_ms, Ordering::Release);
        self.flags.fetch_or(AWAITING_PONG, Ordering::AcqRel);
    }

    /// A ping went unanswered for longer than `timeout` (the heartbeat task may not have
    /// noticed yet).
    pub(super) fn heartbeat_expired(&self, now_ms: u64, timeout: std::time::Duration) -> bool {
        self.awaiting_pong() && now_ms >= self.last_ping_ms.load(Ordering::Acquire) + timeout.as_millis() as u64
    }

    /// The pong arrived: returns whether one was awaited.
    pub(super) fn pong(&self, now_ms: u64) -> bool {
        self.last_pong_ms.store(now_ms, Ordering::Release);
        self.flags.fetch_and(!AWAITING_PONG, Ordering::AcqRel) & AWAITING_PONG != 0
    }

    pub(super) fn awaiting_pong(&self) -> bool {
        self.flags.load(Ordering::Acquire) & AWAITING_PONG != 0
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one frame: queued, and written with the others queued meanwhile by the flusher
    /// (or the GET that takes it). Fails when the queue already holds `max_queue` frames, or
    /// the session is closing.
    pub fn send(self: &Arc<Self>, frame: &Frame) -> Result<(), SendError> {
        self.push(frame, false)
    }

    /// Sends, ignoring the queue bound (pings, replies the protocol owes).
    pub(super) fn send_control(self: &Arc<Self>, frame: &Frame) -> Result<(), SendError> {
        self.push(frame, true)
    }

    /// Sends a packet the protocol owes the client (a CONNECT reply, a DISCONNECT), even past
    /// the queue bound.
    pub fn send_control_frame(self: &Arc<Self>, frame: &Frame) -> Result<(), SendError> {
        self.push(frame, true)
    }

    /// Runs `f` with the engine's handler, if the engine still exists.
    pub fn with_handler<T>(&self, f: impl FnOnce(&H) -> T) -> Option<T> {
        self.engine.upgrade().map(|e| f(&e.handler))
    }

    /// Frames its queue holds before sends to it fail.
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// Drops the session from the engine's table (a long-polling client collected its goodbye).
    pub(super) fn forget(self: &Arc<Self>) {
        if let Some(engine) = self.engine.upgrade() {
            engine.sessions.remove_if(&self.sid, |_, s| Arc::ptr_eq(s, self));
        }
    }

    /// The largest message the client may send.
    pub fn max_payload(&self) -> usize {
        self.engine.upgrade().map_or(0, |e| e.options.max_payload)
    }

    /// Counts a protocol error of the layer above and ends the session.
    pub fn protocol_error(self: &Arc<Self>, kind: ProtocolError) {
        if let Some(e) = self.engine.upgrade() {
            e.stats.protocol_error(kind);
        }
        self.close(CloseReason::ProtocolError);
    }

    fn push(self: &Arc<Self>, frame: &Frame, control: bool) -> Result<(), SendError> {
        let mut out = self.lock();
        if out.closing.is_some() {
            return Err(SendError::Closed);
        }
        let bound = if control { self.max_queue + CONTROL_ROOM } else { self.max_queue };
        if out.queue.len() >= bound {
            if control {
                // Even the room kept for what the protocol owes is full: a client that asks for
                // answers (pongs, refusals) and reads none of them is cut off. From a task of
                // its own: the sender may hold locks the close path takes.
                drop(out);
                let session = self.clone();
                tokio::spawn(async move { session.close(CloseReason::Flood) });
            }
            return Err(SendError::Full);
        }
        out.queue.push_back(frame.clone());
        match out.transport {
            Transport::WebSocket => {
                let mark = !out.marked && !out.stalled;
                out.marked |= mark;
                drop(out);
                if mark {
                    self.flusher.mark(self.clone());
                }
            }
            Transport::Polling | Transport::Upgrading => {
                let waiting = out.polling_get;
                drop(out);
                if waiting {
                    self.wake();
                }
            }
        }
        Ok(())
    }

    /// Writes queued frames to the WebSocket, many per system call, until the queue is empty
    /// or the socket has no room.
    pub(super) fn flush(&self, out: &mut Outbox) -> io::Result<Flushed> {
        let Some(stream) = self.ws.get() else { return Ok(Flushed::Empty) };
        let mut progress = false;
        while !out.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let mut n = 0;
            for (i, f) in out.queue.iter().take(slices.len()).enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &self.wire(f)[out.written..] } else { self.wire(f) });
                n += 1;
            }
            match stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    progress = true;
                    let bytes = written;
                    let mut frames = 0;
                    while written > 0 {
                        let left = self.wire(out.queue.front().expect("written bytes belong to queued frames")).len() - out.written;
                        if written >= left {
                            written -= left;
                            out.queue.pop_front();
                            out.written = 0;
                            frames += 1;
                        } else {
                            out.written += written;
                            written = 0;
                        }
                    }
                    self.writes.wrote(frames, bytes);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Partial { progress }),
                Err(e) => return Err(e),
            }
        }
        out.stalled = false;
        Ok(Flushed::Empty)
    }

    /// Moves what polling had queued onto the WebSocket: the upgrade is complete.
    pub(super) fn switch_to_websocket(&self, stream: TcpStream) -> io::Result<()> {
        let _ = self.ws.set(stream);
        let mut out = self.lock();
        out.transport = Transport::WebSocket;
        out.written = 0;
        // Noops were for the polls the upgrade ended; the WebSocket does not need them.
        out.queue.retain(|f| f.packet() != NOOP.packet());
        let waiting = out.polling_get;
        let flushed = self.flush(&mut out)?;
        out.stalled = flushed != Flushed::Empty;
        drop(out);
        self.upgraded.notify_waiters();
        if waiting || flushed != Flushed::Empty {
            // The last poll ends (empty) so the client's polling transport can close.
            self.wake();
        }
        Ok(())
    }

    /// The session went on to another instance: it ends here without a goodbye and without
    /// the layer above hearing it closed. Returns what was queued for the client (a long-polling
    /// payload, noops left out), for that instance to send first; `None` if it had closed.
    pub(super) fn detach(self: &Arc<Self>) -> Option<Vec<u8>> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let payload = {
            let mut out = self.lock();
            out.closing = Some(CloseReason::Moved);
            out.queue.retain(|f| f.packet() != NOOP.packet());
            out.take_polling_payload(usize::MAX)
        };
        self.forget();
        self.mark_finished();
        self.wake();
        Some(payload)
    }

    /// Puts what the instance that held the session had queued before what is queued here.
    pub(super) fn queue_first(&self, frames: Vec<Frame>) {
        let mut out = self.lock();
        for frame in frames.into_iter().rev() {
            out.queue.push_front(frame);
        }
    }

    /// Closes the session: the layer above is told at once; the transport flushes what is
    /// queued, says goodbye (a close frame, or a close packet) and ends. Idempotent.
    pub fn close(self: &Arc<Self>, reason: CloseReason) {
        {
            let mut out = self.lock();
            if out.closing.is_none() {
                out.closing = Some(reason);
            }
        }
        self.wake();
        self.closed_once(reason);
    }

    /// Removes the session from the engine and tells the layer above, the first time only.
    pub(super) fn closed_once(self: &Arc<Self>, reason: CloseReason) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut out = self.lock();
            if out.closing.is_none() {
                out.closing = Some(reason);
            }
        }
        if let Some(engine) = self.engine.upgrade() {
            if self.ws.get().is_none() && reason == CloseReason::ServerClose {
                // A long-polling client collects what the server said last (a DISCONNECT) with
                // its next GET: the session stays findable for that poll, or for a ping timeout.
                let (session, engine_weak, grace) = (self.clone(), self.engine.clone(), engine.options.ping_timeout);
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if let Some(engine) = engine_weak.upgrade() {
                        engine.sessions.remove_if(&session.sid, |_, s| Arc::ptr_eq(s, &session));
                    }
                });
            } else {
                engine.sessions.remove(&self.sid);
            }
            engine.stats.session_closed(reason);
            engine.handler.closed(self, reason);
        }
        // A polling session has no task to finish: it is done when closed.
        if self.ws.get().is_none() {
            self.mark_finished();
        }
        self.wake();
    }

    pub(super) fn mark_finished(&self) {
        self.done_flag.store(true, Ordering::Release);
        self.done.notify_waiters();
    }

    /// Resolves once the session's transport has finished (its goodbye written or given up).
    pub async fn finished(&self) {
        loop {
            let notified = self.done.notified();
            if self.done_flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl<H: Handler> Marked for Session<H> {
    /// The flusher's visit: writes the queue; if the socket has no room, its task takes over.
    fn flush_marked(&self) {
        let mut out = self.lock();
        out.marked = false;
        if out.stalled || out.transport != Transport::WebSocket {
            return;
        }
        match self.flush(&mut out) {
            Ok(Flushed::Empty) => {}
            Ok(Flushed::Partial { .. }) => {
                out.stalled = true;
                drop(out);
                self.wake();
            }
            Err(_) => {
                // The connection is gone; the task sees it too and closes the session.
                drop(out);
                self.wake();
            }
        }
    }
}

impl<H: Handler> Beating for Session<H> {
    fn is_closed(&self) -> bool {
        Session::is_closed(self)
    }

    fn joined(&self) -> bool {
        Session::joined(self)
    }

    fn ping(self: &Arc<Self>, due_ms: u64) -> bool {
        self.set_awaiting_pong(due_ms);
        self.send_control(&PING).is_ok()
    }

    fn awaiting_pong(&self) -> bool {
        Session::awaiting_pong(self)
    }

    fn last_pong_ms(&self) -> u64 {
        self.last_pong_ms.load(Ordering::Acquire)
    }

    fn set_last_pong_ms(&self, ms: u64) {
        self.last_pong_ms.store(ms, Ordering::Release);
    }

    fn close(self: &Arc<Self>, reason: CloseReason) {
        Session::close(self, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_both_forms() {
        let f = Frame::text(|b| b.extend_from_slice(b"4hello"));
        assert_eq!(f.ws(), b"\x81\x064hello");
        assert_eq!(f.packet(), b"4hello");
        let long = Frame::text(|b| b.resize(b.len() + 300, b'x'));
        assert_eq!(&long.ws()[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.packet().len(), 300);
        let bin = Frame::binary(&[1, 2, 3]);
        assert_eq!((bin.ws(), bin.packet(), bin.is_binary()), (&[0x82, 3, 1, 2, 3][..], &[1, 2, 3][..], true));
        assert_eq!(PING.packet(), b"2");
        assert_eq!(PONG_PROBE.packet(), b"3probe");
    }

    #[test]
    fn sids_are_random_and_parse_back() {
        let (a, b) = (Sid::random(), Sid::random());
        assert_ne!(a, b);
        assert_eq!(Sid::parse(a.as_str()), Some(a));
        assert_eq!(Sid::parse("short"), None);
        assert_eq!(Sid::parse("AAAAAAAAAAAAAAAAAAA="), None);
    }
}
