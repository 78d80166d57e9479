//! Gives up on a client that stopped reading: a write to its connection that makes no progress
//! for a set time fails, so the connection's task ends and its socket is cleaned up.
//!
//! Without this a WebSocket whose client stopped reading blocks its writer forever once the
//! kernel buffers are full: the Engine.IO heartbeat marks the socket dead, but the connection,
//! its task and its buffers stay until TCP itself gives up, which can take hours.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Counts the connections given up on.
    expired: Counter,
    /// Armed when a write first finds no room, cleared by any progress: taken only while stalled.
    stalled: Option<Pin<Box<Sleep>>>,
    /// The deadline passed: the connection is cut and every further call fails.
    cut: bool,
}

/// Ends a connection in both directions at once.
pub trait Cut {
    fn cut(&self);
}

impl Cut for tokio::net::TcpStream {
    /// A shutdown of the socket itself: the task reading it sees the end of the stream now,
    /// instead of waiting for a client that will send nothing.
    fn cut(&self) {
        // shutdown(2), which unlike dropping the stream does not close the descriptor under
        // the task still holding it.
        let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both);
    }
}

impl Cut for socketio::Handoff {
    fn cut(&self) {
        self.stream().cut();
    }
}

impl<S> WriteDeadline<S> {
    /// The stream it guards.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Cut> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration, expired: Counter) -> Self {
        Self { inner, limit, expired, stalled: None, cut: false }
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, format!("the client accepted no data for {:?}", self.limit))
    }

    /// Passes on a ready write result (progress: the deadline is disarmed), or, while the write
    /// is pending, fails it once the deadline has passed and cuts the connection.
    fn guard<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let deadline = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(deadline.as_mut().poll(cx));
        self.stalled = None;
        self.cut = true;
        self.inner.cut();
        self.expired.increment(1);
        Poll::Ready(Err(self.timed_out()))
    }
}

impl<S: AsyncRead + Cut + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.cut {
            return Poll::Ready(Err(self.timed_out()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Cut + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.cut {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, polled)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.cut {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut {
            return Poll::Ready(Err(self.timed_out()));
        }
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut {
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    impl Cut for DuplexStream {
        fn cut(&self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_limit() {
        // A 64-byte pipe whose other end is never read.
        let (client, _unread) = tokio::io::duplex(64);
        let mut guarded = WriteDeadline::new(client, Duration::from_secs(30), Counter::noop());
        guarded.write_all(&[0; 64]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = guarded.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(guarded.read(&mut [0; 8]).await.unwrap_err().kind(), io::ErrorKind::TimedOut, "reads end too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_up_is_not_cut() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut guarded = WriteDeadline::new(client, Duration::from_secs(30), Counter::noop());
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let mut buf = [0; 64];
            // Reads 64 bytes every 20 s: each stall is shorter than the limit, together longer.
            while sink.len() < 64 * 5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let n = server.read(&mut buf).await.unwrap();
                sink.extend_from_slice(&buf[..n]);
            }
            sink.len()
        });
        guarded.write_all(&[1; 64 * 5]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 64 * 5);
    }
}
