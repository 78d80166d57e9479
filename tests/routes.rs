//! Route scripts in a running instance: hot reload (in place and by rename), broken scripts,
//! runaway scripts, with records flowing and counted end to end.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const SCRIPT_V1: &str = r#"fn route(r) { #{ user_id: r.value.to, payload: #{ n: r.value.n, version: 1 } } }"#;
const SCRIPT_V2: &str = r#"fn route(r) { #{ user_id: r.value.to, payload: #{ n: r.value.n, version: 2 } } }"#;

/// A running instance with the scripted topics, its scripts in `dir`, and ann connected to it.
async fn scripted_instance(dir: &Path) -> Scenario {
    std::fs::write(dir.join("scripted.rhai"), SCRIPT_V1).unwrap();
    std::fs::write(dir.join("loop.rhai"), "fn route(r) { loop { } }").unwrap();
    let scripted = json!({
        // An operations limit no script reaches: what stops the loop is the 20 ms budget.
        "routes": {"script_timeout_ms": 20, "script_max_operations": 1_000_000_000, "reload_debounce_ms": 100},
        "kafka": {
            "topics": [{"name": "scripted", "script": "scripted.rhai"}, {"name": "looping", "script": "loop.rhai"}],
            "dead_letter_topic": "dead-letters",
        },
    });
    let mut s = Stack::default().topics(&["scripted", "looping", "dead-letters"]).dir(dir).instance(scripted).start().await;
    let url = s.url(0);
    s.c.connect_as("ann", &url, "ann").await;
    s
}

async fn produce_n(kafka: &Kafka, n: i64) {
    kafka.produce_to("scripted", Some(0), None, json!({"to": "ann", "n": n}).to_string().as_bytes()).await;
}

async fn versions_until(c: &mut Clients, n: i64) -> Vec<(i64, i64)> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(m, _)| *m < n) {
        let p: Value = c.expect("ann", "notification").await;
        seen.push((p["n"].as_i64().unwrap(), p["version"].as_i64().unwrap()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_live_and_nothing_is_lost_or_routed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scripted_instance(dir.path()).await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);

    produce_n(kafka, 0).await;
    assert_eq!(c.expect("ann", "notification").await, json!({"n": 0, "version": 1}));

    // Save in place while records flow.
    for n in 1..=20 {
        produce_n(kafka, n).await;
    }
    let edited = Instant::now();
    std::fs::write(dir.path().join("scripted.rhai"), SCRIPT_V2).unwrap();
    eventually(Duration::from_secs(5), "the reload", async || h.metric("herald_route_reloads_total{result=\"applied\"}").await == 1.0)
        .await;
    eprintln!("in-place save applied after {:?}", edited.elapsed());
    for n in 21..=40 {
        produce_n(kafka, n).await;
    }
    let seen = versions_until(c, 40).await;
    assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>(), "every record once, in order");
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "old version, then new, never back: {seen:?}");
    assert!(seen.iter().filter(|(n, _)| *n > 20).all(|(_, v)| *v == 2), "records after the reload use the new version");

    // Save by rename, as many editors do.
    let tmp = dir.path().join(".scripted.rhai.swp");
    std::fs::write(&tmp, SCRIPT_V1).unwrap();
    std::fs::rename(&tmp, dir.path().join("scripted.rhai")).unwrap();
    eventually(Duration::from_secs(5), "the second reload", async || {
        h.metric("herald_route_reloads_total{result=\"applied\"}").await == 2.0
    })
    .await;
    produce_n(kafka, 41).await;
    assert_eq!(c.expect("ann", "notification").await, json!({"n": 41, "version": 1}));

    // One save, one reload: no loop of reloads caused by herald reading the file. A reload that
    // its own read set off would reach the one watcher before the next save does, so the next
    // save must be the third reload, not a later one.
    std::fs::write(dir.path().join("scripted.rhai"), SCRIPT_V2).unwrap();
    eventually(Duration::from_secs(5), "the third reload", async || {
        h.metric("herald_route_reloads_total{result=\"applied\"}").await >= 3.0
    })
    .await;
    produce_n(kafka, 42).await;
    assert_eq!(c.expect("ann", "notification").await, json!({"n": 42, "version": 2}));
    assert_eq!(h.metric("herald_route_reloads_total{result=\"applied\"}").await, 3.0, "one reload per save");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_script_keeps_the_running_version_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scripted_instance(dir.path()).await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);

    std::fs::write(dir.path().join("scripted.rhai"), "fn route(r) { #{ user_id: r.value.to, payload: ").unwrap();
    eventually(Duration::from_secs(5), "the rejected reload", async || {
        h.metric("herald_route_reloads_total{result=\"rejected\"}").await == 1.0
    })
    .await;
    produce_n(kafka, 1).await;
    assert_eq!(c.expect("ann", "notification").await, json!({"n": 1, "version": 1}), "the previous version still routes");
    assert_eq!(h.metric("herald_route_reloads_total{result=\"applied\"}").await, 0.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_script_does_not_stall_other_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = scripted_instance(dir.path()).await;
    let (kafka, h, c) = (&s.kafka, &s.heralds[0], &mut s.c);

    for i in 0..5 {
        kafka.produce_to("looping", Some(0), None, json!({"to": "ann", "i": i}).to_string().as_bytes()).await;
    }
    produce_n(kafka, 7).await;
    assert_eq!(c.expect("ann", "notification").await, json!({"n": 7, "version": 1}));
    eventually(Duration::from_secs(10), "five script errors", async || {
        h.metric("herald_route_script_errors_total{route=\"loop.rhai\"}").await == 5.0
    })
    .await;
    assert_eq!(h.metric("herald_records_dropped_total{reason=\"script_error\"}").await, 5.0);
    // Which limit stopped it, as the dead letters say.
    let reader = topic_reader(kafka, "dead-letter-reader", "dead-letters");
    for _ in 0..5 {
        use rdkafka::message::{Headers, Message};
        let m = tokio::time::timeout(Duration::from_secs(15), reader.recv()).await.expect("a dead letter").unwrap();
        let detail = m.headers().and_then(|h| h.iter().find(|h| h.key == "herald-error-detail")).and_then(|h| h.value);
        let detail = String::from_utf8_lossy(detail.unwrap_or_default()).into_owned();
        assert!(detail.contains("exceeded the 20 ms time budget"), "the time budget stopped it: {detail}");
    }
    // The reader, a consumer, closes while the broker is still up.
    let kafka = s.stop_instances().await;
    drop(reader);
    drop(kafka);
}

