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
    // A global offline topic, and one of its own for `vip`.
    let both = "kafka: {offline_topic: offline, topics: [user-notifications, {name: vip, offline_topic: vip-offline}]}";
    let mut s = Stack::default().topics(&[TOPIC, "vip", "offline", "vip-offline"]).redis().instance(both).instance(both).start().await;
    // Both consume (4 partitions each of the 8): a record for a user connected to the other
    // instance crosses Redis.
    s.heralds[0].wait_assigned(4).await;
    s.heralds[1].wait_assigned(4).await;
    s.connect("ann", 0, "ann").await;
    s.connect("bob", 1, "bob").await;
    let (kafka, c, one, two) = (&s.kafka, &mut s.c, &s.heralds[0], &s.heralds[1]);

    const N: i64 = 20;
    for n in 0..N {
        for user in ["ann", "bob", "cal", "dee"] {
            kafka.produce_to(TOPIC, Some((n % 4) as i32), Some(user), json!({"userId": user, "n": n}).to_string().as_bytes()).await;
        }
    }
    for user in ["ann", "bob"] {
        let (_, _, lost) = report(c, user, N, user).await;
        assert_eq!(lost, 0);
    }
    for (user, n) in [("ann", 100), ("fay", 101)] {
        kafka.produce_to("vip", Some(0), Some(user), json!({"userId": user, "n": n}).to_string().as_bytes()).await;
    }

    let reader = topic_reader(kafka, "offline-reader", "offline");
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
    // `vip` has its own: the offline users' records are there, the connected one's is not.
    let vip = topic_reader(kafka, "vip-reader", "vip-offline");
    kafka.produce_to("vip", Some(0), Some("gus"), json!({"userId": "gus", "n": 102}).to_string().as_bytes()).await;
    let mut vip_got = Vec::new();
    while vip_got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(15), vip.recv()).await.expect("vip's offline notifications").unwrap();
        let value: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        vip_got.push((value["user_id"].as_str().unwrap().to_owned(), value["payload"]["n"].as_i64().unwrap()));
    }
    vip_got.sort();
    assert_eq!(vip_got, [("fay".to_owned(), 101), ("gus".to_owned(), 102)]);
    // Counted: cal's and dee's, eve, fay and gus (at least once: a redelivery may add more).
    let handed_off =
        one.metric("herald_source_offline_handed_off_total").await + two.metric("herald_source_offline_handed_off_total").await;
    assert!(handed_off >= (2 * N + 3) as f64, "{handed_off}");
    let broker = s.stop_instances().await;
    // Readers close before the broker stops: librdkafka waits long for a broker that is gone.
    drop(reader);
    drop(vip);
    drop(broker);
}
