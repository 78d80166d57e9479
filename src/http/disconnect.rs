//! `POST /api/disconnect`: ends every session of up to `api.max_users_per_request` users on every
//! instance, through the bus (a banned user, a logout everywhere, a changed password). With
//! `revoke_tokens: true` their tokens issued before now are refused at connect and at
//! `auth_refresh` for `auth.revocation_ttl_secs`. The same API key and rate limit as the
//! publish API.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::publish::{PublishApi, error, names};
use crate::clock::unix_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    user_ids: Vec<Value>,
    #[serde(default)]
    revoke_tokens: bool,
}

pub async fn disconnect(State(api): State<Arc<PublishApi>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let request: DisconnectRequest = match api.request(&headers, &body) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    if request.user_ids.is_empty() {
        return error(StatusCode::BAD_REQUEST, &format!("give 1 to {} `user_ids`", api.max_users()));
    }
    let users = match names(request.user_ids, api.max_users(), "user ids") {
        Ok(users) => users,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let revoked_at = request.revoke_tokens.then(unix_ms);
    match api.bus().end_sessions(&users, revoked_at, api.revocation_ttl()).await {
        Ok(instances) => {
            let mut body = json!({"users": users.len(), "instances": instances});
            if let Some(at) = revoked_at {
                body["revoked_before_ms"] = at.into();
            }
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
