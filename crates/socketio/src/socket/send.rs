//! What the server sends a socket: events (encoded once for all their recipients), acks, and
//! the DISCONNECT that ends it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{AckSender, CONNECTED, CONNECTING, DisconnectReason, GONE, Handler, Socket, connect_error, lock};
use crate::engine::{CloseReason, Frame, SendError};
use crate::packet::{self, Kind};

impl<H: Handler> Socket<H> {
    /// Sends a packet encoded once for many sockets ([`event_frame`]); it must be for this
    /// socket's namespace.
    pub fn send(&self, frame: &Frame) -> Result<(), SendError> {
        match self.state.load(Ordering::Acquire) {
            CONNECTED => self.session.send(frame),
            GONE => Err(SendError::Closed),
            _ => self.send_early(std::slice::from_ref(frame)),
        }
    }

    fn send_all(&self, frames: &[Frame]) -> Result<(), SendError> {
        match self.state.load(Ordering::Acquire) {
            CONNECTED => frames.iter().try_for_each(|f| self.session.send(f)),
            GONE => Err(SendError::Closed),
            _ => self.send_early(frames),
        }
    }

    /// Holds frames until the CONNECT reply is out (re-checked under the lock the connect
    /// takes to send them).
    fn send_early(&self, frames: &[Frame]) -> Result<(), SendError> {
        let mut early = lock(&self.early);
        match self.state.load(Ordering::Acquire) {
            CONNECTED => {
                drop(early);
                frames.iter().try_for_each(|f| self.session.send(f))
            }
            GONE => Err(SendError::Closed),
            _ if early.len() + frames.len() > self.session.max_queue() => Err(SendError::Full),
            _ => {
                early.extend_from_slice(frames);
                Ok(())
            }
        }
    }

    /// Emits `event` with `args` (JSON values).
    pub fn emit(&self, event: &str, args: &[&RawValue]) -> Result<(), SendError> {
        self.send(&event_frame(&self.namespace, event, args))
    }

    /// Emits `event` whose `args` hold `{"_placeholder":true,"num":i}` for each attachment.
    pub fn emit_binary(&self, event: &str, args: &[&RawValue], attachments: &[Bytes]) -> Result<(), SendError> {
        let mut json = Vec::new();
        packet::write_event_array(&mut json, event, args);
        self.send_all(&binary_frames(Kind::BinaryEvent, &self.namespace, None, &json, attachments))
    }

    /// Leaves the namespace from the server side: the client gets DISCONNECT (it will not
    /// reconnect on its own), the application [`Handler::disconnected`]. The last socket of
    /// a session takes the session with it. A socket still connecting gets CONNECT_ERROR
    /// `disconnected` instead, and its connect ends as if the session had closed.
    pub fn disconnect(self: &Arc<Self>) {
        match self.state.compare_exchange(CONNECTED, GONE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(CONNECTING) => {
                if self.state.compare_exchange(CONNECTING, GONE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    self.session.state().remove(self);
                    let _ = self.session.send_control_frame(&connect_error(&self.namespace, "disconnected"));
                }
                return;
            }
            Err(_) => return,
        }
        let frame = Frame::text(|b| {
            b.push(b'4');
            packet::write(b, Kind::Disconnect, 0, &self.namespace, None, b"");
        });
        // Owed even to a client whose queue is full, so it knows not to reconnect.
        let _ = self.session.send_control_frame(&frame);
        let left = self.session.state().remove(self);
        self.session.with_handler(|layer| layer.handler.disconnected(self, DisconnectReason::ServerDisconnect));
        if left == 0 {
            self.session.close(CloseReason::ServerClose);
        }
    }
}

/// An event as one packet for every socket of `namespace` it goes to.
pub fn event_frame(namespace: &str, event: &str, args: &[&RawValue]) -> Frame {
    Frame::text(|b| {
        b.push(b'4');
        packet::write(b, Kind::Event, 0, namespace, None, b"");
        packet::write_event_array(b, event, args);
    })
}

/// A binary event or ack: its text packet, then one binary message per attachment.
fn binary_frames(kind: Kind, namespace: &str, id: Option<i64>, json: &[u8], attachments: &[Bytes]) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(attachments.len() + 1);
    frames.push(Frame::text(|b| {
        b.push(b'4');
        packet::write(b, kind, attachments.len(), namespace, id, json);
    }));
    frames.extend(attachments.iter().map(|a| Frame::binary(a)));
    frames
}

impl<H: Handler> AckSender<H> {
    pub fn send(self, args: &[&RawValue]) -> Result<(), SendError> {
        let frame = Frame::text(|b| {
            b.push(b'4');
            packet::write(b, Kind::Ack, 0, &self.socket.namespace, Some(self.id), b"");
            packet::write_array(b, args);
        });
        self.socket.send(&frame)
    }

    /// An ack whose `args` hold a placeholder for each attachment.
    pub fn send_binary(self, args: &[&RawValue], attachments: &[Bytes]) -> Result<(), SendError> {
        let mut json = Vec::new();
        packet::write_array(&mut json, args);
        self.socket.send_all(&binary_frames(Kind::BinaryAck, &self.socket.namespace, Some(self.id), &json, attachments))
    }
}
