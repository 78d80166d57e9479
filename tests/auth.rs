//! Authentication with the real socket.io-client: every algorithm family, JWKS with key
//! rotation, the user-check endpoint, token expiry and refresh, and connection limits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A private key fixture as a signing key for `alg`.
fn signing_key(name: &str, alg: Algorithm) -> EncodingKey {
    let pem = key_file(name);
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

fn jwk(name: &str, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&signing_key(name, alg), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    encode(&header, &claims, key).unwrap()
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 600})
}

/// The key set served, and the JWKS and check request counters.
type ProviderState = (Arc<Mutex<JwkSet>>, Arc<AtomicUsize>, Arc<AtomicUsize>);

/// A local HTTP server for JWKS and user checks, with a request counter.
struct IdentityProvider {
    url: String,
    jwks: Arc<Mutex<JwkSet>>,
    jwks_requests: Arc<AtomicUsize>,
    check_requests: Arc<AtomicUsize>,
}

impl IdentityProvider {
    async fn start(keys: Vec<Jwk>) -> Self {
        let jwks = Arc::new(Mutex::new(JwkSet { keys }));
        let (jwks_requests, check_requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let app = axum::Router::new()
            .route(
                "/jwks",
                get(|State((jwks, n, _)): State<ProviderState>| async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::to_value(&*jwks.lock().await).unwrap())
                }),
            )
            .route(
                "/check",
                get(|State((_, _, n)): State<ProviderState>, headers: HeaderMap| async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    let token =
                        headers.get("x-token").and_then(|h| h.to_str().ok()).unwrap_or_default().trim_start_matches("Token ").to_owned();
                    match token.split_once(':') {
                        Some(("ok", user)) => (StatusCode::OK, axum::Json(json!({"user": {"id": user}}))),
                        Some(("deny", _)) => (StatusCode::UNAUTHORIZED, axum::Json(json!({}))),
                        Some(("forbid", _)) => (StatusCode::FORBIDDEN, axum::Json(json!({}))),
                        Some(("slow", _)) => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            (StatusCode::OK, axum::Json(json!({"user": {"id": "slow"}})))
                        }
                        _ => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({}))),
                    }
                }),
            )
            .with_state((jwks.clone(), jwks_requests.clone(), check_requests.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, jwks, jwks_requests, check_requests }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_family_verifies_and_tokens_reach_only_their_user() {
    let idp = IdentityProvider::start(vec![
        jwk("rsa.pem", Algorithm::RS256, "rsa"),
        jwk("ec256.pem", Algorithm::ES256, "ec256"),
        jwk("ec384.pem", Algorithm::ES384, "ec384"),
        jwk("ed25519.pem", Algorithm::EdDSA, "ed"),
    ])
    .await;
    let all = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];
    let mut s = Stack::default()
        .section("auth", json!({"jwt": {"secret": SECRET, "jwks_url": format!("{}/jwks", idp.url), "algorithms": all}}))
        .instance("")
        .start()
        .await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);
    let hmac = EncodingKey::from_secret(SECRET.as_bytes());
    let cases: Vec<(Algorithm, EncodingKey, Option<&str>)> = vec![
        (Algorithm::HS256, hmac.clone(), None),
        (Algorithm::HS384, hmac.clone(), None),
        (Algorithm::HS512, hmac, None),
        (Algorithm::RS256, signing_key("rsa.pem", Algorithm::RS256), Some("rsa")),
        (Algorithm::RS384, signing_key("rsa.pem", Algorithm::RS384), Some("rsa")),
        (Algorithm::RS512, signing_key("rsa.pem", Algorithm::RS512), Some("rsa")),
        (Algorithm::PS256, signing_key("rsa.pem", Algorithm::PS256), Some("rsa")),
        (Algorithm::PS384, signing_key("rsa.pem", Algorithm::PS384), Some("rsa")),
        (Algorithm::PS512, signing_key("rsa.pem", Algorithm::PS512), Some("rsa")),
        (Algorithm::ES256, signing_key("ec256.pem", Algorithm::ES256), Some("ec256")),
        (Algorithm::ES384, signing_key("ec384.pem", Algorithm::ES384), Some("ec384")),
        (Algorithm::EdDSA, signing_key("ed25519.pem", Algorithm::EdDSA), Some("ed")),
    ];
    for (i, (alg, key, kid)) in cases.iter().enumerate() {
        let user = format!("user-{i}");
        let token = sign(*alg, key, *kid, claims(&user));
        assert_eq!(c.connect(&user, &h.url(), json!({"auth": {"token": token}})).await.map(|_| ()), Ok(()), "{alg:?}");
    }
    // The identity is the token's: user-3's notification reaches user-3's socket only.
    kafka.produce_to(TOPIC, Some(0), None, json!({"userId": "user-3", "body": {"for": 3}}).to_string().as_bytes()).await;
    assert_eq!(c.expect("user-3", "notification").await["body"], json!({"for": 3}));
    for i in (0..12).filter(|i| *i != 3) {
        let user = format!("user-{i}");
        let left = settle(kafka, c, &user, &[&user]).await;
        assert!(left[0].is_empty(), "{user} received {left:?}");
    }

    // A key signed by a key the JWKS does not hold, under a known kid: refused.
    let forged = sign(Algorithm::RS256, &signing_key("rsa2.pem", Algorithm::RS256), Some("rsa"), claims("mallory"));
    assert_eq!(c.connect("forged", &h.url(), json!({"auth": {"token": forged}})).await, Err("invalid token".into()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused() {
    let mut s = Stack::default().section("auth", "jwt: {algorithms: [RS256], public_key_file: tests/fixtures/keys/rsa.pub.pem, issuers: [idp], audiences: [herald], leeway_secs: 0}").instance("").start().await;
    let (h, c) = (&s.heralds[0], &mut s.c);
    let rsa = signing_key("rsa.pem", Algorithm::RS256);
    let now = jsonwebtoken::get_current_timestamp();
    let good = json!({"sub": "u", "exp": now + 600, "iss": "idp", "aud": "herald"});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let valid = sign(Algorithm::RS256, &rsa, None, good.clone());
    assert!(c.connect("valid", &h.url(), json!({"auth": {"token": valid}})).await.is_ok());

    let mut parts: Vec<&str> = valid.split('.').collect();
    let evil_payload = base64_url(&serde_json::to_vec(&with("sub", json!("admin"))).unwrap());
    parts[1] = &evil_payload;
    let tampered = parts.join(".");
    let none = format!("{}.{}.", base64_url(br#"{"alg":"none","typ":"JWT"}"#), base64_url(&serde_json::to_vec(&good).unwrap()));
    let confusion = sign(Algorithm::HS256, &EncodingKey::from_secret(&key_file("rsa.pub.pem")), None, good.clone());
    let cases = [
        ("none", none, "invalid token"),
        ("confusion", confusion, "invalid token"),
        ("tampered", tampered, "invalid token"),
        ("wrong-iss", sign(Algorithm::RS256, &rsa, None, with("iss", json!("evil"))), "invalid token"),
        ("wrong-aud", sign(Algorithm::RS256, &rsa, None, with("aud", json!("other"))), "invalid token"),
        ("expired", sign(Algorithm::RS256, &rsa, None, with("exp", json!(now - 60))), "token expired"),
        ("not-yet", sign(Algorithm::RS256, &rsa, None, with("nbf", json!(now + 600))), "invalid token"),
        ("no-sub", sign(Algorithm::RS256, &rsa, None, with("sub", Value::Null)), "invalid token"),
        ("no-exp", sign(Algorithm::RS256, &rsa, None, with("exp", Value::Null)), "invalid token"),
        ("random", "a".repeat(5000), "invalid token"),
        ("truncated", valid[..valid.len() / 2].to_owned(), "invalid token"),
    ];
    for (id, token, message) in cases {
        assert_eq!(c.connect(id, &h.url(), json!({"auth": {"token": token}})).await, Err(message.into()), "{id}");
    }
    assert_eq!(h.metric("herald_gateway_auth_rejections_total{reason=\"invalid_token\"}").await, 10.0);
    assert_eq!(h.metric("herald_gateway_auth_rejections_total{reason=\"token_expired\"}").await, 1.0);
    s.stop().await;
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_key_rotation_is_picked_up_and_unknown_kids_are_rate_limited() {
    let idp = IdentityProvider::start(vec![jwk("rsa.pem", Algorithm::RS256, "k1")]).await;
    let jwks = json!({"jwt": {"algorithms": ["RS256"], "jwks_url": format!("{}/jwks", idp.url), "jwks_min_refetch_secs": 1}});
    let mut s = Stack::default().section("auth", jwks).instance("").start().await;
    let (h, c) = (&s.heralds[0], &mut s.c);
    let old = sign(Algorithm::RS256, &signing_key("rsa.pem", Algorithm::RS256), Some("k1"), claims("a"));
    assert!(c.connect("old", &h.url(), json!({"auth": {"token": old}})).await.is_ok());

    // A flood of made-up kids costs at most one fetch per second.
    let before = idp.jwks_requests.load(Ordering::SeqCst);
    for i in 0..20 {
        let bogus = sign(Algorithm::RS256, &signing_key("rsa.pem", Algorithm::RS256), Some(&format!("bogus-{i}")), claims("a"));
        assert_eq!(c.connect(&format!("bogus-{i}"), &h.url(), json!({"auth": {"token": bogus}})).await, Err("invalid token".into()));
    }
    assert!(
        idp.jwks_requests.load(Ordering::SeqCst) - before <= 3,
        "{} fetches for 20 unknown kids",
        idp.jwks_requests.load(Ordering::SeqCst) - before
    );

    // Rotation: the provider publishes k2; a token signed with it is accepted once known.
    idp.jwks.lock().await.keys.push(jwk("rsa2.pem", Algorithm::RS256, "k2"));
    let new = sign(Algorithm::RS256, &signing_key("rsa2.pem", Algorithm::RS256), Some("k2"), claims("b"));
    let mut attempt = 0;
    eventually(Duration::from_secs(10), "the rotated key to be accepted", async || {
        attempt += 1;
        c.connect(&format!("new-{attempt}"), &h.url(), json!({"auth": {"token": new}})).await.is_ok()
    })
    .await;
    assert!(h.metric("herald_auth_jwks_fetches_total{result=\"ok\"}").await >= 2.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_check_endpoint_admits_refuses_and_fails_closed() {
    let idp = IdentityProvider::start(vec![]).await;
    // Opaque tokens: the check alone decides, and names the user.
    let mut s = Stack::default()
        .section(
            "auth",
            json!({"check": {
                "url": format!("{}/check", idp.url),
                "header": "X-Token",
                "scheme": "Token",
                "timeout_ms": 500,
                "cache_ttl_secs": 60,
                "user_id_pointer": "/user/id",
            }}),
        )
        .instance("")
        .start()
        .await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);
    assert!(c.connect("ok", &h.url(), json!({"auth": {"token": "ok:olga"}})).await.is_ok());
    for (id, token, message) in [
        ("deny", "deny:x", "unauthorized"),
        ("forbid", "forbid:x", "unauthorized"),
        ("boom", "boom:x", "auth unavailable"),
        ("slow", "slow:x", "auth unavailable"),
    ] {
        assert_eq!(c.connect(id, &h.url(), json!({"auth": {"token": token}})).await, Err(message.into()), "{id}");
    }
    // The endpoint named the user: olga receives olga's notifications.
    kafka.notify("olga", json!({"hi": 1})).await;
    assert_eq!(c.expect("ok", "notification").await["body"], json!({"hi": 1}));

    // Answers are cached per token: a second socket with the same token asks nobody.
    let asked = idp.check_requests.load(Ordering::SeqCst);
    assert!(c.connect("ok-again", &h.url(), json!({"auth": {"token": "ok:olga"}})).await.is_ok());
    assert!(c.connect("deny-again", &h.url(), json!({"auth": {"token": "deny:x"}})).await.is_err());
    assert_eq!(idp.check_requests.load(Ordering::SeqCst), asked);
    assert_eq!(h.metric("herald_gateway_auth_rejections_total{reason=\"auth_unavailable\"}").await, 2.0);
    assert_eq!(h.metric("herald_auth_check_requests_total{result=\"cached\"}").await, 2.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_disconnect_unless_refreshed_by_the_same_user() {
    let mut s = Stack::default().section("auth", json!({"jwt": {"secret": SECRET, "leeway_secs": 0}})).instance("").start().await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);
    let soon = |user: &str| token_with(json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 2}));
    c.connect("lapses", &h.url(), json!({"auth": {"token": soon("pat")}})).await.unwrap();
    c.connect("lapses-polling", &h.url(), json!({"auth": {"token": soon("pat")}, "transports": ["polling"]})).await.unwrap();
    c.connect("refreshes", &h.url(), json!({"auth": {"token": soon("pat")}})).await.unwrap();
    c.connect("hijacks", &h.url(), json!({"auth": {"token": soon("pat")}})).await.unwrap();

    c.emit_with_ack("refreshes", "auth_refresh", json!({"token": token("pat")})).await;
    let ack = c.expect_ack("refreshes", "auth_refresh").await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(ack["expires_at"].as_u64().unwrap() > jsonwebtoken::get_current_timestamp() + 100);
    c.emit_with_ack("hijacks", "auth_refresh", json!(token("someone-else"))).await;
    assert_eq!(c.expect_ack("hijacks", "auth_refresh").await, json!({"ok": false, "error": "token belongs to another user"}));

    assert_eq!(c.expect("lapses", "auth_expired").await, json!({"reason": "token expired"}));
    // Told by a DISCONNECT, over either transport: the client does not reconnect on its own.
    assert_eq!(c.disconnected("lapses", Duration::from_secs(5)).await.as_deref(), Some("io server disconnect"));
    assert_eq!(c.expect("lapses-polling", "auth_expired").await, json!({"reason": "token expired"}));
    assert_eq!(c.disconnected("lapses-polling", Duration::from_secs(5)).await.as_deref(), Some("io server disconnect"));
    assert!(c.disconnected("hijacks", Duration::from_secs(5)).await.is_some());
    // The refreshed socket outlives its first token and still receives.
    kafka.notify("pat", json!({"still": "here"})).await;
    assert_eq!(c.expect("refreshes", "notification").await["body"], json!({"still": "here"}));
    assert_eq!(h.metric("herald_gateway_expired_disconnects_total").await, 3.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_and_origins() {
    let mut s = Stack::default()
        .section("auth", json!({"jwt": {"secret": SECRET}, "max_sockets_per_user": 2, "allowed_origins": ["https://app.example"]}))
        .instance("")
        .start()
        .await;
    let (h, c) = (&s.heralds[0], &mut s.c);
    c.connect_as("one", &h.url(), "quinn").await;
    c.connect_as("two", &h.url(), "quinn").await;
    assert_eq!(c.connect("three", &h.url(), json!({"auth": {"token": token("quinn")}})).await, Err("too many connections".into()));
    c.connect_as("other-user", &h.url(), "rita").await;
    let bad_origin = json!({"auth": {"token": token("sam")}, "extraHeaders": {"Origin": "https://evil.example"}});
    assert_eq!(c.connect("evil", &h.url(), bad_origin).await, Err("origin not allowed".into()));
    let good_origin = json!({"auth": {"token": token("sam")}, "extraHeaders": {"Origin": "https://app.example"}});
    assert!(c.connect("good", &h.url(), good_origin).await.is_ok());
    assert_eq!(h.metric("herald_gateway_auth_rejections_total{reason=\"origin_not_allowed\"}").await, 1.0);
    assert_eq!(h.metric("herald_gateway_auth_rejections_total{reason=\"too_many_connections\"}").await, 1.0);

    // CORS for long-polling: a browser on an allowed origin may, another may not.
    let preflight = |origin: &'static str| {
        let url = format!("{}/socket.io/?EIO=4&transport=polling", h.url());
        async move {
            reqwest::Client::new()
                .request(reqwest::Method::OPTIONS, url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "GET")
                .send()
                .await
                .unwrap()
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_owned())
        }
    };
    assert_eq!(preflight("https://app.example").await.as_deref(), Some("https://app.example"));
    assert_eq!(preflight("https://evil.example").await, None);
    s.stop().await;

    // A full instance refuses newcomers.
    let mut s = Stack::default().section("auth", json!({"jwt": {"secret": SECRET}, "max_sockets": 2})).instance("").start().await;
    let (h, c) = (&s.heralds[0], &mut s.c);
    c.connect_as("a", &h.url(), "u1").await;
    c.connect_as("b", &h.url(), "u2").await;
    assert_eq!(c.connect("c", &h.url(), json!({"auth": {"token": token("u3")}})).await, Err("too many connections".into()));
    c.close("a").await;
    eventually(Duration::from_secs(5), "a place to free up", async || h.metric("herald_gateway_sockets").await == 1.0).await;
    c.connect_as("d", &h.url(), "u3").await;
    s.stop().await;

    // The other policy: the oldest socket makes room.
    let mut s = Stack::default()
        .section("auth", json!({"jwt": {"secret": SECRET}, "max_sockets_per_user": 2, "per_user_limit": "disconnect_oldest"}))
        .instance("")
        .start()
        .await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);
    c.connect_as("first", &h.url(), "quinn").await;
    c.connect_as("second", &h.url(), "quinn").await;
    c.connect_as("third", &h.url(), "quinn").await;
    assert!(c.disconnected("first", Duration::from_secs(5)).await.is_some(), "the oldest socket is closed");
    kafka.notify("quinn", json!({"n": 1})).await;
    assert_eq!(c.expect("second", "notification").await["body"]["n"], 1);
    assert_eq!(c.expect("third", "notification").await["body"]["n"], 1);
    assert_eq!(h.metric("herald_gateway_sockets").await, 2.0);
    s.stop().await;
}
