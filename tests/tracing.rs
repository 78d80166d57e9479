//! Traces: a Kafka record's W3C `traceparent` continues through herald to the client and back
//! with its receipt. Exported, two herald processes with Redis send their spans to a real
//! OTLP/HTTP receiver, which decodes them: one trace, parented hop by hop. Not exported, the
//! record's own `traceparent` still reaches the client across Redis, and the publish API's
//! request header does too.

mod common;

use std::time::Duration;

use common::otlp::{OtlpReceiver, ReceivedSpan};
use common::*;
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01")
}

/// The `notification`s socket `id` received: each one's arguments.
async fn notifications(c: &mut Clients, id: &str, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(15), "the notifications", async || c.received_args(id, "notification").await.len() >= n).await;
    c.received_args(id, "notification").await
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let named: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(named.len(), 1, "one `{name}` span: {spans:#?}");
    named[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_trace_continues_across_instances_to_the_client_and_its_receipt() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere", "receipts"]).await;
    let redis = Redis::start().await;
    let receiver = OtlpReceiver::start().await;
    // Only records with a sampled traceparent are traced (no ratio for the others).
    let yaml = config_yaml(&kafka, Some(&redis), json!({"telemetry": {"otlp": {"endpoint": receiver.url}, "sampling_ratio": 0}}));
    // Spans go out every 100 ms instead of every 5 s.
    let launch = || Launch { env: vec![("OTEL_BSP_SCHEDULE_DELAY", "100".into())], ..Launch::default() };
    let consuming = HeraldProcess::launch(&with_kafka(&yaml, "receipts_topic: receipts\ntopics: [user-notifications]"), launch()).await;
    let holding = HeraldProcess::launch(&with_kafka(&yaml, "receipts_topic: receipts\ntopics: [elsewhere]"), launch()).await;
    consuming.wait_assigned(4).await;
    holding.wait_assigned(4).await;
    let mut c = Clients::start().await;
    c.connect_as("tia", &holding.url, "tia").await;

    // A record without a trace first: it carries none, and no span is made for it.
    kafka.produce_to(TOPIC, Some(1), Some("tia"), json!({"userId": "tia", "n": 0}).to_string().as_bytes()).await;
    let args = notifications(&mut c, "tia", 1).await;
    assert_eq!(args[0][1].get("traceparent"), None, "{}", args[0]);

    let value = json!({"userId": "tia", "n": 1}).to_string();
    kafka.produce_with_headers(TOPIC, 1, "tia", value.as_bytes(), &[("traceparent", &traceparent()), ("tracestate", "vendor=x1")]).await;
    let args = notifications(&mut c, "tia", 2).await;
    let meta = &args[1][1];
    let seen = meta["traceparent"].as_str().unwrap_or_else(|| panic!("a traceparent in the second argument: {meta}")).to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"), "the producer's trace, sampled: {seen}");

    // The app hands it back with its receipt: the receipt record carries it.
    c.emit_with_ack("tia", "receipt", json!({"id": meta["id"], "state": "read", "traceparent": seen})).await;
    assert_eq!(c.expect_ack("tia", "receipt").await, json!({"ok": true}));
    let reader = topic_reader(&kafka, "receipts-reader", "receipts");
    let m = tokio::time::timeout(Duration::from_secs(15), reader.recv()).await.expect("a receipt").unwrap();
    let header = m.headers().and_then(|h| h.iter().find(|h| h.key == "traceparent")).and_then(|h| h.value);
    assert_eq!(header, Some(seen.as_bytes()), "the receipt's traceparent header");

    eventually(Duration::from_secs(15), "the four spans of the trace", async || receiver.trace(TRACE_ID).len() >= 4).await;
    let spans = receiver.trace(TRACE_ID);
    let (consume, route, publish, deliver) = (one(&spans, "consume"), one(&spans, "route"), one(&spans, "publish"), one(&spans, "deliver"));
    assert_eq!(consume.parent_span_id, PRODUCER_SPAN, "consume continues the producer's span");
    assert_eq!(route.parent_span_id, consume.span_id);
    assert_eq!(publish.parent_span_id, route.span_id);
    assert_eq!(deliver.parent_span_id, publish.span_id, "joined across the Redis hop");
    assert_eq!(parts[2], deliver.span_id, "the client continues from the delivery span");
    assert_eq!(consume.attributes["messaging.destination.name"], TOPIC);
    assert_eq!(route.attributes["herald.route"], "default");
    assert_eq!((publish.attributes["herald.audience"].as_str(), publish.attributes["herald.receivers"].as_str()), ("user", "1"));
    assert_eq!((deliver.attributes["herald.audience"].as_str(), deliver.attributes["herald.sockets"].as_str()), ("user", "1"));
    // Two processes: the consuming one made the first three, the holding one the last.
    assert_eq!((route.instance.as_str(), publish.instance.as_str()), (consume.instance.as_str(), consume.instance.as_str()));
    assert_ne!(deliver.instance, consume.instance, "{spans:#?}");
    assert_eq!(consume.service, "herald");
    assert_eq!(receiver.all().len(), 4, "no span for the untraced record: {:#?}", receiver.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_the_records_own_trace_still_reaches_the_client() {
    const KEY: &str = "test-api-key-0123456789";
    let mut s = Stack::default()
        .topics(&[TOPIC, "elsewhere"])
        .redis()
        .instance("")
        .instance(json!({"kafka": {"topics": ["elsewhere"]}, "api": {"key": KEY}}))
        .start()
        .await;
    s.heralds[0].wait_assigned(4).await;
    s.connect("una", 1, "una").await;
    let value = json!({"userId": "una", "n": 1}).to_string();
    s.kafka.produce_with_headers(TOPIC, 0, "una", value.as_bytes(), &[("traceparent", &traceparent())]).await;
    let args = notifications(&mut s.c, "una", 1).await;
    assert_eq!(args[0][1]["traceparent"], traceparent(), "the record's own, unchanged, across Redis");

    // The publish API takes the caller's traceparent header the same way.
    let api_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let response = reqwest::Client::new()
        .post(format!("{}/api/publish", s.url(1)))
        .bearer_auth(KEY)
        .header("traceparent", api_trace)
        .json(&json!({"user_id": "una", "payload": {"n": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let args = notifications(&mut s.c, "una", 2).await;
    assert_eq!(args[1][1]["traceparent"], api_trace);
}
