//! Moving a session to the instance its WebSocket upgrade reached, so that no instance relays a
//! WebSocket's bytes and no load balancer needs affinity. The upgrade keeps Engine.IO's own
//! order: the client probes the new connection (`2probe`), pauses polling, then upgrades (`5`).
//! Each step is asked of the instance holding the session through the [`Forwarder`]:
//!
//! 1. `probe`, on the client's `2probe`: the holder checks the session may move (polling, not
//!    probed already, the layer above agrees), ends its waiting poll and holds it for the move;
//!    then the new instance answers `3probe`.
//! 2. `take`, on the client's `5`: the holder exports the layer above's state; the new instance
//!    makes the session its own (the layer above subscribes to what it needs), queued frames
//!    waiting.
//! 3. `release`: the holder cuts the layer above's input (everything sent before the cut is in
//!    its queue, everything after reaches the new instance), hands over its queue and forgets
//!    the session without closing it. The new instance sends that queue first, then its own.
//!
//! A step that fails ends the session on both sides, as a lost connection would: the client
//! reconnects (and replays what it missed).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Engine;
use super::packet::{self, SEPARATOR};
use super::peer::{ForwardedResponse, MoveStep};
use super::session::{CloseReason, Frame, Handler, NOOP, Session, Shared, Transport};
use super::sid::Sid;

/// A session taken but not released by then is closed (the new instance gave up on it).
const RELEASE_WITHIN: Duration = Duration::from_secs(20);

fn answer(status: u16, body: impl Into<Bytes>) -> Option<ForwardedResponse> {
    Some(ForwardedResponse { status, content_type: "text/plain".into(), body: body.into() })
}

impl<H: Handler> Engine<H> {
    /// Answers a step of moving one of this instance's sessions to the instance asking:
    /// 200 (with the state, or the queued packets), 409 when it cannot move, or Engine.IO's
    /// unknown-session error. `None`: the session id names another instance.
    pub async fn answer_move(&self, sid: Sid, step: MoveStep) -> Option<ForwardedResponse> {
        if Some(*sid.tag()) != self.shared.options.instance_tag {
            return None;
        }
        let shared = &self.shared;
        let Some(session) = shared.sessions.get(&sid).map(|s| s.value().clone()) else {
            return answer(400, r#"{"code":1,"message":"Session ID unknown"}"#);
        };
        let done = match step {
            MoveStep::Probe => probe(shared, &session).then(Bytes::new),
            MoveStep::Take => take(shared, &session).await.map(Bytes::from),
            MoveStep::Release => release(shared, &session).await.map(Bytes::from),
        };
        match done {
            Some(body) => answer(200, body),
            None => answer(409, "the session cannot move now"),
        }
    }
}

/// Holds the session for a move if it may move: its waiting poll ends, no other probe starts.
/// (A client probes as soon as its session is open, often before it joined the layer above:
/// that layer's export waits for what is under way.)
fn probe<H: Handler>(shared: &Arc<Shared<H>>, session: &Arc<Session<H>>) -> bool {
    if !shared.handler.movable(session) {
        return false;
    }
    {
        let mut out = session.lock();
        if out.transport != Transport::Polling || out.probing || out.closing.is_some() {
            return false;
        }
        out.probing = true;
        out.transport = Transport::Upgrading;
    }
    // A waiting poll returns, so the client can pause its polling transport.
    let _ = session.send_control(&NOOP);
    // Not taken in time (the client gave up the upgrade): the session polls on here.
    let (session, timeout) = (session.clone(), shared.options.upgrade_timeout);
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let mut out = session.lock();
        if out.probing && !out.moving {
            out.probing = false;
            if out.transport == Transport::Upgrading {
                out.transport = Transport::Polling;
            }
        }
    });
    true
}

/// The layer above's state, once the client has paused polling (it sent its upgrade).
async fn take<H: Handler>(shared: &Arc<Shared<H>>, session: &Arc<Session<H>>) -> Option<String> {
    {
        let mut out = session.lock();
        if !out.probing || out.moving || out.transport != Transport::Upgrading || out.closing.is_some() {
            return None;
        }
        out.moving = true;
    }
    let Some(state) = shared.handler.export(session).await else {
        failed(shared, session);
        return None;
    };
    let session = session.clone();
    tokio::spawn(async move {
        tokio::time::sleep(RELEASE_WITHIN).await;
        if !session.is_closed() {
            if let Some(engine) = session.engine.upgrade() {
                engine.stats.move_failed();
            }
            session.close(CloseReason::TransportClose);
        }
    });
    Some(state)
}

