//! The demo page at `/demo/`: a socket.io-client page that shows notifications live, for trying
//! herald in a browser. The client bundle comes from npm (`npm ci --prefix demo`), not from us.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::json;
use tracing::warn;

use crate::config::Config;

const PAGE: &str = include_str!("../../demo/index.html");
const SCRIPT: &str = include_str!("../../demo/demo.js");
/// Inline styles only; scripts and sockets from this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'";

/// The page with its settings filled in, and the client bundle read once at start-up.
pub struct DemoPage {
    html: Bytes,
    /// `None` when the bundle is not installed: the page then says how to install it.
    client_bundle: Option<Bytes>,
}

impl DemoPage {
    /// `None` when the demo is off. A bundle that cannot be read is only a warning here: when
    /// the demo is enabled explicitly, config validation has already refused a missing one.
    pub fn load(config: &Config) -> Option<Arc<Self>> {
        config.demo.enabled?;
        let path = config.resolve(&config.demo.client_bundle);
        let client_bundle = match std::fs::read(&path) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "No socket.io-client bundle for the demo page: run `npm ci --prefix demo`.");
                None
            }
        };
        let produce_example =
            config.is_embedded().then(|| r#"herald produce '{"userId":"u42","type":"hello","body":{"text":"Hi"}}'"#.to_string());
        let settings = json!({
            "event": config.server.event,
            "expiredEvent": config.auth.expired_event,
            "produceExample": produce_example,
        });
        // JSON inside <script>: escape `<` so no value can close the element.
        let settings = settings.to_string().replace('<', "\\u003c");
        Some(Arc::new(Self { html: Bytes::from(PAGE.replace("{{SETTINGS}}", &settings)), client_bundle }))
    }

    pub fn routes(self: Arc<Self>) -> Router {
        let page = self.clone();
        let bundle = self;
        Router::new()
            .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
            .route("/demo/", get(move || async move { respond("text/html; charset=utf-8", page.html.clone()) }))
            .route("/demo/demo.js", get(|| async { respond("text/javascript; charset=utf-8", Bytes::from_static(SCRIPT.as_bytes())) }))
            .route(
                "/demo/socket.io.min.js",
                get(move || async move {
                    match &bundle.client_bundle {
                        Some(js) => respond("text/javascript; charset=utf-8", js.clone()),
                        None => (StatusCode::NOT_FOUND, "socket.io-client is not installed: npm ci --prefix demo\n").into_response(),
                    }
                }),
            )
    }
}

fn respond(content_type: &'static str, body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
