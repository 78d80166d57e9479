//! `POST /api/presence`: which of up to `api.max_users_per_request` users (and as many groups)
//! are online, that is have a socket (a member's socket) on some instance, and on how many
//! instances. The same API key and rate limit as the publish API; one Redis round trip per
//! request, never one per user.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::publish::{PublishApi, error, names};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceRequest {
    #[serde(default)]
    user_ids: Vec<Value>,
    #[serde(default)]
    groups: Vec<Value>,
}

pub async fn presence(State(api): State<Arc<PublishApi>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let request: PresenceRequest = match api.request(&headers, &body) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    if request.user_ids.is_empty() && request.groups.is_empty() {
        return error(StatusCode::BAD_REQUEST, &format!("give 1 to {} `user_ids`, or `groups`, or both", api.max_users()));
    }
    let (users, groups) = match (names(request.user_ids, api.max_users(), "user ids"), names(request.groups, api.max_users(), "groups")) {
        (Ok(users), Ok(groups)) => (users, groups),
        (Err(why), _) | (_, Err(why)) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match api.bus().presence(&users, &groups).await {
        Ok((user_counts, group_counts)) => {
            let online = user_counts.iter().filter(|n| **n > 0).count();
            let groups_online = group_counts.iter().filter(|n| **n > 0).count();
            let each = |names: Vec<String>, counts: Vec<usize>| -> Map<String, Value> {
                names.into_iter().zip(counts).map(|(name, n)| (name, json!({"online": n > 0, "instances": n}))).collect()
            };
            let mut body = json!({"users": each(users, user_counts), "online": online});
            // Only asked-for sections: a users-only question gets a users-only answer.
            if !groups.is_empty() {
                body["groups"] = Value::Object(each(groups, group_counts));
                body["groups_online"] = groups_online.into();
            }
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