/// A backlog on a scripted topic arrives as large batches, which are routed in parts on several
/// threads (`routes.threads`); each user still gets every notification once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_routed_on_several_threads_and_stays_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scripted.rhai"), SCRIPT_V1).unwrap();
    let with_topics = |topics: Value| json!({"routes": {"threads": 2}, "kafka": {"topics": topics}});
    // The sockets live on an instance that consumes another topic, so the backlog waits in
    // Kafka until the routing instance starts, and reaches the users over Redis.
    let mut s = Stack::default()
        .topics(&["scripted", "elsewhere"])
        .redis()
        .dir(dir.path())
        .instance(with_topics(json!(["elsewhere"])))
        .start()
        .await;
    let gateway = s.url(0);
    s.c.connect_as("ann", &gateway, "ann").await;
    s.c.connect_as("bob", &gateway, "bob").await;
    // Produced in one go with a linger, so they travel in one message set: the embedded broker
    // (librdkafka's mock cluster) returns one message set per fetch, so one record per produce
    // would reach herald in batches of a few records however long the backlog.
    const RECORDS: i64 = 600;
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", s.kafka.address()).set("linger.ms", "200").create().unwrap();
    let values: Vec<String> = (0..RECORDS).map(|n| json!({"to": if n % 2 == 0 { "ann" } else { "bob" }, "n": n}).to_string()).collect();
    let deliveries: Vec<_> = values
        .iter()
        .map(|v| {
            let record = rdkafka::producer::FutureRecord::<(), str>::to("scripted").partition(0).payload(v);
            producer.send_result(record).map_err(|(e, _)| e).expect("queued")
        })
        .collect();
    for delivery in deliveries {
        delivery.await.expect("not cancelled").map_err(|(e, _)| e).expect("produced");
    }

    s.add_instance(with_topics(json!([{"name": "scripted", "script": "scripted.rhai"}]))).await;
    let (kafka, router, c) = (&s.kafka, &s.heralds[1], &mut s.c);
    for (user, first) in [("ann", 0), ("bob", 1)] {
        let mut seen = Vec::new();
        while seen.len() < (RECORDS / 2) as usize {
            seen.push(c.expect(user, "notification").await["n"].as_i64().unwrap());
        }
        assert_eq!(seen, (first..RECORDS).step_by(2).collect::<Vec<_>>(), "{user}: every record once, in order");
    }
    let split = router.metric("herald_route_split_batches_total").await;
    assert!(split >= 1.0, "a backlog of {RECORDS} records is routed in parts (split batches: {split})");
    let at = Sentinel { topic: "scripted", partition: Some(0), key: None };
    let left = settle_with(kafka, c, at, |marker| json!({"to": "ann", "n": marker}), &["ann"]).await;
    assert!(left[0].is_empty(), "no duplicates: {left:?}");
    // The producer closes while the broker is still up.
    let kafka = s.stop_instances().await;
    drop(producer);
    drop(kafka);
}
