//! Groups and broadcast against real processes: two herald instances on a real redis-server,
//! the embedded Kafka-protocol broker, and npm socket.io-client sockets. A socket's groups come
//! from its token; a record addresses groups or everyone; one bus message per group.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const KEY: &str = "test-api-key-0123456789";
const TEAMS: &str = "team-notifications";
const ALL: &str = "announcements";

/// Two instances on Redis; the first consumes every topic, the second only a topic nobody
/// writes to, so whatever the second delivers came over Redis.
async fn two_instances() -> Scenario {
    let groups = json!({
        "auth": {"jwt": {"groups_claim": "groups"}, "max_groups_per_socket": 3},
        "api": {"key": KEY},
        "kafka": {"topics": [{"name": TEAMS, "group": "/team"}, {"name": ALL, "broadcast": true}, TOPIC]},
    });
    let mut elsewhere = groups.clone();
    elsewhere["kafka"]["topics"] = json!(["elsewhere"]);
    let s = Stack::default().topics(&[TEAMS, ALL, TOPIC, "elsewhere"]).redis().instance(groups).instance(elsewhere).start().await;
    // Settled before anything is produced: a rebalance later would deliver records again (at
    // least once), and the counts below are exact.
    s.heralds[0].wait_assigned(12).await;
    s.heralds[1].wait_assigned(4).await;
    s
}

fn member_of(user: &str, groups: &[&str]) -> Value {
    json!({"auth": {"token": token_with(json!({"sub": user, "groups": groups, "exp": jsonwebtoken::get_current_timestamp() + 3600}))}})
}

async fn to_team(kafka: &Kafka, team: Value, n: i64) {
    kafka.produce_to(TEAMS, Some(0), None, json!({"team": team, "n": n}).to_string().as_bytes()).await;
}

