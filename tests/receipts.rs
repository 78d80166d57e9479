//! Receipts: every notification carries an id in its second argument; a client's `receipt`
//! (`{id, state}`, acked) is produced to `kafka.receipts_topic` under the socket's own user,
//! whatever the client claims. Real socket.io-client sockets, two instances with Redis, a real
//! consumer of the topic.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::message::Message;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_recorded_under_the_sockets_own_user() {
    let consuming = |topic: &str| json!({"server": {"receipts_per_sec": 3}, "kafka": {"receipts_topic": "receipts", "topics": [topic]}});
    // Only `one` consumes; the socket is on `two`: the id crosses Redis with the notification.
    let mut s = Stack::default()
        .topics(&[TOPIC, "elsewhere", "receipts"])
        .redis()
        .instance(consuming(TOPIC))
        .instance(consuming("elsewhere"))
        .start()
        .await;
    let (kafka, one, two, c) = (&s.kafka, &s.heralds[0], &s.heralds[1], &mut s.c);
    one.wait_assigned(4).await;
    two.wait_assigned(4).await;
    c.connect_as("ann", &two.url(), "ann").await;

    kafka.produce_to(TOPIC, Some(2), Some("ann"), json!({"userId": "ann", "n": 1}).to_string().as_bytes()).await;
    eventually(Duration::from_secs(10), "the notification", async || !c.received_args("ann", "notification").await.is_empty()).await;
    let args = c.received_args("ann", "notification").await;
    let id = args[0][1]["id"].as_str().expect("an id in the second argument").to_owned();
    assert!(id.starts_with("user-notifications/2/"), "a stable id from its origin: {id}");

    // A receipt that claims another user is still ann's.
    c.emit_with_ack("ann", "receipt", json!({"id": id, "state": "read", "user_id": "mallory"})).await;
    assert_eq!(c.expect_ack("ann", "receipt").await, json!({"ok": true}));

    let reader = topic_reader(kafka, "receipts-reader", "receipts");
    let m = tokio::time::timeout(Duration::from_secs(15), reader.recv()).await.expect("a receipt").unwrap();
    let receipt: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert_eq!(m.key(), Some(&b"ann"[..]));
    assert_eq!(
        (receipt["user_id"].as_str(), receipt["id"].as_str(), receipt["state"].as_str()),
        (Some("ann"), Some(id.as_str()), Some("read"))
    );
    assert!(receipt["socket_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(receipt["timestamp_ms"].as_i64().is_some_and(|t| t > 1_700_000_000_000));

    // A bad one is refused by its ack, and counted.
    c.emit_with_ack("ann", "receipt", json!({"id": id, "state": "seen"})).await;
    let refused = c.expect_ack("ann", "receipt").await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("state"));
    assert_eq!(two.metric("herald_gateway_receipts_total{result=\"invalid\"}").await, 1.0);

    // 3 a second per socket: a quick run of 7 meets the limit (at most 6 fit in two seconds).
    let mut errors = Vec::new();
    for _ in 0..7 {
        c.emit_with_ack("ann", "receipt", json!({"id": id, "state": "delivered"})).await;
        errors.push(c.expect_ack("ann", "receipt").await["error"].clone());
    }
    assert!(errors.iter().any(|e| e == "too many receipts"), "{errors:?}");
    assert!(two.metric("herald_gateway_receipts_total{result=\"rate_limited\"}").await >= 1.0);
    // The reader, a consumer, closes while the broker is still up, after the message it gave
    // (which holds on to its partition: the close would wait for it).
    let kafka = s.stop_instances().await;
    drop(m);
    drop(reader);
    drop(kafka);
}