/// Cuts the session's input, then forgets it: what it had queued, as a long-polling payload.
async fn release<H: Handler>(shared: &Arc<Shared<H>>, session: &Arc<Session<H>>) -> Option<Vec<u8>> {
    if !session.lock().moving || session.is_closed() {
        return None;
    }
    if !shared.handler.cut(session).await {
        failed(shared, session);
        return None;
    }
    let queued = session.detach()?;
    shared.handler.departed(session);
    shared.stats.moved_out();
    Some(queued)
}

fn failed<H: Handler>(shared: &Shared<H>, session: &Arc<Session<H>>) {
    shared.stats.move_failed();
    session.close(CloseReason::TransportClose);
}

/// On the instance the upgrade reached: asks the holder for `step`; its answer's body, or
/// `None` (logged) when it did not answer 200.
async fn ask<H: Handler>(shared: &Shared<H>, sid: Sid, step: MoveStep) -> Option<Bytes> {
    let forwarder = shared.forwarder.get()?.clone();
    let answer = forwarder.move_step(sid, step).await;
    if answer.as_ref().is_none_or(|r| r.status != 200) {
        tracing::debug!(%sid, ?step, status = answer.as_ref().map(|r| r.status), "A step of moving a session here failed; its upgrade fails.");
    }
    answer.filter(|r| r.status == 200).map(|r| r.body)
}

/// On the instance the upgrade reached: asks the holder to hold the session for a move.
pub(super) async fn ask_probe<H: Handler>(shared: &Shared<H>, sid: Sid) -> bool {
    ask(shared, sid, MoveStep::Probe).await.is_some()
}

/// On the instance the upgrade reached: makes the session this instance's, with what its
/// holder had queued first. `false`: the caller closes it.
pub(super) async fn take_over<H: Handler>(shared: &Arc<Shared<H>>, session: &Arc<Session<H>>) -> bool {
    let Some(state) = ask(shared, session.sid, MoveStep::Take).await.and_then(|b| String::from_utf8(b.to_vec()).ok()) else { return false };
    // In the table and the heartbeat from now on: sends to it queue until its WebSocket takes
    // over (it is still "probing").
    match shared.sessions.entry(session.sid) {
        dashmap::Entry::Occupied(_) => return false,
        dashmap::Entry::Vacant(v) => {
            v.insert(session.clone());
        }
    }
    shared.wheel.opened(session);
    if !shared.handler.import(session, state).await {
        return false;
    }
    let Some(queued) = ask(shared, session.sid, MoveStep::Release).await else { return false };
    let Some(frames) = frames_of(&queued) else { return false };
    session.queue_first(frames);
    true
}

/// The frames of a long-polling payload (as [`Session::detach`] makes it).
fn frames_of(payload: &[u8]) -> Option<Vec<Frame>> {
    if payload.is_empty() {
        return Some(Vec::new());
    }
    let packets = packet::parse_payload(payload).ok()?;
    let parts = payload.split(|b| *b == SEPARATOR);
    Some(
        packets
            .into_iter()
            .zip(parts)
            .map(|(packet, part)| match packet {
                packet::Packet::Binary(data) => Frame::binary(&data),
                _ => Frame::text(|b| b.extend_from_slice(part)),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_packets_come_back_as_the_frames_they_were() {
        let frames = [Frame::text(|b| b.extend_from_slice(b"42[\"n\",1]")), Frame::binary(&[0, 1, 255]), Frame::text(|b| b.push(b'2'))];
        let back = frames_of(&super::super::outbox::polling_payload(&frames)).unwrap();
        assert_eq!(back.iter().map(|f| f.ws().to_vec()).collect::<Vec<_>>(), frames.iter().map(|f| f.ws().to_vec()).collect::<Vec<_>>());
        assert_eq!(frames_of(b"").unwrap().len(), 0);
        assert!(frames_of(b"9nope").is_none(), "a bad payload is refused whole");
    }
}
