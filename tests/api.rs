//! The HTTP API (publish, presence) against running instances and the real socket.io-client.

mod common;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "test-api-key-0123456789";

async fn post(h: &Herald, key: Option<&str>, body: &str) -> (u16, Value) {
    post_to(h, "/api/publish", key, body).await
}

async fn post_to(h: &Herald, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().post(format!("{}{path}", h.url())).header("content-type", "application/json").body(body.to_owned());
    if let Some(k) = key {
        request = request.header("authorization", format!("Bearer {k}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_through_the_bus_with_a_key_and_limits() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let redis = Redis::start().await;
    let h = Herald::start(&config_yaml(&kafka, Some(&redis), &format!("api: {{key: {KEY}, rate_limit_per_sec: 10}}"))).await;
    let mut c = Clients::start().await;
    c.connect_as("vic", &h.url(), "vic").await;
    c.connect_as("wes", &h.url(), "wes").await;

    let (status, body) = post(&h, Some(KEY), r#"{"user_id":"vic","event":"alert","payload":{"text":"hi"}}"#).await;
    assert_eq!((status, body), (200, json!({"published": 1, "online": 1, "stored": 0})));
    assert_eq!(c.expect("vic", "alert").await, json!({"text": "hi"}));

    let (status, body) = post(&h, Some(KEY), r#"{"user_ids":["vic","wes","nobody"],"payload":[1,2]}"#).await;
    assert_eq!((status, body), (200, json!({"published": 3, "online": 2, "stored": 0})));
    assert_eq!(c.expect("vic", "notification").await, json!([1, 2]));
    assert_eq!(c.expect("wes", "notification").await, json!([1, 2]));

    assert_eq!(post(&h, Some("wrong-key-wrong-key"), r#"{"user_id":"vic","payload":1}"#).await.0, 401);
    assert_eq!(post(&h, None, r#"{"user_id":"vic","payload":1}"#).await.0, 401);
    for bad in [
        r#"{"payload":1}"#,
        r#"{"user_id":"a","user_ids":["b"],"payload":1}"#,
        r#"{"user_id":{"x":1},"payload":1}"#,
        r#"{"user_id":"a"}"#,
        r#"{"user_id":"a","payload":1,"extra":1}"#,
        "not json",
    ] {
        let (status, body) = post(&h, Some(KEY), bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    // 10 per second (8 used above): a quick burst runs out.
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(post(&h, Some(KEY), r#"{"user_id":"nobody","payload":1}"#).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let spec = reqwest::get(format!("{}/api/openapi.yaml", h.url())).await.unwrap().text().await.unwrap();
    assert!(spec.contains("/api/publish"));
    c.stop().await;
    h.shutdown().await;
}

/// Presence across two instances with Redis: a user with sockets on both is on 2 instances,
/// one on either on 1, nobody else online; it follows disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_answered_cluster_wide() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let redis = Redis::start().await;
    let yaml = config_yaml(&kafka, Some(&redis), &format!("api: {{key: {KEY}, max_users_per_request: 3}}"));
    let (one, two) = (Herald::start(&yaml).await, Herald::start(&yaml).await);
    let mut c = Clients::start().await;
    c.connect_as("ann-1", &one.url(), "ann").await;
    c.connect_as("ann-2", &two.url(), "ann").await;
    c.connect_as("bob-1", &two.url(), "bob").await;
    c.connect_as("42-1", &one.url(), "42").await;
    let ask = r#"{"user_ids":["ann","bob","nobody"]}"#;
    let (status, body) = post_to(&one, "/api/presence", Some(KEY), ask).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"users": {"ann": {"online": true, "instances": 2}, "bob": {"online": true, "instances": 1},
                         "nobody": {"online": false, "instances": 0}}, "online": 2})
    );
    // The same from the other instance, and integer ids as the publish API takes them.
    let (_, body) = post_to(&two, "/api/presence", Some(KEY), r#"{"user_ids":[42]}"#).await;
    assert_eq!(body["users"]["42"], json!({"online": true, "instances": 1}));

    c.close("ann-2").await;
    c.close("bob-1").await;
    eventually(std::time::Duration::from_secs(10), "presence to follow the disconnects", async || {
        let (_, body) = post_to(&one, "/api/presence", Some(KEY), ask).await;
        body["users"]["ann"]["instances"] == 1 && body["users"]["bob"]["online"] == false
    })
    .await;

    assert_eq!(post_to(&one, "/api/presence", None, ask).await.0, 401);
    for bad in [r#"{"user_ids":[]}"#, r#"{"user_ids":["a","b","c","d"]}"#, r#"{"user_ids":[{"x":1}]}"#, r#"{"users":["a"]}"#] {
        let (status, body) = post_to(&one, "/api/presence", Some(KEY), bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    c.stop().await;
    one.shutdown().await;
    two.shutdown().await;
}

/// In-process: the instance's own sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_without_redis_is_this_instance() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let h = Herald::start(&config_yaml(&kafka, None, &format!("api: {{key: {KEY}}}"))).await;
    let mut c = Clients::start().await;
    c.connect_as("cat-1", &h.url(), "cat").await;
    c.connect_as("cat-2", &h.url(), "cat").await;
    let (_, body) = post_to(&h, "/api/presence", Some(KEY), r#"{"user_ids":["cat","dan"]}"#).await;
    assert_eq!(body, json!({"users": {"cat": {"online": true, "instances": 1}, "dan": {"online": false, "instances": 0}}, "online": 1}));
    c.stop().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_api_does_not_exist() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let h = Herald::start(&config_yaml(&kafka, None, "")).await;
    assert_eq!(post(&h, Some(KEY), r#"{"user_id":"vic","payload":1}"#).await.0, 404);
    h.shutdown().await;
}

#[test]
fn the_openapi_description_parses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let spec: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/api/publish"]["post"]["requestBody"].is_object());
    assert!(spec["paths"]["/api/presence"]["post"]["requestBody"].is_object());
}
