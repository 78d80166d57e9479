//! Receipts: a client acknowledges a notification (`delivered` or `read`) by emitting
//! `server.receipt_event` with `{id, state}`; herald produces it to `kafka.receipts_topic` with
//! the user id of the authenticated socket (a client can never write a receipt for another
//! user), the socket id and a timestamp, and acks the client once Kafka has it. A receipt that
//! carries its notification's `traceparent` (the second argument's) has it as a record header.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::clock::unix_ms;
use crate::telemetry::TraceContext;

/// Longest notification id a receipt may name (herald's own are far shorter).
const MAX_ID: usize = 256;

pub struct Receipts {
    topic: String,
    producer: FutureProducer,
    /// The event clients emit.
    pub event: String,
    per_sec: u32,
}

/// Why a receipt was not taken: its ack's `error`.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Invalid(&'static str),
    RateLimited,
    Failed(String),
}

impl Refused {
    pub fn message(&self) -> String {
        match self {
            Refused::Invalid(why) => (*why).to_owned(),
            Refused::RateLimited => "too many receipts".to_owned(),
            Refused::Failed(why) => format!("not recorded: {why}"),
        }
    }
}

impl Receipts {
    /// Receipts produced to `topic` with `producer` (the app makes it with the consumer's
    /// security settings), at most `per_sec` a second per socket.
    pub fn new(topic: &str, event: &str, per_sec: u32, producer: FutureProducer) -> Self {
        Self { topic: topic.to_owned(), producer, event: event.to_owned(), per_sec }
    }

    /// Checks `data` (`{id, state}`) and the socket's rate (`window`: its per-socket counter),
    /// then produces `{user_id, id, state, socket_id, timestamp_ms}` keyed by user id and waits
    /// for Kafka's ack.
    pub async fn record(&self, user_id: &str, socket_id: &str, window: &AtomicU64, data: &Value) -> Result<(), Refused> {
        let (id, state) = parse(data)?;
        if !take(window, self.per_sec, unix_ms().max(0) as u64 / 1000) {
            return Err(Refused::RateLimited);
        }
        let value = json!({"user_id": user_id, "id": id, "state": state, "socket_id": socket_id, "timestamp_ms": unix_ms()}).to_string();
        let mut record = FutureRecord::<str, str>::to(&self.topic).key(user_id).payload(&value);
        // The notification's trace, handed back by the client: the receipt closes it.
        if let Some(trace) = trace_of(data) {
            let mut headers = OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(trace.traceparent()) });
            if let Some(state) = trace.tracestate() {
                headers = headers.insert(Header { key: "tracestate", value: Some(state) });
            }
            record = record.headers(headers);
        }
        self.producer.send(record, Duration::from_secs(10)).await.map(drop).map_err(|(e, _)| Refused::Failed(e.to_string()))
    }
}

/// The `traceparent` (and `tracestate`) a receipt carries, as its notification's second
/// argument gave them; an invalid one is left out, the receipt still taken.
fn trace_of(data: &Value) -> Option<TraceContext> {
    let traceparent = data.get("traceparent")?.as_str()?;
    TraceContext::parse(traceparent, data.get("tracestate").and_then(Value::as_str))
}

fn parse(data: &Value) -> Result<(&str, &str), Refused> {
    let id = data.get("id").and_then(Value::as_str).filter(|id| !id.is_empty() && id.len() <= MAX_ID);
    let Some(id) = id else { return Err(Refused::Invalid("`id` must be a notification's id")) };
    match data.get("state").and_then(Value::as_str) {
        Some(state @ ("delivered" | "read")) => Ok((id, state)),
        _ => Err(Refused::Invalid("`state` must be \"delivered\" or \"read\"")),
    }
}

/// A per-second window in one word: the second in the high 40 bits, the count below.
fn take(window: &AtomicU64, per_sec: u32, now_sec: u64) -> bool {
    let mut current = window.load(Ordering::Acquire);
    loop {
        let (second, count) = (current >> 24, current & 0xFF_FFFF);
        let next = if second == now_sec {
            if count >= u64::from(per_sec) {
                return false;
            }
            current + 1
        } else {
            (now_sec << 24) | 1
        };
        match window.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_name_an_id_and_a_known_state() {
        assert_eq!(parse(&json!({"id": "1-0", "state": "read"})), Ok(("1-0", "read")));
        assert_eq!(parse(&json!({"id": "t/0/5/0", "state": "delivered"})), Ok(("t/0/5/0", "delivered")));
        for bad in [
            json!({"id": "1-0"}),
            json!({"id": "", "state": "read"}),
            json!({"id": 5, "state": "read"}),
            json!({"state": "read"}),
            json!({"id": "x", "state": "seen"}),
            json!("x"),
        ] {
            assert!(matches!(parse(&bad), Err(Refused::Invalid(_))), "{bad}");
        }
        assert!(parse(&json!({"id": "x".repeat(MAX_ID + 1), "state": "read"})).is_err());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_of(&json!({"id": "x", "state": "read", "traceparent": tp})).unwrap().traceparent(), tp);
        assert_eq!(trace_of(&json!({"id": "x", "state": "read", "traceparent": "junk"})), None);
        assert_eq!(trace_of(&json!({"id": "x", "state": "read"})), None);
    }

    #[test]
    fn the_rate_is_per_second() {
        let w = AtomicU64::new(0);
        assert!(take(&w, 2, 100) && take(&w, 2, 100));
        assert!(!take(&w, 2, 100));
        assert!(take(&w, 2, 101), "a new second");
    }
}
