//! Faults and hostile input against running instances: broken records never stall or crash the
//! consumer (and go to the dead-letter topic, at least once, even while it refuses them, and in
//! batches: a flood's throughput is printed); a Redis restart, a Kafka broker outage, a rolling
//! restart (SIGTERM) and a rebalance lose nothing for connected users. Each test reports what was
//! produced, delivered, duplicated and lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::message::{Headers, Message};
use serde_json::json;

/// Topic, key, value.
type HostileRecord<'a> = (&'a str, Option<&'a [u8]>, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_skipped_counted_and_dead_lettered() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "by-key", "dead-letters"]).await;
    let yaml = with_kafka(
        &config_yaml(&kafka, None, ""),
        "dead_letter_topic: dead-letters\ntopics: [user-notifications, {name: by-key, user_id: key}]",
    );
    let h = Herald::start(&yaml).await;
    let mut c = Clients::start().await;
    c.connect_as("ivy", &h.url(), "ivy").await;

    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let big = json!({"userId": "ivy", "big": "x".repeat(900_000)}).to_string();
    let hostile: Vec<HostileRecord> = vec![
        (TOPIC, None, random),
        (TOPIC, None, Vec::new()),
        (TOPIC, None, deep.into_bytes()),
        (TOPIC, None, br#"{"userId": true}"#.to_vec()),
        (TOPIC, None, br#"{"userId": [1, 2]}"#.to_vec()),
        (TOPIC, None, b"\xff\xfe\xfd".to_vec()),
        ("by-key", Some(b"\xc3\x28"), br#"{"x":1}"#.to_vec()),
    ];
    for (topic, key, value) in &hostile {
        let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic).payload(value).partition(0);
        if let Some(k) = key {
            record = record.key(*k);
        }
        kafka.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    // A big but valid record, then a normal one: both still delivered after all that.
    kafka.produce_to(TOPIC, Some(0), None, big.as_bytes()).await;
    kafka.produce_to(TOPIC, Some(0), None, br#"{"userId":"ivy","after":"hostile"}"#).await;
    assert_eq!(c.expect("ivy", "notification").await["big"].as_str().map(str::len), Some(900_000));
    assert_eq!(c.expect("ivy", "notification").await["after"], "hostile");

    let dropped = |r: &'static str| format!("herald_records_dropped_total{{reason=\"{r}\"}}");
    assert_eq!(h.metric(&dropped("bad_json")).await, 2.0, "random bytes, invalid UTF-8");
    assert_eq!(h.metric(&dropped("no_user_id")).await, 1.0, "100k-deep nesting: valid JSON, no user id at /userId");
    assert_eq!(h.metric(&dropped("empty")).await, 1.0);
    assert_eq!(h.metric(&dropped("bad_user_id")).await, 3.0, "true, a list, a key that is not UTF-8");
    assert_eq!(h.metric("herald_source_dead_lettered_total{result=\"ok\"}").await, 7.0);

    // The dead-letter topic holds each record with headers naming the error and its origin.
    let reader = topic_reader(&kafka, "dead-letter-reader", "dead-letters");
    let mut reasons = BTreeMap::new();
    while reasons.values().sum::<usize>() < 7 {
        let m = tokio::time::timeout(Duration::from_secs(15), reader.recv()).await.expect("dead letters").unwrap();
        let headers = m.headers().unwrap();
        let header =
            |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned());
        assert!(
            header("herald-source-topic").is_some() && header("herald-source-offset").is_some() && header("herald-error-detail").is_some()
        );
        *reasons.entry(header("herald-error").unwrap()).or_insert(0usize) += 1;
    }
    assert_eq!(reasons, BTreeMap::from([("bad_json".into(), 2), ("bad_user_id".into(), 3), ("empty".into(), 1), ("no_user_id".into(), 1)]));
    c.stop().await;
    h.shutdown().await;
}

/// The (source partition, source offset) of every dead letter in `topic`, read until `n` arrived.
async fn dead_letter_origins(kafka: &Kafka, topic: &str, n: usize) -> BTreeSet<(String, String)> {
    let reader = topic_reader(kafka, "dead-letter-reader", topic);
    let mut origins = BTreeSet::new();
    let mut read = 0;
    while read < n {
        let m = tokio::time::timeout(Duration::from_secs(30), reader.recv()).await.expect("dead letters").unwrap();
        let headers = m.headers().unwrap();
        let header =
            |name: &str| headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned());
        origins.insert((header("herald-source-partition").unwrap(), header("herald-source-offset").unwrap()));
        read += 1;
    }
    origins
}

/// Produces `n` records that are not JSON to partition 0 of the default topic, all at once.
async fn produce_bad(kafka: &Kafka, n: usize) {
    let sends = (0..n).map(|i| async move { kafka.produce_to(TOPIC, Some(0), None, format!("not json {i}").as_bytes()).await });
    futures::future::join_all(sends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_wait_while_the_topic_refuses_them_and_none_is_lost() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "dead-letters"]).await;
    produce_bad(&kafka, 20).await;
    kafka.produce_to(TOPIC, Some(0), None, br#"{"userId":"ivy","after":"bad"}"#).await;
    // The next produce requests are refused (herald's dead letters are the only ones now).
    kafka.broker.refuse_produce(8);
    let h = Herald::start(&with_kafka(&config_yaml(&kafka, None, ""), "dead_letter_topic: dead-letters")).await;
    let (failed, ok) = ("herald_source_dead_lettered_total{result=\"failed\"}", "herald_source_dead_lettered_total{result=\"ok\"}");
    let published = "herald_bus_notifications_published_total{kind=\"user\"}";

    eventually(Duration::from_secs(10), "a refused dead letter", async || h.metric(failed).await > 0.0).await;
    // The good record behind them waits: its partition holds still while the letters are refused.
    assert_eq!((h.metric(ok).await, h.metric(published).await), (0.0, 0.0), "nothing moved past a refused dead letter");
    eventually(Duration::from_secs(30), "every dead letter acknowledged", async || h.metric(ok).await == 20.0).await;
    eventually(Duration::from_secs(10), "the good record published after them", async || h.metric(published).await == 1.0).await;
    let origins = dead_letter_origins(&kafka, "dead-letters", 20).await;
    assert_eq!(origins.len(), 20, "every bad record is in the dead-letter topic once");
    eprintln!("{} dead-letter sends refused and retried; all 20 arrived", h.metric(failed).await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_records_is_dead_lettered_in_batches() {
    init_logs();
    const N: usize = 10_000;
    let kafka = Kafka::start(&[TOPIC, "dead-letters"]).await;
    produce_bad(&kafka, N).await;
    let started = Instant::now();
    let h = Herald::start(&with_kafka(&config_yaml(&kafka, None, ""), "dead_letter_topic: dead-letters")).await;
    eventually(Duration::from_secs(120), "every dead letter acknowledged", async || {
        h.metric("herald_source_dead_lettered_total{result=\"ok\"}").await == N as f64
    })
    .await;
    let took = started.elapsed();
    eprintln!("{N} bad records dead-lettered in {took:?} (start-up included): {:.0} records/s", N as f64 / took.as_secs_f64());
    assert_eq!(dead_letter_origins(&kafka, "dead-letters", N).await.len(), N, "none lost, none twice");
    h.shutdown().await;
}

/// One of two instances, a real process, gets SIGTERM mid-stream (a rolling restart): it commits
/// and leaves, the survivor takes over its partitions and the user on the survivor misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_nothing_for_users_on_the_surviving_instance() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let redis = Redis::start().await;
    let leaving = HeraldProcess::start(&config_yaml(&kafka, Some(&redis), "")).await;
    let staying = Herald::start(&config_yaml(&kafka, Some(&redis), "")).await;
    leaving.wait_assigned(2).await;
    staying.wait_assigned(2).await;
    let mut c = Clients::start().await;
    c.connect_as("una", &staying.url(), "una").await;

    const N: i64 = 200;
    let mut leaving = Some(leaving);
    for n in 0..N {
        kafka.produce_to(TOPIC, Some((n % 4) as i32), None, json!({"userId": "una", "n": n}).to_string().as_bytes()).await;
        if n == N / 3 {
            let status = leaving.take().unwrap().terminate().await;
            assert!(status.success(), "a clean exit after SIGTERM: {status}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, _, lost) = report(&mut c, "una", N, "rolling restart").await;
    assert_eq!(lost, 0);
    staying.wait_assigned(4).await;
    c.stop().await;
    staying.shutdown().await;
}

/// Redis is killed and restarted while records stream to a user whose socket is on the other
/// instance: consumption holds while the bus is down, both instances re-subscribe by themselves,
/// and every record produced before, during and after the outage is delivered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_nothing() {
    redis_restart_mid_stream(false).await;
}

/// The same for a retained topic, whose notifications take the store script's path and, when
/// they reach no instance just after the reconnect, go out again live with their history id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_no_retained_notification() {
    redis_restart_mid_stream(true).await;
}

async fn redis_restart_mid_stream(retain: bool) {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let mut redis = Redis::start().await;
    // A short command deadline, so the outage outlasts it and publishing has to retry.
    let yaml = merge(&config_yaml(&kafka, Some(&redis), ""), "redis: {command_timeout_ms: 300}");
    let topics = if retain { json!([{"name": "user-notifications", "retain": true}]) } else { json!(["user-notifications"]) };
    // Only `one` consumes the topic; the socket is on `two`: every record crosses Redis.
    let one = Herald::start(&with_kafka(&yaml, json!({"topics": topics}))).await;
    let two = Herald::start(&with_kafka(&yaml, "topics: [elsewhere]")).await;
    one.wait_assigned(4).await;
    two.wait_assigned(4).await;
    let mut c = Clients::start().await;
    c.connect_as("frank", &two.url(), "frank").await;

    const N: i64 = 120;
    for n in 0..N {
        kafka.produce_to(TOPIC, Some(1), Some("frank"), json!({"userId": "frank", "n": n}).to_string().as_bytes()).await;
        if n == N / 6 {
            redis.stop();
        }
        if n == N / 3 {
            eventually(Duration::from_secs(10), "readiness to drop while Redis is down", async || {
                reqwest::get(format!("{}/readyz", one.url())).await.map(|r| r.status().as_u16() == 503).unwrap_or(false)
            })
            .await;
        }
        if n == N * 2 / 3 {
            redis.restart().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let what = if retain { "redis restart, retained" } else { "redis restart" };
    let (_, _, lost) = report(&mut c, "frank", N, what).await;
    assert_eq!(lost, 0);
    assert_first_seen_in_order(&mut c, "frank").await;
    assert!(one.metric("herald_bus_publish_retries_total").await >= 1.0, "the outage was retried, not skipped");
    assert!(two.metric("herald_bus_redis_reconnects_total").await >= 1.0);
    c.stop().await;
    one.shutdown().await;
    two.shutdown().await;
}

/// The broker goes away and comes back: readiness says so, consumption waits, and every record
/// produced around the outage is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Around the outage one request to the mock broker can go unanswered; librdkafka gives up on it
// only after socket.timeout.ms ("Timed out 1 in-flight" logged exactly then) and the consumer
// waits meanwhile. With librdkafka's 60 s default this test took a minute beside the others;
// herald's default of 10 s brings it to 7-21 s.
async fn a_kafka_outage_pauses_consumption_and_loses_nothing() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let h = Herald::start(&config_yaml(&kafka, None, "")).await;
    let mut c = Clients::start().await;
    c.connect_as("kim", &h.url(), "kim").await;
    let record = |n: i64| json!({"userId": "kim", "n": n}).to_string();
    for n in 0..10 {
        kafka.produce_to(TOPIC, Some(0), None, record(n).as_bytes()).await;
    }
    eventually(Duration::from_secs(10), "the first records", async || c.received("kim", "notification").await.len() == 10).await;

    kafka.broker.set_up(false);
    let readyz = format!("{}/readyz", h.url());
    eventually(Duration::from_secs(15), "readiness to drop", async || {
        reqwest::get(&readyz).await.map(|r| r.status() == 503).unwrap_or(false)
    })
    .await;
    // Records produced during the outage wait in the producer and reach the broker once it is back.
    let during: Vec<String> = (10..20).map(record).collect();
    let sends = futures::future::join_all(during.iter().map(|v| kafka.produce_to(TOPIC, Some(0), None, v.as_bytes())));
    let restore = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        kafka.broker.set_up(true);
    };
    tokio::join!(sends, restore);
    // librdkafka reconnects with a growing backoff, and the readiness probe runs every 2 s.
    let readyz = format!("{}/readyz", h.url());
    eventually(Duration::from_secs(30), "readiness to return after the outage", async || {
        reqwest::get(&readyz).await.map(|r| r.status() == 200).unwrap_or(false)
    })
    .await;
    // The metrics show the outage: the gauge is back, one reconnect, its seconds counted.
    eventually(Duration::from_secs(15), "the reconnect to show", async || {
        h.metric("herald_source_kafka_connected").await == 1.0 && h.metric("herald_source_kafka_reconnects_total").await >= 1.0
    })
    .await;
    assert!(h.metric("herald_source_kafka_disconnected_seconds_total").await >= 1.0, "the outage lasted over 2 s");
    for n in 20..30 {
        kafka.produce_to(TOPIC, Some(0), None, record(n).as_bytes()).await;
    }
    let (_, _, lost) = report(&mut c, "kim", 30, "kafka outage").await;
    assert_eq!(lost, 0);
    c.stop().await;
    h.shutdown().await;
}

/// A third instance joins mid-stream: the rebalance moves partitions and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_when_an_instance_joins_loses_nothing() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let redis = Redis::start().await;
    let one = Herald::start(&config_yaml(&kafka, Some(&redis), "")).await;
    let two = Herald::start(&config_yaml(&kafka, Some(&redis), "")).await;
    one.wait_assigned(2).await;
    two.wait_assigned(2).await;
    let mut c = Clients::start().await;
    c.connect_as("lea", &one.url(), "lea").await;

    const N: i64 = 150;
    let mut three = None;
    for n in 0..N {
        kafka.produce_to(TOPIC, Some((n % 4) as i32), None, json!({"userId": "lea", "n": n}).to_string().as_bytes()).await;
        if n == N / 3 {
            three = Some(Herald::start(&config_yaml(&kafka, Some(&redis), "")).await);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, _, lost) = report(&mut c, "lea", N, "rebalance").await;
    assert_eq!(lost, 0);
    let three = three.unwrap();
    let owned = one.metric("herald_source_assigned_partitions").await
        + two.metric("herald_source_assigned_partitions").await
        + three.metric("herald_source_assigned_partitions").await;
    assert_eq!(owned, 4.0, "the four partitions are spread over the three instances");
    c.stop().await;
    three.shutdown().await;
    two.shutdown().await;
    one.shutdown().await;
}

/// Starts one instance with a 32-packet socket buffer and `slow_client: <policy>`, a stalled
/// client and a healthy one; floods the stalled one with 200 notifications of 64 KiB (12 MiB:
/// more than the kernel's socket buffers and its 32 packets) while the healthy one gets 50.
/// Returns the instance and the clients once the healthy one got all 50.
/// `len` characters that permessage-deflate (which the Node client negotiates) barely shrinks,
/// so the notifications fill the stalled connection's buffers as their length says.
fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % 64) as usize] as char
        })
        .collect()
}

