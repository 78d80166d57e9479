//! The whole path against real processes: the embedded Kafka-protocol broker over TCP, real
//! redis-server instances, herald instances, and the npm socket.io-client.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Two instances in one group: a record consumed on one reaches the user's sockets on both,
/// and nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_across_instances_to_every_socket_of_the_user_only() {
    // Instance 1 consumes the topic; instance 2 is in the same group but only consumes another
    // topic, so every record of `user-notifications` is consumed on instance 1.
    let mut s = Stack::default().topics(&[TOPIC, "elsewhere"]).redis().instance("").instance("kafka: {topics: [elsewhere]}").start().await;
    let (one, two) = (&s.heralds[0], &s.heralds[1]);
    one.wait_assigned(4).await;
    two.wait_assigned(4).await;
    s.connect("alice@2", 1, "alice").await;
    s.connect("alice@1", 0, "alice").await;
    s.connect("bob@2", 1, "bob").await;

    s.notify("alice", json!({"n": 1})).await;
    let on_two = s.c.expect("alice@2", "notification").await;
    let on_one = s.c.expect("alice@1", "notification").await;
    assert_eq!(on_two, json!({"userId": "alice", "type": "test", "body": {"n": 1}}));
    assert_eq!(on_one, on_two);
    s.nothing_else("bob", &["bob@2"], "bob must not see alice's notification").await;
    s.nothing_else("alice", &["alice@2", "alice@1"], "exactly one copy per socket").await;

    let (one, two) = (&s.heralds[0], &s.heralds[1]);
    assert_eq!(one.metric("herald_source_records_consumed_total{topic=\"user-notifications\"}").await, 3.0, "alice's and two sentinels");
    assert_eq!(two.metric("herald_bus_notifications_received_total").await, 3.0, "instance 2 got them over Redis");
    assert_eq!(one.metric("herald_gateway_notifications_delivered_total").await, 2.0);
    assert_eq!(two.metric("herald_gateway_notifications_delivered_total").await, 3.0);
    assert_eq!(two.metric("herald_gateway_users").await, 2.0);
    assert_eq!(two.metric("herald_bus_subscriptions").await, 4.0, "one channel per user with a socket here, the broadcast one and its own");
    // herald's own latency share is timed from the consume on instance 1, carried over Redis.
    assert_eq!(two.metric("herald_pipeline_latency_seconds_count").await, 3.0, "timed across instances");
    let share = two.metric("herald_pipeline_latency_seconds_sum").await;
    assert!(share > 0.0 && share < 15.0, "consume -> emit on another instance took {share} s for three");

    // The last socket of a user leaving unsubscribes its channel: alice's records stop
    // reaching instance 2 (and count as offline there is no one left anywhere).
    s.c.close("alice@2").await;
    s.c.close("bob@2").await;
    eventually(Duration::from_secs(5), "instance 2 to unsubscribe", async || two.metric("herald_bus_subscriptions").await == 2.0).await;
    s.notify("alice", json!({"n": 2})).await;
    assert_eq!(s.c.expect("alice@1", "notification").await["body"]["n"], 2);
    // A sentinel for a user still on instance 2, published after alice's record: instance 2
    // receives it, and nothing of alice's before it.
    s.connect("carl@2", 1, "carl").await;
    s.nothing_else("carl", &["carl@2"], "carl gets only his own").await;
    let received = s.heralds[1].metric("herald_bus_notifications_received_total").await;
    assert_eq!(received, 4.0, "instance 2 no longer receives alice's traffic, only carl's sentinel");
    s.stop().await;
}

