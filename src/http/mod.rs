//! The HTTP surface: `/healthz`, `/readyz`, `/metrics`, the API (`POST /api/publish`,
//! `POST /api/presence`, `POST /api/disconnect`, with their OpenAPI description at `/api/openapi.yaml`) and the demo page. Socket.IO requests
//! are served by the transport's own front ([`serve`]); those that reach hyper on a connection
//! it already serves are passed to the transport by [`engine_route`].

mod deadline;
pub mod demo;
mod disconnect;
mod engine_route;
mod presence;
pub mod publish;
mod serve;
mod stall;

pub use serve::serve;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::bus::Bus;
use crate::gateway;
use crate::metrics::Metrics;
use crate::source::kafka::KafkaHealth;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub kafka: Arc<KafkaHealth>,
    pub bus: Arc<Bus>,
    pub gateway: gateway::Server,
    /// Fired when the instance starts shutting down: from then on it is not ready.
    pub draining: tokio_util::sync::CancellationToken,
}

/// The OpenAPI description of the publish API.
const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

/// The router without Socket.IO, so tests can call it directly; the app adds the layer.
/// `publish` is `None` when no API key is configured, `demo` when the demo page is off: their
/// routes do not exist then.
pub fn router(state: HttpState, publish: Option<Arc<publish::PublishApi>>, demo: Option<Arc<demo::DemoPage>>) -> Router {
    let mount = state.gateway.mount();
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(engine_route::router(state.gateway.mount()))
        .with_state(state);
    if let Some(api) = publish {
        let api_routes = Router::new()
            .route("/api/publish", post(publish::publish).with_state(api.clone()))
            .route("/api/presence", post(presence::presence).with_state(api.clone()))
            .route("/api/disconnect", post(disconnect::disconnect).with_state(api))
            .route("/api/openapi.yaml", get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }))
            .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
            .layer(axum::middleware::from_fn(move |request, next| refuse_oversized(mount.clone(), request, next)));
        router = router.merge(api_routes);
    }
    if let Some(demo) = demo {
        router = router.merge(demo.routes());
    }
    router
}

/// The largest body the API reads.
const API_BODY_LIMIT: usize = 1 << 20;

/// A body declared larger than the API reads is refused from the head, before any of it is
/// read (axum's own limit would wait for the body first).
async fn refuse_oversized(
    mount: Arc<dyn socketio::Mount>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > API_BODY_LIMIT as u64) {
        mount.stats().cut(socketio::Cutoff::AnsweredFromHead);
        return (StatusCode::PAYLOAD_TOO_LARGE, [(header::CONNECTION, "close")], "request body too large\n").into_response();
    }
    next.run(request).await
}

/// CORS for long-polling from browsers on other origins: the listed origins, or any origin
/// when none is listed (tokens, not cookies, authenticate, so a wildcard leaks nothing).
pub fn cors(allowed_origins: &[String]) -> CorsLayer {
    let origins = if allowed_origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(allowed_origins.iter().filter_map(|o| o.parse::<HeaderValue>().ok()))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

/// Ready when Kafka answers, the bus is connected and the instance is not shutting down: a load
/// balancer should not send sockets to an instance that cannot deliver to them, or that is
/// about to close them.
async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let (kafka, bus, draining) = (s.kafka.is_connected(), s.bus.is_ready(), s.draining.is_cancelled());
    let ready = kafka && bus && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({ "ready": ready, "kafka": kafka, "bus": bus, "draining": draining });
    // Why, when something is wrong: what an operator reads first.
    let problems: Vec<String> = s.bus.problems().into_iter().map(|p| format!("redis {p}")).chain(s.kafka.problem()).collect();
    if !problems.is_empty() {
        body["problems"] = json!(problems);
    }
    (status, Json(body))
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    s.metrics.observe_transport(s.gateway.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
