//! What instances sharing sessions send each other, and the layer above's [`Forwarder`] that
//! carries it: long-polling requests for a session another instance holds (`forward`), and the
//! steps of moving a session to the instance its WebSocket upgrade reached (`moving`).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::sid::Sid;

/// A long-polling request for another instance's session: a poll (GET) or a POST's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedRequest {
    pub sid: Sid,
    pub post: bool,
    pub content_type: Option<Box<str>>,
    pub body: Bytes,
}

/// The answer of the instance holding the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

/// Carries requests to the instance their session id names (the layer above's transport
/// between instances).
pub trait Forwarder: Send + Sync + 'static {
    /// The answer of the instance holding `request.sid`; `None` when none answered in time
    /// (no instance holds it, or its instance is gone): the session is unknown.
    fn forward(&self, request: ForwardedRequest) -> Pin<Box<dyn Future<Output = Option<ForwardedResponse>> + Send>>;

    /// Asks the instance holding `sid` for a step of moving the session here (see `moving`);
    /// its answer, or `None` as for [`Forwarder::forward`].
    fn move_step(&self, sid: Sid, step: MoveStep) -> Pin<Box<dyn Future<Output = Option<ForwardedResponse>> + Send>>;
}

/// A step of a move, as the instance holding the session answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveStep {
    Probe,
    Take,
    Release,
}
