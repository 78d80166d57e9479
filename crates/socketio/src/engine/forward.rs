//! Sessions shared by several instances behind a load balancer without affinity: a long-polling
//! request for a session another instance holds (its id starts with that instance's tag) is
//! carried there by the layer above's [`Forwarder`] and answered there as a local request, with
//! the same checks, ordering and limits; the answer comes back to the client unchanged. A
//! WebSocket upgrade is not forwarded: the session moves to the instance it reached (`moving`).

use bytes::Bytes;

use super::Engine;
use super::front::{Method, Request, Response};
use super::peer::{ForwardedRequest, Forwarder};
use super::session::Handler;
use super::sid::Sid;

/// The content types of the engine's own polling answers.
const CONTENT_TYPES: [&str; 4] = [super::polling::TEXT, "text/html", "text/plain", "application/json"];

impl<H: Handler> Engine<H> {
    /// Where this engine's requests for other instances' sessions go; set once.
    pub fn set_forwarder(&self, forwarder: std::sync::Arc<dyn Forwarder>) {
        let _ = self.shared.forwarder.set(forwarder);
    }

    /// Whether a request for `sid`, unknown here, is another instance's to answer.
    pub(super) fn forwardable(&self, sid: &str) -> Option<Sid> {
        let own = self.shared.options.instance_tag?;
        self.shared.forwarder.get()?;
        Sid::parse(sid).filter(|sid| *sid.tag() != own)
    }

    /// Sends a polling request to the instance holding its session; its answer, or `None`.
    pub(super) async fn forward(&self, sid: Sid, request: &Request, body: Bytes) -> Option<Response> {
        let forwarder = self.shared.forwarder.get()?.clone();
        let post = match request.method {
            Method::Get => false,
            Method::Post => true,
            _ => return None,
        };
        let content_type = request.header("content-type").map(Box::from);
        self.shared.stats.forwarded_out();
        let answer = forwarder.forward(ForwardedRequest { sid, post, content_type, body }).await?;
        // What came over the network is not written into the response as it is: only the
        // statuses and content types this engine answers with.
        let status = if matches!(answer.status, 200 | 400 | 403 | 503) { answer.status } else { 502 };
        let content_type = CONTENT_TYPES.iter().find(|t| **t == answer.content_type).copied().unwrap_or("text/plain");
        Some(Response::new(status, content_type, answer.body))
    }
}
