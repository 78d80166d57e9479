//! The offline hand-off: notifications whose user had no socket on any instance are produced to
//! `kafka.offline_topic` (or their source topic's own `offline_topic`), for a push, e-mail or
//! SMS worker, before their records' offsets are committed (at least once).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::producer::producer_for;
use crate::config::KafkaConfig;
use crate::notification::Notification;

/// A notification's origin, `topic/partition/offset/index`, as (topic, partition, offset). Split
/// from the right: a topic name has no `/`, but the split does not rely on it.
fn origin_of(n: &Notification) -> Option<(&str, &str, &str)> {
    let mut parts = n.origin.as_deref()?.rsplitn(4, '/');
    let (_index, offset, partition, topic) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some((topic, partition, offset))
}

pub struct OfflineHandOff {
    /// Consumed topic -> where its offline notifications go (topics without one are absent).
    targets: BTreeMap<String, String>,
    producer: FutureProducer,
}

impl OfflineHandOff {
    /// `None` when no topic has an offline topic.
    pub fn new(kafka: &KafkaConfig, bootstrap: &str) -> anyhow::Result<Option<Self>> {
        let targets: BTreeMap<String, String> =
            kafka.topics.iter().filter_map(|t| kafka.offline_topic_for(&t.name).map(|o| (t.name.clone(), o.to_owned()))).collect();
        if targets.is_empty() {
            return Ok(None);
        }
        let producer =
            producer_for(bootstrap, &kafka.options).map_err(|e| anyhow::anyhow!("kafka.offline_topic: cannot create the producer: {e}"))?;
        Ok(Some(Self { targets, producer }))
    }

    /// Where `n` is handed off, if it is a user's (a group's or a broadcast is not handed
    /// off: no one user was missed) and its source topic has somewhere.
    pub fn target(&self, n: &Notification) -> Option<&str> {
        n.to.user()?;
        self.targets.get(origin_of(n)?.0).map(String::as_str)
    }

    /// Produces each notification, keyed by its user: `{"user_id","event","payload","timestamp_ms"}`
    /// with `herald-source-topic`, `-partition`, `-offset` headers from its origin. Waits for
    /// every ack; `Err` when any failed (the caller sends them all again: a duplicate is
    /// allowed, a gap is not).
    pub async fn send(&self, notifications: &[&Notification]) -> Result<(), String> {
        let sends = notifications.iter().filter_map(|n| Some((*n, n.to.user()?, self.target(n)?, origin_of(n)?)));
        let sends = sends.map(|(n, user, target, origin)| async move {
            let value = serde_json::json!({
                "user_id": user, "event": &*n.event, "payload": &n.payload, "timestamp_ms": n.timestamp_ms,
            })
            .to_string();
            let (topic, partition, offset) = origin;
            let headers = OwnedHeaders::new()
                .insert(Header { key: "herald-source-topic", value: Some(topic) })
                .insert(Header { key: "herald-source-partition", value: Some(partition) })
                .insert(Header { key: "herald-source-offset", value: Some(offset) });
            let record = FutureRecord::<str, str>::to(target).key(user).payload(&value).headers(headers);
            self.producer.send(record, Duration::from_secs(10)).await.map(drop).map_err(|(e, _)| e.to_string())
        });
        futures::future::join_all(sends).await.into_iter().collect()
    }
}
