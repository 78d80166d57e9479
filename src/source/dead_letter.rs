//! The optional dead-letter topic: records that fail permanently (not JSON, no user id, a
//! script error) are produced there, with headers naming the error and where they came from,
//! so nobody has to dig them out of logs.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::producer::producer_for;
use crate::metrics::LabelValue;
use crate::route::{Record, RouteError};

pub struct DeadLetter {
    topic: String,
    producer: FutureProducer,
}

impl DeadLetter {
    pub fn new(topic: &str, bootstrap: &str, options: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let producer =
            producer_for(bootstrap, options).map_err(|e| anyhow::anyhow!("kafka.dead_letter_topic: cannot create the producer: {e}"))?;
        Ok(Self { topic: topic.to_owned(), producer })
    }

    /// Produces the record as it came, with `herald-*` headers; waits for the broker's ack.
    pub async fn send(&self, record: &Record<'_>, error: &RouteError) -> Result<(), String> {
        let (partition, offset) = (record.partition.to_string(), record.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "herald-error", value: Some(error.reason.as_label()) })
            .insert(Header { key: "herald-error-detail", value: Some(truncate(&error.detail, 1000)) })
            .insert(Header { key: "herald-source-topic", value: Some(record.topic) })
            .insert(Header { key: "herald-source-partition", value: Some(&partition) })
            .insert(Header { key: "herald-source-offset", value: Some(&offset) });
        let mut out = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = record.key {
            out = out.key(key);
        }
        if let Some(value) = record.value {
            out = out.payload(value);
        }
        self.producer.send(out, Duration::from_secs(10)).await.map(|_| ()).map_err(|(e, _)| e.to_string())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