async fn post(h: &Herald, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", h.url()))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What socket `id` received, by the payloads' `n`.
async fn ns(c: &mut Clients, id: &str) -> Vec<i64> {
    c.received(id, "notification").await.iter().map(|v| v["n"].as_i64().unwrap_or(-1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_notification_reaches_every_member_once_on_every_instance() {
    let mut s = two_instances().await;
    let (kafka, one, two, c) = (&s.kafka, &s.heralds[0], &s.heralds[1], &mut s.c);
    for (id, url, user, groups) in [
        ("alice@1", one.url(), "alice", &["red", "blue"][..]),
        ("alice@2", two.url(), "alice", &["red", "blue"]),
        ("bob@2", two.url(), "bob", &["blue"]),
        ("dan@2", two.url(), "dan", &["blue"]),
        ("carol@1", one.url(), "carol", &[]),
    ] {
        c.connect(id, &url, member_of(user, groups)).await.unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    // alice's, bob's and dan's users, red and blue, and the broadcast channel.
    eventually(Duration::from_secs(5), "instance 2 to subscribe", async || two.metric("herald_bus_subscriptions").await == 7.0).await;

    // To both of alice's groups: her sockets get it once each, not once per group.
    to_team(kafka, json!(["red", "blue"]), 1).await;
    // To red only: bob and dan are not in it. Then blue, the sentinel that shows they never got 2.
    to_team(kafka, json!("red"), 2).await;
    to_team(kafka, json!("blue"), 3).await;
    // Order per group: a run of records to red arrives in order.
    for n in 10..30 {
        to_team(kafka, json!("red"), n).await;
    }
    // Addressed as a user by another record: alice gets that one too.
    kafka.produce_to(TOPIC, Some(0), Some("alice"), json!({"userId": "alice", "n": 4}).to_string().as_bytes()).await;

    let reds: Vec<i64> = (10..30).collect();
    for id in ["alice@1", "alice@2"] {
        eventually(Duration::from_secs(15), "alice's notifications", async || ns(c, id).await.len() >= 24).await;
        let got = ns(c, id).await;
        let teams: Vec<i64> = got.iter().copied().filter(|n| *n != 4).collect();
        assert_eq!(teams[..3], [1, 2, 3], "{id}: each group notification once, in order");
        assert_eq!(teams[3..], reds, "{id}: order per group");
        assert_eq!(got.iter().filter(|n| **n == 4).count(), 1, "{id}: the one addressed to her");
    }
    for id in ["bob@2", "dan@2"] {
        eventually(Duration::from_secs(15), "the sentinel to blue", async || ns(c, id).await.contains(&3)).await;
        assert_eq!(ns(c, id).await, [1, 3], "{id} is in blue, not red");
    }

    // Everyone: a broadcast reaches carol, who is in no group, and the sentinel shows she got
    // nothing before it.
    kafka.produce_to(ALL, Some(0), None, json!({"n": 5}).to_string().as_bytes()).await;
    for id in ["alice@1", "alice@2", "bob@2", "dan@2", "carol@1"] {
        eventually(Duration::from_secs(15), "the broadcast", async || ns(c, id).await.contains(&5)).await;
    }
    assert_eq!(ns(c, "carol@1").await, [5]);

    // One bus message per group, however many members: instance 2 received the two group
    // messages of record 1, one each for 2, 3 and the run, and the broadcast (alice's own record
    // went to her channel: one more).
    assert_eq!(two.metric("herald_bus_notifications_received_total").await, (2 + 1 + 1 + 20 + 1 + 1) as f64);
    assert_eq!(one.metric("herald_bus_notifications_published_total{kind=\"group\"}").await, 24.0);
    assert_eq!(one.metric("herald_bus_notifications_published_total{kind=\"broadcast\"}").await, 1.0);
    assert_eq!(one.metric("herald_bus_notifications_published_total{kind=\"user\"}").await, 1.0);
    // Record 1 to alice (from red's copy), bob and dan (from blue's), 2 to alice, 3 to all three.
    assert_eq!(two.metric("herald_gateway_notifications_delivered_total{kind=\"group\"}").await, (3 + 1 + 3 + 20) as f64);
    assert_eq!(two.metric("herald_gateway_notifications_delivered_total{kind=\"broadcast\"}").await, 3.0);

    // Presence for groups, cluster-wide.
    let (status, body) = post(two, "/api/presence", json!({"groups": ["red", "blue", "green"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["groups"],
        json!({"red": {"online": true, "instances": 2}, "blue": {"online": true, "instances": 2}, "green": {"online": false, "instances": 0}})
    );
    assert_eq!(body["groups_online"], 2);
    c.close("alice@1").await;
    eventually(Duration::from_secs(5), "red to be on instance 2 only", async || {
        post(one, "/api/presence", json!({"groups": ["red"]})).await.1["groups"]["red"]["instances"] == 1
    })
    .await;

    // The publish API addresses groups and everyone too; groups are live only.
    let (status, body) = post(one, "/api/publish", json!({"groups": ["blue"], "payload": {"n": 6}})).await;
    assert_eq!((status, &body["published"]), (200, &json!(1)), "{body}");
    let (status, _) = post(one, "/api/publish", json!({"broadcast": true, "payload": {"n": 7}})).await;
    assert_eq!(status, 200);
    for id in ["bob@2", "dan@2"] {
        eventually(Duration::from_secs(15), "the published broadcast", async || ns(c, id).await.contains(&7)).await;
        assert_eq!(ns(c, id).await, [1, 3, 5, 6, 7]);
    }
    let (status, body) = post(one, "/api/publish", json!({"groups": ["blue"], "payload": {}, "retain": true})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("live only"), "{body}");
    let (status, _) = post(one, "/api/publish", json!({"groups": ["blue"], "user_id": "bob", "payload": {}})).await;
    assert_eq!(status, 400, "one audience per request");
    s.stop().await;
}

/// A refresh that names other groups moves the socket: the new group's notifications reach it,
/// the old one's stop, and the instance's subscriptions follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refresh_changes_the_sockets_groups() {
    let mut s = two_instances().await;
    let (kafka, one, two, c) = (&s.kafka, &s.heralds[0], &s.heralds[1], &mut s.c);
    c.connect("erin", &two.url(), member_of("erin", &["red"])).await.unwrap();
    to_team(kafka, json!("red"), 1).await;
    assert_eq!(c.expect("erin", "notification").await["n"], 1);

    let fresh = token_with(json!({"sub": "erin", "groups": ["green"], "exp": jsonwebtoken::get_current_timestamp() + 7200}));
    c.emit_with_ack("erin", "auth_refresh", json!({"token": fresh})).await;
    assert_eq!(c.expect_ack("erin", "auth_refresh").await["ok"], true);
    // Acked after the new subscription is confirmed: no wait needed before publishing.
    to_team(kafka, json!("red"), 2).await;
    to_team(kafka, json!("green"), 3).await;
    eventually(Duration::from_secs(15), "green's notification", async || ns(c, "erin").await.contains(&3)).await;
    assert_eq!(ns(c, "erin").await, [3], "red's second one did not reach her (the first was taken by `expect`)");
    // erin's user, green, and the broadcast channel: red is gone.
    eventually(Duration::from_secs(5), "red to be unsubscribed", async || two.metric("herald_bus_subscriptions").await == 4.0).await;

    // More groups than auth.max_groups_per_socket (3): refused at connect and at refresh.
    let many = member_of("frank", &["a", "b", "c", "d"]);
    assert_eq!(c.connect("frank", &one.url(), many).await, Err("too many groups".into()));
    assert_eq!(one.metric("herald_gateway_auth_rejections_total{reason=\"too_many_groups\"}").await, 1.0);
    let many = token_with(json!({"sub": "erin", "groups": ["a", "b", "c", "d"], "exp": jsonwebtoken::get_current_timestamp() + 7200}));
    c.emit_with_ack("erin", "auth_refresh", json!({"token": many})).await;
    assert_eq!(c.expect_ack("erin", "auth_refresh").await, json!({"ok": false, "error": "too many groups"}));
    s.stop().await;
}

/// Without Redis (one instance, the in-process bus) groups and broadcasts work the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_work_on_the_in_process_bus() {
    let groups = json!({
        "auth": {"jwt": {"groups_claim": "groups"}},
        "kafka": {"topics": [{"name": TEAMS, "group": "/team"}, {"name": ALL, "broadcast": true}]},
    });
    let mut s = Stack::default().topics(&[TEAMS, ALL, TOPIC]).instance(groups).start().await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);
    c.connect("gina", &h.url(), member_of("gina", &["red", "blue"])).await.unwrap();
    c.connect("hal", &h.url(), member_of("hal", &["blue"])).await.unwrap();
    to_team(kafka, json!(["blue", "red"]), 1).await;
    to_team(kafka, json!("red"), 2).await;
    kafka.produce_to(ALL, Some(0), None, json!({"n": 3}).to_string().as_bytes()).await;
    for id in ["gina", "hal"] {
        eventually(Duration::from_secs(15), "the broadcast", async || ns(c, id).await.contains(&3)).await;
    }
    // Topics are consumed apart: the broadcast may overtake; the team records keep their order.
    let teams = |got: Vec<i64>| got.into_iter().filter(|n| *n != 3).collect::<Vec<_>>();
    eventually(Duration::from_secs(15), "gina's team records", async || teams(ns(c, "gina").await).len() == 2).await;
    assert_eq!(teams(ns(c, "gina").await), [1, 2]);
    // gina got the red one: it was delivered, and hal, not in red, was not sent it. The
    // sentinel: a later blue one in the same partition reaches hal after it would have.
    to_team(kafka, json!("blue"), 4).await;
    eventually(Duration::from_secs(15), "the blue sentinel", async || ns(c, "hal").await.contains(&4)).await;
    assert_eq!(teams(ns(c, "hal").await), [1, 4], "hal is not in red");
    s.stop().await;
}
