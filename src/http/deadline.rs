//! A deadline on a whole request body for the requests hyper serves (API, metrics, demo page):
//! the body must have arrived `limit` after it was first read, however steadily it trickles.
//! tower-http's `TimeoutBody` restarts its timer at every frame, so a client sending a byte a
//! second would keep a connection, and up to the body limit of buffer, for as long as it likes.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use socketio::{Cutoff, Mount};

pub struct BodyDeadline<B> {
    inner: B,
    limit: Duration,
    /// Set at the first read: the body's time starts when a handler asks for it.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Where a body cut off is counted (`herald_http_requests_cut_total{reason="body_timeout"}`).
    counted_by: Option<Arc<dyn Mount>>,
}

impl<B> BodyDeadline<B> {
    pub fn new(inner: B, limit: Duration, counted_by: Option<Arc<dyn Mount>>) -> Self {
        Self { inner, limit, deadline: None, counted_by }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct TooSlow(Duration);

impl<B> Body for BodyDeadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let limit = this.limit;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                if let Some(mount) = this.counted_by.take() {
                    mount.stats().cut(Cutoff::BodyTimeout);
                }
                Poll::Ready(Some(Err(Box::new(TooSlow(limit)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
