//! The offline hand-off: across two instances with Redis, a notification whose user has no
//! socket anywhere is produced to `kafka.offline_topic`, and one whose user is connected (on
//! either instance) never is. A real consumer of that topic checks it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_of_offline_users_are_handed_off_and_only_those() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "offline"]).await;
    let redis = Redis::start().await;
    let yaml = with_kafka(&config_yaml(&kafka, Some(&redis), ""), "offline_topic: offline");
    let (one, two) = (Herald::start(&yaml).await, Herald::start(&yaml).await);
    // Both consume: a record for a user connected to the other instance crosses Redis.
    one.wait_assigned(2).await;
    two.wait_assigned(2).await;
    let mut c = Clients::start().await;
    c.connect_as("ann", &one.url(), "ann").await;
    c.connect_as("bob", &two.url(), "bob").await;

    const N: i64 = 20;
    for n in 0..N {
        for user in ["ann", "bob", "cal", "dee"] {
            kafka.produce_to(TOPIC, Some((n % 4) as i32), Some(user), json!({"userId": user, "n": n}).to_string().as_bytes()).await;
        }
    }
    for user in ["ann", "bob"] {
        let (_, _, lost) = report(&mut c, user, N, user).await;
        assert_eq!(lost, 0);
    }

    let reader = topic_reader(&kafka, "offline-reader", "offline");
    let mut got = BTreeSet::new();
    while got.len() < 2 * N as usize {
        let m = tokio::time::timeout(Duration::from_secs(15), reader.recv()).await.expect("offline notifications").unwrap();
        let value: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let user = value["user_id"].as_str().unwrap().to_owned();
        assert_eq!(m.key(), Some(user.as_bytes()), "keyed by user");
        assert_eq!(value["event"], "notification");
        assert_eq!(value["payload"]["userId"], user.as_str(), "the payload as routed");
        let headers = m.headers().unwrap();
        let header =
            |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(header("herald-source-topic").as_deref(), Some(TOPIC));
        assert!(header("herald-source-partition").is_some_and(|p| p.parse::<i32>().is_ok()));
        assert!(header("herald-source-offset").is_some_and(|o| o.parse::<i64>().is_ok()));
        got.insert((user, value["payload"]["n"].as_i64().unwrap()));
    }
    let expected: BTreeSet<(String, i64)> = ["cal", "dee"].iter().flat_map(|u| (0..N).map(move |n| (u.to_string(), n))).collect();
    assert_eq!(got, expected, "exactly the offline users' notifications");
    // Nothing else follows: a sentinel record for an offline user is the next thing handed off.
    kafka.produce_to(TOPIC, Some(0), Some("eve"), json!({"userId": "eve", "n": -1}).to_string().as_bytes()).await;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), reader.recv()).await.expect("the sentinel").unwrap();
        let value: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let user = value["user_id"].as_str().unwrap();
        assert!(user == "eve" || user == "cal" || user == "dee", "a connected user's notification was handed off: {value}");
        if user == "eve" {
            break;
        }
    }
    let handed_off =
        one.metric("herald_source_offline_handed_off_total").await + two.metric("herald_source_offline_handed_off_total").await;
    assert!(handed_off >= (2 * N + 1) as f64, "{handed_off}");
    c.stop().await;
    one.shutdown().await;
    two.shutdown().await;
}
