//! No sticky sessions: a long-polling request that reaches an instance other than the one
//! holding its session travels there over the bus (the owner's own channel), is answered there
//! as a local request, and the answer comes back on the asking instance's channel; the steps of
//! moving a session to the instance its WebSocket upgrade reached travel the same way. Over the bus
//! rather than instance to instance over HTTP: every instance already reaches Redis and needs no
//! address of the others, and a request for an instance that is gone is known at once (its
//! channel has no subscriber).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use super::admission::Admission;
use crate::bus::Bus;
use crate::bus::envelope::{self, Asking, Relayed};
use socketio::Server;
use socketio::engine::{ForwardedRequest, ForwardedResponse, Forwarder, MoveStep, Sid};

/// How long a tag nobody listened on is taken as gone.
const ABSENT_FOR: Duration = Duration::from_secs(5);
/// Most tags remembered as gone (made-up session ids could name any).
const MAX_ABSENT: usize = 10_000;

/// Carries long-polling requests between instances; one per instance, with Redis.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    tag: String,
    bus: OnceLock<Arc<Bus>>,
    server: OnceLock<Server<Admission>>,
    /// Requests sent, waiting for their answers (more than one if two instances share a tag).
    pending: DashMap<u64, mpsc::Sender<ForwardedResponse>>,
    next_id: AtomicU64,
    /// Tags that no instance listened on lately (a pod gone, or made-up session ids): requests
    /// for them are refused without a round trip to Redis for a while.
    absent: DashMap<String, tokio::time::Instant>,
    /// A poll is answered within a ping interval (a ping comes); past this its owner is gone.
    poll_wait: Duration,
    post_wait: Duration,
}

impl Relay {
    pub fn new(tag: &[u8], poll_wait: Duration, post_wait: Duration) -> Self {
        let inner = Inner {
            tag: String::from_utf8_lossy(tag).into_owned(),
            bus: OnceLock::new(),
            server: OnceLock::new(),
            pending: DashMap::new(),
            absent: DashMap::new(),
            // Ids start anywhere: an answer cannot be guessed for a request it does not answer.
            next_id: AtomicU64::new(random_u64()),
            poll_wait,
            post_wait,
        };
        Self { inner: Arc::new(inner) }
    }

    /// This instance's tag (the start of its session ids, the name of its channel).
    pub fn tag(&self) -> &str {
        &self.inner.tag
    }

    pub fn attach_bus(&self, bus: Arc<Bus>) {
        let _ = self.inner.bus.set(bus);
    }

    /// The server that answers requests forwarded here, and forwards its own.
    pub fn attach_server(&self, server: &Server<Admission>) {
        let _ = self.inner.server.set(server.clone());
        server.set_forwarder(Arc::new(self.clone()));
    }

    /// A message on this instance's channel: a request to answer, or the answer to ours.
    pub fn received(&self, message: Relayed) {
        match message {
            Relayed::Response { id, status, content_type, body } => {
                if let Some(waiting) = self.inner.pending.get(&id) {
                    let _ = waiting.try_send(ForwardedResponse { status, content_type, body: Bytes::from(body) });
                }
            }
            Relayed::Move { asking, step } => {
                let step = match step {
                    envelope::MoveStep::Probe => MoveStep::Probe,
                    envelope::MoveStep::Take => MoveStep::Take,
                    envelope::MoveStep::Release => MoveStep::Release,
                };
                self.answer(asking, move |server, sid| async move { server.answer_move(sid, step).await });
            }
            Relayed::Request { asking, post, content_type, body } => {
                self.answer(asking, move |server, sid| async move {
                    let request = ForwardedRequest { sid, post, content_type: content_type.map(Box::from), body: Bytes::from(body) };
                    server.answer_forwarded(request).await
                });
            }
        }
    }

