//! `POST /api/presence`: which of up to `api.max_users_per_request` users are online, that is
//! have a socket on some instance, and on how many instances. The same API key and rate limit
//! as the publish API; one Redis round trip per request, never one per user.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::publish::{PublishApi, error};
use crate::auth::user_id_from_json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceRequest {
    user_ids: Vec<Value>,
}

pub async fn presence(State(api): State<Arc<PublishApi>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refusal) = api.refused(&headers) {
        return refusal;
    }
    let request: PresenceRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid body: {e}")),
    };
    if request.user_ids.is_empty() || request.user_ids.len() > api.max_users() {
        return error(StatusCode::BAD_REQUEST, &format!("give 1 to {} `user_ids`", api.max_users()));
    }
    let Some(users) = request.user_ids.iter().map(user_id_from_json).collect::<Option<Vec<String>>>() else {
        return error(StatusCode::BAD_REQUEST, "user ids must be non-empty strings or integers");
    };
    match api.bus().presence(&users).await {
        Ok(counts) => {
            let online = counts.iter().filter(|n| **n > 0).count();
            let by_user: Map<String, Value> =
                users.into_iter().zip(counts).map(|(u, n)| (u, json!({"online": n > 0, "instances": n}))).collect();
            (StatusCode::OK, Json(json!({"users": by_user, "online": online}))).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
