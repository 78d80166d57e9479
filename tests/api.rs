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
    let mut s = Stack::default().redis().instance(json!({"api": {"key": KEY, "rate_limit_per_sec": 10}})).start().await;
    s.connect("vic", 0, "vic").await;
    s.connect("wes", 0, "wes").await;
    let (c, h) = (&mut s.c, &s.heralds[0]);

    let (status, body) = post(h, Some(KEY), r#"{"user_id":"vic","event":"alert","payload":{"text":"hi"}}"#).await;
    assert_eq!((status, body), (200, json!({"published": 1, "online": 1, "stored": 0})));
    assert_eq!(c.expect("vic", "alert").await, json!({"text": "hi"}));

    let (status, body) = post(h, Some(KEY), r#"{"user_ids":["vic","wes","nobody"],"payload":[1,2]}"#).await;
    assert_eq!((status, body), (200, json!({"published": 3, "online": 2, "stored": 0})));
    assert_eq!(c.expect("vic", "notification").await, json!([1, 2]));
    assert_eq!(c.expect("wes", "notification").await, json!([1, 2]));

    assert_eq!(post(h, Some("wrong-key-wrong-key"), r#"{"user_id":"vic","payload":1}"#).await.0, 401);
    assert_eq!(post(h, None, r#"{"user_id":"vic","payload":1}"#).await.0, 401);
    for bad in [
        r#"{"payload":1}"#,
        r#"{"user_id":"a","user_ids":["b"],"payload":1}"#,
        r#"{"user_id":{"x":1},"payload":1}"#,
        r#"{"user_id":"a"}"#,
        r#"{"user_id":"a","payload":1,"extra":1}"#,
        "not json",
    ] {
        let (status, body) = post(h, Some(KEY), bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    // 10 per second (8 used above): a quick burst runs out.
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(post(h, Some(KEY), r#"{"user_id":"nobody","payload":1}"#).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let spec = reqwest::get(format!("{}/api/openapi.yaml", h.url())).await.unwrap().text().await.unwrap();
    assert!(spec.contains("/api/publish"));
    s.stop().await;
}

/// Presence across two instances with Redis: a user with sockets on both is on 2 instances,
/// one on either on 1, nobody else online; it follows disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_answered_cluster_wide() {
    let api = json!({"api": {"key": KEY, "max_users_per_request": 3}});
    let mut s = Stack::default().redis().instance(api.clone()).instance(api).start().await;
    for (id, instance, user) in [("ann-1", 0, "ann"), ("ann-2", 1, "ann"), ("bob-1", 1, "bob"), ("42-1", 0, "42")] {
        s.connect(id, instance, user).await;
    }
    let (c, one, two) = (&mut s.c, &s.heralds[0], &s.heralds[1]);
    let ask = r#"{"user_ids":["ann","bob","nobody"]}"#;
    let (status, body) = post_to(one, "/api/presence", Some(KEY), ask).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"users": {"ann": {"online": true, "instances": 2}, "bob": {"online": true, "instances": 1},
                         "nobody": {"online": false, "instances": 0}}, "online": 2})
    );
    // The same from the other instance, and integer ids as the publish API takes them.
    let (_, body) = post_to(two, "/api/presence", Some(KEY), r#"{"user_ids":[42]}"#).await;
    assert_eq!(body["users"]["42"], json!({"online": true, "instances": 1}));

    c.close("ann-2").await;
    c.close("bob-1").await;
    eventually(std::time::Duration::from_secs(10), "presence to follow the disconnects", async || {
        let (_, body) = post_to(one, "/api/presence", Some(KEY), ask).await;
        body["users"]["ann"]["instances"] == 1 && body["users"]["bob"]["online"] == false
    })
    .await;

    assert_eq!(post_to(one, "/api/presence", None, ask).await.0, 401);
    for bad in [r#"{"user_ids":[]}"#, r#"{"user_ids":["a","b","c","d"]}"#, r#"{"user_ids":[{"x":1}]}"#, r#"{"users":["a"]}"#] {
        let (status, body) = post_to(one, "/api/presence", Some(KEY), bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    s.stop().await;
}

/// In-process: the instance's own sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_without_redis_is_this_instance() {
    let mut s = Stack::default().instance(json!({"api": {"key": KEY}})).start().await;
    s.connect("cat-1", 0, "cat").await;
    s.connect("cat-2", 0, "cat").await;
    let (_, body) = post_to(&s.heralds[0], "/api/presence", Some(KEY), r#"{"user_ids":["cat","dan"]}"#).await;
    assert_eq!(body, json!({"users": {"cat": {"online": true, "instances": 1}, "dan": {"online": false, "instances": 0}}, "online": 1}));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_api_does_not_exist() {
    let s = Stack::default().instance("").start().await;
    assert_eq!(post(&s.heralds[0], Some(KEY), r#"{"user_id":"vic","payload":1}"#).await.0, 404);
    s.stop().await;
}

#[test]
fn the_openapi_description_parses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let spec: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/api/publish"]["post"]["requestBody"].is_object());
    assert!(spec["paths"]["/api/presence"]["post"]["requestBody"].is_object());
}