/// Partitions spread over two instances of one group, and every record still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions() {
    let mut s = Stack::default().redis().instance("").instance("").start().await;
    s.connect("carol", 0, "carol").await;
    let (kafka, c, one, two) = (&s.kafka, &mut s.c, &s.heralds[0], &s.heralds[1]);
    // Both members must own partitions before the test can say anything about the spread.
    eventually(Duration::from_secs(20), "a rebalance giving both instances partitions", async || {
        for p in 0..4 {
            kafka.produce_to(TOPIC, Some(p), None, json!({"userId": "carol", "probe": p}).to_string().as_bytes()).await;
        }
        let (a, b) = (
            one.metric("herald_source_records_consumed_total{topic=\"user-notifications\"}").await,
            two.metric("herald_source_records_consumed_total{topic=\"user-notifications\"}").await,
        );
        a > 0.0 && b > 0.0
    })
    .await;
    // Every probe, whichever instance consumed it, reached carol's one socket.
    let consumed = one.metric("herald_source_records_consumed_total{topic=\"user-notifications\"}").await
        + two.metric("herald_source_records_consumed_total{topic=\"user-notifications\"}").await;
    eventually(Duration::from_secs(10), "every consumed probe to be delivered", async || {
        c.received("carol", "notification").await.len() as f64 >= consumed
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_users_and_bad_records_are_counted_and_skipped() {
    let mut s = Stack::default().redis().instance("").start().await;
    s.connect("dave", 0, "dave").await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);

    // All on one partition, so the order is fixed and the last record proves the others passed.
    for value in [&b"not json"[..], b"", br#"{"noUser":1}"#, br#"{"userId":{"x":1}}"#, br#"{"userId":"nobody-online"}"#] {
        kafka.produce_to(TOPIC, Some(0), None, value).await;
    }
    kafka.produce_to(TOPIC, Some(0), None, br#"{"userId":"dave","after":"bad ones"}"#).await;
    assert_eq!(c.expect("dave", "notification").await, json!({"userId": "dave", "after": "bad ones"}));

    // Offline and published are counted when the publish returns, which can be after Redis has
    // already handed dave's notification on to his socket.
    eventually(Duration::from_secs(5), "the offline notification to be counted", async || {
        h.metric("herald_records_dropped_total{reason=\"offline\"}").await >= 1.0
    })
    .await;
    assert_eq!(h.metric("herald_bus_notifications_published_total").await, 2.0);
    // Only a Redis reconnect opens the window in which "no subscriber" is retried, not start-up.
    assert_eq!(h.metric("herald_bus_publish_retries_total").await, 0.0, "offline is offline from the start");
    for (reason, n) in [("bad_json", 1.0), ("empty", 1.0), ("no_user_id", 1.0), ("bad_user_id", 1.0), ("offline", 1.0)] {
        assert_eq!(h.metric(&format!("herald_records_dropped_total{{reason=\"{reason}\"}}")).await, n, "{reason}");
    }
    assert_eq!(h.metric("herald_source_records_consumed_total{topic=\"user-notifications\"}").await, 6.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_a_fixed_connect_error() {
    let mut s = Stack::default().instance("").start().await;
    let (c, h) = (&mut s.c, &s.heralds[0]);
    let now = jsonwebtoken::get_current_timestamp();
    let cases = [
        ("none", json!({}), "missing token"),
        ("garbage", json!({"auth": {"token": "garbage"}}), "invalid token"),
        (
            "wrong-key",
            json!({"auth": {"token": jsonwebtoken::encode(&Default::default(), &json!({"sub": "u", "exp": now + 60}), &jsonwebtoken::EncodingKey::from_secret(b"other")).unwrap()}}),
            "invalid token",
        ),
        ("expired", json!({"auth": {"token": token_with(json!({"sub": "u", "exp": now - 120}))}}), "token expired"),
        ("not-yet", json!({"auth": {"token": token_with(json!({"sub": "u", "exp": now + 600, "nbf": now + 300}))}}), "invalid token"),
    ];
    for (id, options, message) in cases {
        assert_eq!(c.connect(id, &h.url(), options).await, Err(message.to_owned()), "{id}");
    }
    assert_eq!(h.metric("herald_gateway_auth_rejections_total{reason=\"missing_token\"}").await, 1.0);
    assert_eq!(h.metric("herald_gateway_auth_rejections_total{reason=\"invalid_token\"}").await, 3.0);
    assert_eq!(h.metric("herald_gateway_auth_rejections_total{reason=\"token_expired\"}").await, 1.0);
    assert_eq!(h.metric("herald_gateway_sockets").await, 0.0);
    s.stop().await;
}

/// Long-polling, the upgrade to WebSocket, and the header and query-string token fallbacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_upgrade_and_token_fallbacks_work_on_the_in_process_bus() {
    let mut s = Stack::default().instance("").start().await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);
    let t = token("erin");
    assert_eq!(c.connect("polling", &h.url(), json!({"auth": {"token": t}, "transports": ["polling"]})).await, Ok("polling".into()));
    // The upgrade may already be done when `connect` fires; either way it must end on WebSocket.
    let first = c.connect("upgrade", &h.url(), json!({"auth": {"token": t}, "transports": ["polling", "websocket"]})).await.unwrap();
    if first == "polling" {
        assert_eq!(c.upgraded("upgrade").await.as_deref(), Some("websocket"));
    }
    assert_eq!(
        c.connect("header", &h.url(), json!({"extraHeaders": {"Authorization": format!("Bearer {t}")}, "transports": ["polling"]})).await,
        Ok("polling".into())
    );
    assert_eq!(c.connect("query", &h.url(), json!({"query": {"token": t}})).await, Ok("websocket".into()));

    kafka.notify("erin", json!({"hello": "all"})).await;
    for id in ["polling", "upgrade", "header", "query"] {
        assert_eq!(c.expect(id, "notification").await["body"], json!({"hello": "all"}), "{id}");
    }
    assert_eq!(h.metric("herald_gateway_notifications_delivered_total").await, 4.0);
    assert_eq!(h.metric("herald_gateway_users").await, 1.0);
    assert_eq!(h.metric("herald_gateway_sockets").await, 4.0);

    // Sockets leaving are counted down, and a user with none left is offline.
    for id in ["polling", "upgrade", "header", "query"] {
        c.close(id).await;
    }
    eventually(Duration::from_secs(5), "sockets to be counted down", async || h.metric("herald_gateway_sockets").await == 0.0).await;
    assert_eq!(h.metric("herald_gateway_users").await, 0.0);
    kafka.notify("erin", json!({"hello": "nobody"})).await;
    eventually(Duration::from_secs(10), "the offline drop", async || {
        h.metric("herald_records_dropped_total{reason=\"offline\"}").await == 1.0
    })
    .await;
    s.stop().await;
}

/// A client that vanishes without closing its connection (it stops reading, so it never answers
/// a ping) is found by the heartbeat and cleaned up: socket, user and Redis subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_clean_up_half_open_connections() {
    let mut s = Stack::default().redis().instance("server: {ping_interval_secs: 1, ping_timeout_secs: 1}").start().await;
    s.connect("gone", 0, "gone").await;
    s.connect("here", 0, "here").await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);
    eventually(Duration::from_secs(5), "both sockets counted", async || h.metric("herald_gateway_sockets").await == 2.0).await;
    assert_eq!(h.metric("herald_bus_subscriptions").await, 4.0, "two users, the broadcast channel and its own");

    c.pause("gone").await;
    // ping interval + timeout is 2 s; allow for a loaded machine.
    eventually(Duration::from_secs(15), "the silent socket dropped", async || h.metric("herald_gateway_sockets").await == 1.0).await;
    eventually(Duration::from_secs(5), "its user and subscription released", async || {
        h.metric("herald_gateway_users").await == 1.0 && h.metric("herald_bus_subscriptions").await == 3.0
    })
    .await;
    // The live client kept answering pings throughout and still gets its notifications.
    kafka.notify("here", json!({"still": "connected"})).await;
    assert_eq!(c.expect("here", "notification").await["body"]["still"], "connected");
    s.stop().await;
}
