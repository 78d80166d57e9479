//! Missed-notification replay with the real socket.io-client: a client whose connection is cut
//! again and again still gets every notification exactly once and in order, on one instance
//! and across two; offline users get theirs on connect; an overflowed history is reported.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// An instance that retains `user-notifications`; `replay` is merged into its `replay` section.
fn retained(replay: Value) -> Value {
    json!({"replay": replay, "kafka": {"topics": [{"name": "user-notifications", "retain": true}]}})
}

/// A client that reconnects after every cut, resuming from the last id it saw: from the start
/// of its (empty) history until it has seen one, so a cut before the first notification
/// arrives loses nothing either.
fn flaky(token: &str) -> Value {
    json!({"auth": {"token": token}, "replay": true, "since": "0-0", "reconnection": true, "reconnectionDelay": 50, "reconnectionDelayMax": 200})
}

/// Produces `n` records for `user` while cutting the client's connection every 15 records,
/// then checks it received 0..n exactly once, in order.
async fn cut_while_flowing(kafka: &Kafka, c: &mut Clients, id: &str, user: &str, n: i64) {
    for i in 0..n {
        kafka.produce_to(TOPIC, Some(0), Some(user), json!({"userId": user, "n": i}).to_string().as_bytes()).await;
        if i % 15 == 7 {
            c.cut(id).await;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    eventually(Duration::from_secs(30), "the last notification", async || {
        c.received(id, "notification").await.iter().any(|p| p["n"] == n - 1)
    })
    .await;
    let got: Vec<i64> = c.received(id, "notification").await.iter().map(|p| p["n"].as_i64().unwrap()).collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "every notification once, in order");
    let ids: Vec<String> = c.received_args(id, "notification").await.iter().map(|a| a[1]["id"].as_str().unwrap().to_owned()).collect();
    let parsed: Vec<herald::replay::NotificationId> = ids.iter().map(|i| i.parse().unwrap()).collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "ids increase");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_every_few_seconds_misses_nothing_on_one_instance() {
    let mut s = Stack::default().instance(retained(json!({}))).start().await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);
    c.connect("fay", &h.url(), flaky(&token("fay"))).await.unwrap();
    cut_while_flowing(kafka, c, "fay", "fay", 120).await;
    assert!(h.metric("herald_replay_notifications_replayed_total").await > 0.0, "some arrived by replay");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_every_few_seconds_misses_nothing_across_instances() {
    let mut elsewhere = retained(json!({}));
    elsewhere["kafka"]["topics"] = json!(["elsewhere"]);
    let mut s = Stack::default().topics(&[TOPIC, "elsewhere"]).redis().instance(retained(json!({}))).instance(elsewhere).start().await;
    s.heralds[0].wait_assigned(4).await;
    s.heralds[1].wait_assigned(4).await;
    let (kafka, c, two) = (&s.kafka, &mut s.c, &s.heralds[1]);
    c.connect("gus", &two.url(), flaky(&token("gus"))).await.unwrap();
    cut_while_flowing(kafka, c, "gus", "gus", 120).await;
    assert!(two.metric("herald_replay_notifications_replayed_total").await > 0.0);
    // The store script carries the consume time too: retained notifications are timed across instances.
    assert!(two.metric("herald_pipeline_latency_seconds_count").await > 0.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_users_get_their_notifications_when_they_connect() {
    let mut s = Stack::default().redis().instance(retained(json!({}))).start().await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);
    for i in 0..3 {
        kafka.produce_to(TOPIC, Some(0), None, json!({"userId": "otto", "n": i}).to_string().as_bytes()).await;
    }
    eventually(Duration::from_secs(10), "three stored for later", async || h.metric("herald_replay_stored_offline_total").await == 3.0)
        .await;
    assert_eq!(h.metric("herald_records_dropped_total{reason=\"offline\"}").await, 0.0, "kept, not dropped");
    c.connect("otto", &h.url(), json!({"auth": {"token": token("otto"), "since": "0-0"}})).await.unwrap();
    for i in 0..3 {
        assert_eq!(c.expect("otto", "notification").await["n"], i);
    }
    s.stop().await;
}

/// `redis://host/2`: the history is written to database 2 and read back from it, by every
/// connection herald makes (its own publisher selects it as fred's reader does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_works_through_a_database_number() {
    // The instance comes after Redis: its URL names Redis's port and database 2.
    let mut s = Stack::default().redis().start().await;
    let redis = s.redis.as_ref().expect("a redis-server");
    let (port, mut overlay) = (redis.port, retained(json!({})));
    overlay["redis"] = json!({"url": format!("{}/2", redis.url())});
    s.add_instance(overlay).await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);
    for i in 0..3 {
        kafka.produce_to(TOPIC, Some(0), None, json!({"userId": "dora", "n": i}).to_string().as_bytes()).await;
    }
    eventually(Duration::from_secs(10), "three stored", async || h.metric("herald_replay_stored_offline_total").await == 3.0).await;
    let exists = |db: &str| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "-n", db, "EXISTS", "herald:history:dora"])
            .output()
            .expect("redis-cli comes with redis-server");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!((exists("2"), exists("0")), ("1".into(), "0".into()), "the history is in database 2, and only there");
    c.connect("dora", &h.url(), json!({"auth": {"token": token("dora"), "since": "0-0"}})).await.unwrap();
    for i in 0..3 {
        assert_eq!(c.expect("dora", "notification").await["n"], i);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowed_history_is_reported_and_the_rest_replayed() {
    let mut s = Stack::default().instance(retained(json!({"history": 5, "last_without_since": 2}))).start().await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);
    c.connect_as("first", &h.url(), "hana").await;
    kafka.produce_to(TOPIC, Some(0), None, br#"{"userId":"hana","n":0}"#).await;
    eventually(Duration::from_secs(10), "the first notification", async || !c.received_args("first", "notification").await.is_empty())
        .await;
    let first_id = c.received_args("first", "notification").await[0][1]["id"].as_str().unwrap().to_owned();
    c.close("first").await;
    eventually(Duration::from_secs(5), "the socket to leave", async || h.metric("herald_gateway_sockets").await == 0.0).await;
    for i in 1..=10 {
        kafka.produce_to(TOPIC, Some(0), None, json!({"userId": "hana", "n": i}).to_string().as_bytes()).await;
    }
    eventually(Duration::from_secs(10), "ten stored", async || h.metric("herald_replay_stored_offline_total").await == 10.0).await;

    c.connect("back", &h.url(), json!({"auth": {"token": token("hana"), "since": first_id}})).await.unwrap();
    assert_eq!(c.expect("back", "replay_gap").await["since"], first_id.as_str());
    for i in 6..=10 {
        assert_eq!(c.expect("back", "notification").await["n"], i, "the five retained, in order");
    }
    // Without `since`, `last_without_since` newest ones.
    c.connect_as("fresh", &h.url(), "hana").await;
    assert_eq!(c.expect("fresh", "notification").await["n"], 9);
    assert_eq!(c.expect("fresh", "notification").await["n"], 10);
    s.stop().await;
}

/// A batch published again after a failed attempt (`publish_again`) may hold retained
/// notifications that attempt stored already: they are found by their origin and keep their
/// first id, so the history has each once. A first attempt never searches. The store script is
/// called by its SHA1 and loaded again, within the same publish, when Redis has lost it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_store_keeps_one_copy_in_the_history() {
    use herald::bus::Bus;
    use herald::notification::Notification;

    let redis = Redis::start().await;
    let yaml = json!({"auth": {"jwt": {"secret": "s"}}, "redis": {"url": redis.url()}}).to_string();
    let config = herald::config::Config::from_yaml(&yaml, std::path::Path::new(".").into(), &|_| None).unwrap();
    let metrics = std::sync::Arc::new(herald::metrics::Metrics::new(&[]));
    let deliverer = std::sync::Arc::new(herald::bus::inbound::Nobody);
    let supervisor = herald::supervise::Supervisor::new(tokio_util::sync::CancellationToken::new());
    let bus = Bus::start(&config, None, deliverer, metrics, &supervisor).await.unwrap();
    let notification = |n: i64, origin: &str| Notification {
        to: herald::notification::Audience::User("rita".into()),
        event: "notification".into(),
        payload: serde_json::value::RawValue::from_string(json!({"n": n}).to_string()).unwrap(),
        timestamp_ms: 1,
        consumed_us: 0,
        retain: true,
        origin: Some(origin.into()),
        trace: None,
    };
    let (first, second) = (notification(1, "t/0/5/0"), notification(2, "t/0/6/0"));

    // The first attempt stored `first`, then failed before `second` (its reply was lost).
    let began = herald::clock::unix_ms();
    let stored = bus.publish(std::slice::from_ref(&first)).await.unwrap()[0].stored.unwrap();
    let again = bus.publish_again(&[first.clone(), second.clone()], began).await.unwrap();
    assert_eq!(again[0].stored, Some(stored), "found by its origin, under its first id");
    assert!(again[1].stored.is_some_and(|id| id > stored), "the one not stored yet is stored now");
    let ns = |h: herald::replay::History| h.items.iter().map(|r| r.payload.get().to_owned()).collect::<Vec<_>>();
    assert_eq!(ns(bus.history("rita", None, 10).await.unwrap()), [r#"{"n":1}"#, r#"{"n":2}"#], "each once, in order");

    // A first attempt does not search: the same origin published anew is a new entry.
    bus.publish(std::slice::from_ref(&first)).await.unwrap();
    assert_eq!(bus.history("rita", None, 10).await.unwrap().items.len(), 3);

    // The same origin with another payload (a recreated topic reusing offsets) is not a match.
    let reused = notification(9, "t/0/5/0");
    assert_ne!(bus.publish_again(std::slice::from_ref(&reused), began).await.unwrap()[0].stored, Some(stored));
    assert_eq!(bus.history("rita", None, 10).await.unwrap().items.len(), 4);

    // The script is called by its SHA1. A Redis that lost it (as a restart does) answers
    // NOSCRIPT: the script is loaded again and the commands that never ran are sent once more,
    // within the same publish.
    let mut redis_cli = tokio::net::TcpStream::connect(("127.0.0.1", redis.port)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut redis_cli, b"SCRIPT FLUSH\r\n").await.unwrap();
    let mut reply = [0u8; 5];
    tokio::io::AsyncReadExt::read_exact(&mut redis_cli, &mut reply).await.unwrap();
    assert_eq!(&reply, b"+OK\r\n");
    let published = bus.publish(&[notification(3, "t/0/7/0"), notification(4, "t/0/8/0")]).await.unwrap();
    assert!(published.iter().all(|p| p.stored.is_some()));
    let history = ns(bus.history("rita", None, 10).await.unwrap());
    assert_eq!(history[history.len() - 2..], [r#"{"n":3}"#, r#"{"n":4}"#], "stored once each, in order");
    assert_eq!(history.len(), 6);
    bus.close().await;
}
