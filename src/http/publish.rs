//! `POST /api/publish`: push a notification by hand or from another service, through the same
//! bus as Kafka records. Disabled unless `api.key` is set; the key is compared in constant time;
//! requests are rate-limited.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::auth::user_id_from_json;
use crate::bus::Bus;
use crate::clock::{unix_ms, unix_us};
use crate::config::ApiConfig;
use crate::notification::{Audience, Notification};
use crate::telemetry::TraceContext;

pub struct PublishApi {
    key_digest: [u8; 32],
    bus: Arc<Bus>,
    default_event: Arc<str>,
    max_users: usize,
    bucket: Mutex<TokenBucket>,
    /// How long a revocation by `POST /api/disconnect` lasts (`auth.revocation_ttl_secs`).
    revocation_ttl: std::time::Duration,
}

/// The request body: one of `user_id`, `user_ids`, `groups` and `broadcast: true`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    user_id: Option<Value>,
    user_ids: Option<Vec<Value>>,
    groups: Option<Vec<Value>>,
    #[serde(default)]
    broadcast: bool,
    event: Option<String>,
    payload: Box<RawValue>,
    #[serde(default)]
    retain: bool,
}

impl PublishApi {
    pub fn new(config: &ApiConfig, key: &str, bus: Arc<Bus>, default_event: &str, revocation_ttl: std::time::Duration) -> Self {
        Self {
            revocation_ttl,
            key_digest: Sha256::digest(key.as_bytes()).into(),
            bus,
            default_event: default_event.into(),
            max_users: config.max_users_per_request,
            bucket: Mutex::new(TokenBucket::new(config.rate_limit_per_sec)),
        }
    }

    /// The API key, the rate limit and the JSON body, for every API route: the request, or the
    /// response to send instead.
    pub(super) fn request<T: serde::de::DeserializeOwned>(&self, headers: &HeaderMap, body: &[u8]) -> Result<T, Box<Response>> {
        let refuse = |status, message: &str| Box::new(error(status, message));
        if !self.authorized(headers) {
            return Err(refuse(StatusCode::UNAUTHORIZED, "missing or wrong API key"));
        }
        if !self.bucket.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(refuse(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded"));
        }
        serde_json::from_slice(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")))
    }

    pub(super) fn bus(&self) -> &Bus {
        &self.bus
    }

    pub(super) fn max_users(&self) -> usize {
        self.max_users
    }

    pub(super) fn revocation_ttl(&self) -> std::time::Duration {
        self.revocation_ttl
    }

    /// Compares digests so the time taken says nothing about how much of the key matched.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|h| h.to_str().ok()));
        let Some(presented) = presented else { return false };
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        digest.iter().zip(self.key_digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

pub async fn publish(State(api): State<Arc<PublishApi>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let request: PublishRequest = match api.request(&headers, &body) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let audiences = match (request.user_id, request.user_ids, request.groups, request.broadcast) {
        (Some(one), None, None, false) => names(vec![one], api.max_users, "user ids").map(|u| u.into_iter().map(Audience::User).collect()),
        (None, Some(many), None, false) if !many.is_empty() => {
            names(many, api.max_users, "user ids").map(|u| u.into_iter().map(Audience::User).collect())
        }
        (None, None, Some(groups), false) if !groups.is_empty() => names(groups, api.max_users, "groups").map(Audience::groups),
        (None, None, None, true) => Ok(vec![Audience::Broadcast]),
        _ => Err("give exactly one of `user_id`, a non-empty `user_ids`, a non-empty `groups` or `broadcast: true`".to_owned()),
    };
    let audiences = match audiences {
        Ok(a) => a,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if request.retain && audiences.iter().any(|a| a.user().is_none()) {
        return error(StatusCode::BAD_REQUEST, "`retain` is for users' notifications: groups and broadcasts are live only");
    }
    let event: Arc<str> = match request.event {
        Some(e) if e.is_empty() => return error(StatusCode::BAD_REQUEST, "`event` must not be empty"),
        Some(e) => e.into(),
        None => api.default_event.clone(),
    };
    let timestamp_ms = unix_ms();
    let consumed_us = unix_us();
    // The caller's trace continues to the clients, as a Kafka record's does.
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = header("traceparent").and_then(|tp| TraceContext::parse(tp, header("tracestate"))).map(Arc::new);
    let batch: Vec<Notification> = audiences
        .into_iter()
        .map(|to| Notification {
            to,
            event: event.clone(),
            payload: request.payload.clone(),
            timestamp_ms,
            consumed_us,
            retain: request.retain,
            origin: None,
            trace: trace.clone(),
        })
        .collect();
    match api.bus.publish(&batch).await {
        Ok(published) => {
            let delivered = published.iter().filter(|p| p.receivers > 0).count();
            let stored = published.iter().filter(|p| p.stored.is_some()).count();
            (StatusCode::OK, Json(json!({"published": batch.len(), "online": delivered, "stored": stored}))).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// User ids or group names from a request: at most `max`, each a non-empty string or an integer.
pub(super) fn names(raw: Vec<Value>, max: usize, what: &str) -> Result<Vec<String>, String> {
    if raw.len() > max {
        return Err(format!("at most {max} {what} per request"));
    }
    raw.iter()
        .map(user_id_from_json)
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| format!("{what} must be non-empty strings or integers"))
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Allows `rate` requests per second on average, in bursts of up to `rate`.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        Self { rate: f64::from(rate), tokens: f64::from(rate), last: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_bursts_up_to_the_rate() {
        let mut b = TokenBucket::new(3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
    }
}
