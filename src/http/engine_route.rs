//! Socket.IO requests that reach hyper: on a connection whose first request was for another
//! path (a browser reusing the connection that loaded the demo page, say). They are handed to
//! the transport as its own front would; a WebSocket upgrade takes the raw connection back
//! from hyper.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::stall::WriteDeadline;
use socketio::engine::front::{Method, Reply, Request as EngineRequest, wanted};
use socketio::{Handoff, Mount};

/// The connection type hyper serves (see `serve.rs`), which an upgrade hands back.
pub(super) type Served = TokioIo<WriteDeadline<Handoff>>;

pub fn router<S: Clone + Send + Sync + 'static>(mount: Arc<dyn Mount>) -> Router<S> {
    let path = mount.path().to_owned();
    Router::new().route(&path, any(handle)).with_state(mount)
}

async fn handle(State(mount): State<Arc<dyn Mount>>, request: Request<Body>) -> Response {
    let (mut parts, body) = request.into_parts();
    let wanted_headers = mount.headers_wanted();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| wanted(name.as_str(), wanted_headers))
        .filter_map(|(name, value)| Some((name.as_str().into(), value.to_str().ok()?.into())))
        .collect();
    let request = EngineRequest {
        method: match parts.method {
            http::Method::GET => Method::Get,
            http::Method::POST => Method::Post,
            http::Method::OPTIONS => Method::Options,
            _ => Method::Other,
        },
        path: parts.uri.path().into(),
        query: parts.uri.query().unwrap_or_default().into(),
        headers,
        keep_alive: true,
    };
    let Ok(body) = axum::body::to_bytes(body, mount.max_payload()).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    match mount.handle(request, body).await {
        Reply::Response(r) => {
            let mut response = Response::new(Body::from(r.body));
            *response.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
            for (name, value) in r.headers {
                // hyper's connections get CORS from the router's layer.
                if name.starts_with("Access-Control-") || name == "Vary" {
                    continue;
                }
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().append(name, value);
                }
            }
            response
        }
        Reply::Upgrade { accept, upgrade } => {
            let extensions = upgrade.extensions();
            let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
                return StatusCode::BAD_REQUEST.into_response();
            };
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else { return };
                match upgraded.downcast::<Served>() {
                    Ok(parts) => {
                        let (stream, prefix) = parts.io.into_inner().into_inner().into_parts();
                        let leftover = if prefix.is_empty() {
                            Bytes::copy_from_slice(&parts.read_buf)
                        } else {
                            [prefix, parts.read_buf].concat().into()
                        };
                        mount.accept_websocket(upgrade, stream, leftover);
                    }
                    Err(_) => debug!("An upgraded connection was not herald's own stream; closed."),
                }
            });
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = response.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Ok(accept) = HeaderValue::from_str(&accept) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            }
            if let Some(extensions) = extensions {
                h.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(extensions));
            }
            response
        }
    }
}