    /// Answers another instance's request on a task of its own (a poll waits for packets), on
    /// that instance's channel.
    fn answer<F>(&self, asking: Asking, work: impl FnOnce(Server<Admission>, Sid) -> F)
    where
        F: Future<Output = Option<ForwardedResponse>> + Send + 'static,
    {
        let (Some(sid), Some(server), Some(bus)) =
            (Sid::parse(&asking.sid), self.inner.server.get().cloned(), self.inner.bus.get().cloned())
        else {
            return;
        };
        let work = work(server, sid);
        tokio::spawn(async move {
            let Some(answer) = work.await else { return };
            // Long-polling payloads are text (binary goes base64-encoded).
            let body = String::from_utf8_lossy(&answer.body).into_owned();
            let answer = Relayed::Response { id: asking.id, status: answer.status, content_type: answer.content_type, body };
            if let Err(e) = bus.relay(&asking.from, &answer).await {
                tracing::debug!(error = %e, "The answer to another instance's request could not be sent back.");
            }
        });
    }
}

/// Takes the waiting answer out when the request ends, answered or not.
struct Waiting<'a>(&'a Inner, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.remove(&self.1);
    }
}

impl Forwarder for Relay {
    fn forward(&self, request: ForwardedRequest) -> Pin<Box<dyn Future<Output = Option<ForwardedResponse>> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let Ok(body) = String::from_utf8(request.body.to_vec()) else {
                // As a local session answers a payload that is not UTF-8.
                return Some(ForwardedResponse { status: 400, content_type: "text/plain".into(), body: Bytes::new() });
            };
            let wait = if request.post { inner.post_wait } else { inner.poll_wait };
            let (sid, post, content_type) = (request.sid, request.post, request.content_type.map(String::from));
            inner.ask(sid, wait, |asking| Relayed::Request { asking, post, content_type, body }).await
        })
    }

    fn move_step(&self, sid: Sid, step: MoveStep) -> Pin<Box<dyn Future<Output = Option<ForwardedResponse>> + Send>> {
        let inner = self.inner.clone();
        let step = match step {
            MoveStep::Probe => envelope::MoveStep::Probe,
            MoveStep::Take => envelope::MoveStep::Take,
            MoveStep::Release => envelope::MoveStep::Release,
        };
        // The release waits for the holder's cut to pass through Redis.
        let wait = inner.post_wait + if step == envelope::MoveStep::Release { super::moving::CUT_WAIT } else { Duration::ZERO };
        Box::pin(async move { inner.ask(sid, wait, |asking| Relayed::Move { asking, step }).await })
    }
}

impl Inner {
    /// Sends the message `make` builds (around this instance's request about `sid`) to the
    /// instance `sid` names and waits up to `wait` for its answer.
    async fn ask(&self, sid: Sid, wait: Duration, make: impl FnOnce(Asking) -> Relayed) -> Option<ForwardedResponse> {
        let bus = self.bus.get()?.clone();
        let to = String::from_utf8_lossy(sid.tag()).into_owned();
        if self.absent.get(&to).is_some_and(|since| since.elapsed() < ABSENT_FOR) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(4);
        self.pending.insert(id, tx);
        let _waiting = Waiting(self, id);
        let message = make(Asking { id, from: self.tag.clone(), sid: sid.to_string() });
        // Nobody on the owner's channel: no instance holds the session (any more).
        let listeners = match bus.relay(&to, &message).await {
            Ok(n @ 1..) => n,
            Ok(_) => {
                if self.absent.len() >= MAX_ABSENT {
                    self.absent.clear();
                }
                self.absent.insert(to, tokio::time::Instant::now());
                return None;
            }
            Err(_) => return None,
        };
        let deadline = tokio::time::Instant::now() + wait;
        // Two instances with one tag (rare, 24 bits): the one without the session says it
        // does not know it; the other's answer is the one to wait for.
        let mut last = None;
        for _ in 0..listeners {
            let answer = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
            if !is_unknown_session(&answer) {
                return Some(answer);
            }
            last = Some(answer);
        }
        last
    }
}

/// Engine.IO's "Session ID unknown" answer.
fn is_unknown_session(answer: &ForwardedResponse) -> bool {
    answer.status == 400 && answer.body.starts_with(br#"{"code":1,"#)
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source");
    u64::from_le_bytes(bytes)
}
