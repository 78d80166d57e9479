//! Ending a user's sessions: `POST /api/disconnect` on one instance ends every socket of the
//! user on every instance (the real socket.io-client sees a server disconnect and stays
//! disconnected), leaves other users alone, and with `revoke_tokens` refuses the old tokens at
//! connect and at `auth_refresh`, on running instances and on one started afterwards (Redis
//! keeps the revocation), while a token issued after it is accepted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const API_KEY: &str = "an-api-key-of-at-least-16-characters";

fn overlay() -> Value {
    json!({"api": {"key": API_KEY}})
}

/// A token for `user` issued at `iat` (seconds since the epoch).
fn issued_at(user: &str, iat: u64) -> String {
    token_with(json!({"sub": user, "iat": iat, "exp": iat + 3600}))
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

async fn end_sessions(url: &str, body: Value) -> Value {
    let response = reqwest::Client::new().post(format!("{url}/api/disconnect")).bearer_auth(API_KEY).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn connect_with(c: &mut Clients, id: &str, url: &str, token: &str) -> Result<String, String> {
    c.connect(id, url, json!({"auth": {"token": token}, "reconnection": true, "reconnectionDelay": 50})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_users_sessions_reaches_every_instance_and_revokes_old_tokens() {
    let mut s = Stack::default().redis().instance(overlay()).instance(overlay()).start().await;
    let (one, two) = (s.url(0), s.url(1));
    let old = issued_at("ursula", now_secs() - 10);
    connect_with(&mut s.c, "u-one", &one, &old).await.unwrap();
    connect_with(&mut s.c, "u-two", &two, &old).await.unwrap();
    s.connect("victor", 1, "victor").await;

    let asked = Instant::now();
    let answer = end_sessions(&one, json!({"user_ids": ["ursula"], "revoke_tokens": true})).await;
    assert_eq!((answer["users"].as_u64(), answer["instances"].as_u64()), (Some(1), Some(2)), "{answer}");
    let revoked_before_ms = answer["revoked_before_ms"].as_u64().unwrap();
    for id in ["u-one", "u-two"] {
        let reason = s.c.disconnected(id, Duration::from_secs(1)).await;
        assert_eq!(reason.as_deref(), Some("io server disconnect"), "{id}: every socket of the user, on either instance");
    }
    eprintln!("both sockets ended {:?} after the request", asked.elapsed());
    // The client does not reconnect by itself after a server disconnect.
    assert!(s.c.next("u-one", "connect", Duration::from_millis(500)).await.is_none());

    // Others are untouched.
    s.notify("victor", json!({"still": "here"})).await;
    assert_eq!(s.c.expect("victor", "notification").await["body"], json!({"still": "here"}));

    // The old token is refused on both instances; one issued after the revocation is not.
    for url in [&one, &two] {
        assert_eq!(connect_with(&mut s.c, "u-old", url, &old).await, Err("token revoked".into()));
    }
    let fresh = issued_at("ursula", revoked_before_ms / 1000 + 1);
    connect_with(&mut s.c, "u-new", &two, &fresh).await.expect("a token issued after the revocation");
    s.c.emit_with_ack("u-new", "auth_refresh", json!({"token": old})).await;
    assert_eq!(s.c.expect_ack("u-new", "auth_refresh").await, json!({"ok": false, "error": "token revoked"}));
    assert_eq!(s.heralds[1].metric("herald_gateway_auth_rejections_total{reason=\"token_revoked\"}").await, 1.0);
    assert_eq!(s.heralds[0].metric("herald_gateway_sessions_ended_total").await, 1.0);
    assert_eq!(s.heralds[1].metric("herald_gateway_sessions_ended_total").await, 1.0);

    // An instance started after the revocation learns it from Redis.
    let three = s.add_instance(overlay()).await.url();
    assert_eq!(connect_with(&mut s.c, "u-late", &three, &old).await, Err("token revoked".into()));
    connect_with(&mut s.c, "u-late-new", &three, &fresh).await.expect("a new token there too");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_holds_while_redis_is_down_and_others_still_connect() {
    let mut s = Stack::default().redis().instance(overlay()).instance(overlay()).start().await;
    let (one, two) = (s.url(0), s.url(1));
    let old = issued_at("rhea", now_secs() - 10);
    end_sessions(&one, json!({"user_ids": ["rhea"], "revoke_tokens": true})).await;
    // Both instances heard it before Redis goes.
    eventually(
        Duration::from_secs(5),
        "the second instance to hear it",
        async || matches!(connect_with(&mut s.c, "probe", &two, &old).await, Err(e) if e == "token revoked"),
    )
    .await;
    s.redis.as_mut().unwrap().stop();
    eventually(Duration::from_secs(15), "the outage to show", async || s.heralds[1].metric("herald_bus_redis_connected").await == 0.0)
        .await;
    assert_eq!(connect_with(&mut s.c, "r-down", &two, &old).await, Err("token revoked".into()), "each instance remembers");
    connect_with(&mut s.c, "other", &two, &issued_at("olga", now_secs() - 10)).await.expect("admission goes on during an outage");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_revoking_the_same_token_may_come_back_and_one_instance_needs_no_redis() {
    let mut s = Stack::default().instance(overlay()).start().await;
    let url = s.url(0);
    let token = issued_at("wanda", now_secs() - 10);
    connect_with(&mut s.c, "w1", &url, &token).await.unwrap();
    let answer = end_sessions(&url, json!({"user_ids": ["wanda"]})).await;
    assert!(answer.get("revoked_before_ms").is_none(), "{answer}");
    assert_eq!(s.c.disconnected("w1", Duration::from_secs(1)).await.as_deref(), Some("io server disconnect"));
    connect_with(&mut s.c, "w2", &url, &token).await.expect("not revoked: the same token is fine");

    // On the in-process bus the instance itself keeps the revocation.
    end_sessions(&url, json!({"user_ids": ["wanda"], "revoke_tokens": true})).await;
    assert_eq!(s.c.disconnected("w2", Duration::from_secs(1)).await.as_deref(), Some("io server disconnect"));
    assert_eq!(connect_with(&mut s.c, "w3", &url, &token).await, Err("token revoked".into()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disconnect_api_checks_its_key_and_body() {
    let s = Stack::default().instance(overlay()).start().await;
    let url = format!("{}/api/disconnect", s.url(0));
    let http = reqwest::Client::new();
    let unauthorized = http.post(&url).json(&json!({"user_ids": ["a"]})).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    for bad in [json!({}), json!({"user_ids": []}), json!({"user_ids": [true]}), json!({"user_ids": ["a"], "extra": 1})] {
        let r = http.post(&url).bearer_auth(API_KEY).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    s.stop().await;
}
