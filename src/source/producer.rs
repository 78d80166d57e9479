//! The Kafka producers herald writes with (dead letters, offline hand-off, receipts): one
//! setup, sharing the consumer's security and client settings.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;

/// librdkafka settings from `kafka.options` that a producer needs too (security, client id).
const SHARED_PREFIXES: &[&str] = &["security.", "sasl.", "ssl.", "client.id", "socket.", "broker."];

/// A producer with the consumer's security and client settings, acks awaited within 10 s.
pub fn producer_for(bootstrap: &str, options: &BTreeMap<String, String>) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut config = ClientConfig::new();
    for (k, v) in options.iter().filter(|(k, _)| SHARED_PREFIXES.iter().any(|p| k.starts_with(p))) {
        config.set(k, v);
    }
    config.set("bootstrap.servers", bootstrap).set("message.timeout.ms", "10000").create()
}
