//! The accept loop: each connection is served by the Socket.IO transport's own front while its
//! requests are for the transport's path, and by hyper (the router) from the first request for
//! another path on, with a deadline for its request headers and for its whole request body. It
//! does not know what the routes do.
//!
//! `axum::serve` sets no timer on hyper, so hyper's header read timeout is off there: a client
//! that connects and sends nothing, or half a request, holds its connection and a task forever.
//! Nor does anything bound a body that arrives slowly ([`super::deadline`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use super::deadline::BodyDeadline;
use super::stall::WriteDeadline;
use socketio::{self, Mount, Served};

/// Serves `app` and the transport's `mounts` on `listener` until `stop` fires. A connection
/// whose request headers have not all arrived `timeout` after it started waiting for them is
/// closed, and so is one whose request body has not all arrived `timeout` after it was first
/// read, and one whose client
/// accepts no data for `write_timeout` while herald has some to send. On `stop`, open hyper
/// connections finish their request in flight and close.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    mounts: Vec<Arc<dyn Mount>>,
    timeout: Duration,
    write_timeout: Duration,
    write_timeouts: metrics::Counter,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let mounts: Arc<[Arc<dyn Mount>]> = mounts.into();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, mounts, stop, write_timeouts) = (app.clone(), mounts.clone(), stop.clone(), write_timeouts.clone());
        tokio::spawn(async move {
            let Served::Handoff(handoff) = socketio::serve(stream, &mounts).await else { return };
            // Boxed: hyper's connection is large, and most connections never need it.
            let stream = WriteDeadline::new(handoff, write_timeout, write_timeouts);
            let counted_by = mounts.first().cloned();
            Box::pin(serve_with_hyper(stream, app, timeout, counted_by, stop, peer)).await;
        });
    }
}

/// Serves a connection the transport's front handed on, with hyper and the router.
async fn serve_with_hyper(
    stream: WriteDeadline<socketio::Handoff>,
    app: Router,
    timeout: Duration,
    counted_by: Option<Arc<dyn Mount>>,
    stop: CancellationToken,
    peer: std::net::SocketAddr,
) {
    let service = TowerToHyperService::new(
        app.map_request(move |r: Request<Incoming>| r.map(|body| Body::new(BodyDeadline::new(body, timeout, counted_by.clone())))),
    );
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "Connection ended with an error.");
    }
}