async fn stall_one_client(policy: &str) -> (Kafka, Herald, Clients) {
    let kafka = Kafka::start(&[TOPIC]).await;
    // A short write timeout, so the stalled connection is closed within the test.
    let extra = json!({"server": {"max_buffer_size": 32, "slow_client": policy, "write_timeout_ms": 2000}});
    let h = Herald::start(&merge(&config_yaml(&kafka, None, ""), extra)).await;
    let mut c = Clients::start().await;
    c.connect_as("stuck", &h.url(), "stuck").await;
    c.connect_as("fine", &h.url(), "fine").await;
    c.pause("stuck").await;

    let filler = incompressible(64 * 1024);
    for n in 0..200 {
        kafka.produce_to(TOPIC, Some(0), None, json!({"userId": "stuck", "n": n, "filler": filler}).to_string().as_bytes()).await;
    }
    const N: usize = 50;
    for n in 0..N {
        kafka.produce_to(TOPIC, Some(1), None, json!({"userId": "fine", "n": n}).to_string().as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(Duration::from_secs(30), "the healthy client to get everything", async || {
        c.received("fine", "notification").await.len() == N
    })
    .await;
    let got: Vec<i64> = c.received("fine", "notification").await.iter().map(|p| p["n"].as_i64().unwrap()).collect();
    assert_eq!(got, (0..N as i64).collect::<Vec<_>>(), "the healthy client got everything, in order");
    (kafka, h, c)
}

/// The stalled socket and its user are gone; the healthy socket stays. Under `drop` only the
/// write timeout can end the stalled connection, so it must have fired (once); under
/// `disconnect` the policy's disconnect may get there first.
async fn the_stalled_connection_closes(kafka: &Kafka, h: &Herald, by_write_timeout: bool) {
    if by_write_timeout {
        // The kernel's buffers may have taken all herald kept for the stalled socket (emits
        // beyond its 32 packets were dropped): feed it more, bounded, until a write has to wait
        // long enough to time out.
        let filler = incompressible(64 * 1024);
        for n in 0..100 {
            if h.metric("herald_gateway_write_timeouts_total").await >= 1.0 {
                break;
            }
            let value = json!({"userId": "stuck", "n": 1000 + n, "filler": filler}).to_string();
            kafka.produce_to(TOPIC, Some(0), None, value.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eventually(Duration::from_secs(15), "the stalled connection to time out", async || {
            h.metric("herald_gateway_write_timeouts_total").await == 1.0
        })
        .await;
    }
    eventually(Duration::from_secs(15), "the stalled socket and its user to be gone", async || {
        h.metric("herald_gateway_sockets").await == 1.0 && h.metric("herald_gateway_users").await == 1.0
    })
    .await;
    assert!(h.metric("herald_gateway_write_timeouts_total").await <= 1.0, "the healthy connection stays");
}

/// `slow_client: drop`: emits to the stalled client fail and are counted; it is not
/// disconnected by the policy, and another user's socket keeps receiving everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_hold_up_others() {
    init_logs();
    let (kafka, h, c) = stall_one_client("drop").await;
    let failures = h.metric("herald_gateway_emit_failures_total").await;
    eprintln!("stalled client (drop): 200 notifications of 64 KiB to it, {failures} refused by its full buffer; the other got all");
    assert!(failures > 0.0, "the stalled socket's bounded buffer filled up");
    assert_eq!(h.metric("herald_gateway_slow_client_disconnects_total").await, 0.0);
    the_stalled_connection_closes(&kafka, &h, true).await;
    c.stop().await;
    h.shutdown().await;
}

/// `slow_client: disconnect`: the stalled client is taken out of delivery when its buffer is
/// full (counted once; no further emits to it fail), while another user's socket keeps
/// receiving everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_disconnected_under_the_disconnect_policy() {
    init_logs();
    let (kafka, h, mut c) = stall_one_client("disconnect").await;
    assert_eq!(h.metric("herald_gateway_slow_client_disconnects_total").await, 1.0, "one stalled socket, disconnected once");
    let failures = h.metric("herald_gateway_emit_failures_total").await;
    // Once out of its user's room, the socket is not emitted to again: more records for that
    // user fail nowhere (the user may still count as present until the connection closes).
    for n in 200..210 {
        kafka.produce_to(TOPIC, Some(0), None, json!({"userId": "stuck", "n": n}).to_string().as_bytes()).await;
    }
    kafka.produce_to(TOPIC, Some(1), None, json!({"userId": "fine", "n": 50}).to_string().as_bytes()).await;
    eventually(Duration::from_secs(15), "the healthy client's next record", async || c.received("fine", "notification").await.len() == 51)
        .await;
    assert_eq!(h.metric("herald_gateway_emit_failures_total").await, failures, "no emit to the removed socket");
    the_stalled_connection_closes(&kafka, &h, false).await;
    c.stop().await;
    h.shutdown().await;
}

/// Redis stops and comes back: the metrics show the outage (connected gauge, seconds
/// disconnected growing while it lasts, a reconnect) and readiness follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_shows_in_the_metrics_and_readiness() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let mut redis = Redis::start().await;
    let h = Herald::start(&config_yaml(&kafka, Some(&redis), "")).await;
    h.wait_ready().await;
    assert_eq!(h.metric("herald_bus_redis_connected").await, 1.0);
    assert_eq!(h.metric("herald_bus_redis_disconnected_seconds_total").await, 0.0);
    let reconnects = h.metric("herald_bus_redis_reconnects_total").await;

    redis.stop();
    let readyz = format!("{}/readyz", h.url());
    eventually(Duration::from_secs(15), "the outage to show", async || h.metric("herald_bus_redis_connected").await == 0.0).await;
    eventually(Duration::from_secs(15), "readiness to drop", async || {
        reqwest::get(&readyz).await.map(|r| r.status() == 503).unwrap_or(false)
    })
    .await;
    // The time disconnected grows during the outage, not only once it ends.
    eventually(Duration::from_secs(15), "two seconds of outage counted", async || {
        h.metric("herald_bus_redis_disconnected_seconds_total").await >= 2.0
    })
    .await;

    redis.restart().await;
    h.wait_ready().await;
    eventually(Duration::from_secs(15), "the reconnect to show", async || {
        h.metric("herald_bus_redis_connected").await == 1.0 && h.metric("herald_bus_redis_reconnects_total").await > reconnects
    })
    .await;
    let outage = h.metric("herald_bus_redis_disconnected_seconds_total").await;
    assert!(outage >= 2.0, "{outage} s");
    // That the counter stops once connected again is the metrics unit test's, on a clock it
    // sets (an_outage_counts_its_seconds_while_it_lasts_and_one_recovery_when_it_ends).
    h.shutdown().await;
}

/// A background task that ends before shutdown fails the instance: `failed` fires at once, and
/// shutdown reports it, so the binary exits 1 instead of staying ready while doing less.
/// (herald's own tasks end only through a bug; this one is spawned through the instance's own
/// supervisor, as they are.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervised_task_that_ends_early_fails_the_instance() {
    let mut s = Stack::default().instance("").start().await;
    s.connect("ann", 0, "ann").await;
    let mut herald = s.heralds.pop().unwrap();
    let running = herald.running.take().unwrap();
    running.supervisor().spawn("a task that returns", async {});
    tokio::time::timeout(Duration::from_secs(5), running.failed()).await.expect("the instance is failed");
    let error = running.shutdown().await.expect_err("shutdown reports the failure");
    assert!(error.to_string().contains("stopped on its own"), "{error}");
    assert!(s.c.disconnected("ann", Duration::from_secs(5)).await.is_some(), "its sockets were closed");
    s.c.stop().await;
}
