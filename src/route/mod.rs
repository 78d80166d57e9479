//! Routing: turns one Kafka record into the notifications it causes (who, which event, what
//! payload). It owns the per-topic rules; it does not read Kafka or talk to the bus.

mod pointer;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::auth::user_id_from_json;
use crate::config::{Config, UserIdSource};
use crate::metrics::DropReason;

/// A Kafka record as the router sees it, borrowed from the consumer's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Milliseconds since the epoch, from the record (producer or broker time).
    pub timestamp_ms: Option<i64>,
}

/// One notification for one user, ready for the bus.
#[derive(Debug, Clone)]
pub struct Notification {
    pub user_id: String,
    pub event: Arc<str>,
    /// The payload as JSON text, kept raw so it is serialised once and never re-parsed.
    pub payload: Box<RawValue>,
    /// When the record was produced, for the end-to-end latency histogram.
    pub timestamp_ms: i64,
}

/// Why a record produced no notification. Permanent: the record is counted and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct RouteError {
    pub reason: DropReason,
    pub detail: String,
}

impl RouteError {
    fn new(reason: DropReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// The default rule: user id from a JSON pointer or the key, payload = the whole value.
#[derive(Debug, Clone)]
struct DefaultRule {
    user_id: UserIdSource,
    event: Arc<str>,
}

/// Every topic's rule, chosen by topic name.
pub struct Router {
    rules: HashMap<String, DefaultRule>,
    fallback: DefaultRule,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let event: Arc<str> = config.server.event.as_str().into();
        let fallback = DefaultRule { user_id: config.routes.user_id.clone(), event: event.clone() };
        let rules = config
            .kafka
            .topics
            .iter()
            .map(|t| {
                let rule = DefaultRule {
                    user_id: t.user_id.clone().unwrap_or_else(|| fallback.user_id.clone()),
                    event: t.event.as_deref().map(Arc::from).unwrap_or_else(|| event.clone()),
                };
                (t.name.clone(), rule)
            })
            .collect();
        Self { rules, fallback }
    }

    /// Routes one record. Appends its notifications to `out` (so a batch reuses one buffer).
    pub fn route(&self, record: &Record<'_>, out: &mut Vec<Notification>) -> Result<(), RouteError> {
        let rule = self.rules.get(record.topic).unwrap_or(&self.fallback);
        let value = record.value.filter(|v| !v.is_empty()).ok_or_else(|| RouteError::new(DropReason::Empty, "record has no value"))?;
        let text = std::str::from_utf8(value).map_err(|_| RouteError::new(DropReason::BadJson, "value is not UTF-8"))?;
        let raw: &RawValue =
            serde_json::from_str(text).map_err(|e| RouteError::new(DropReason::BadJson, format!("value is not JSON: {e}")))?;
        let user_id = match &rule.user_id {
            UserIdSource::Key => {
                let key = record.key.ok_or_else(|| RouteError::new(DropReason::NoUserId, "record has no key"))?;
                match std::str::from_utf8(key) {
                    Ok(k) if !k.is_empty() => k.to_owned(),
                    _ => return Err(RouteError::new(DropReason::BadUserId, "key is empty or not UTF-8")),
                }
            }
            UserIdSource::Pointer(pointer) => {
                let leaf = pointer::lookup(raw, pointer)
                    .map_err(|e| RouteError::new(DropReason::BadJson, format!("value is not JSON: {e}")))?
                    .ok_or_else(|| RouteError::new(DropReason::NoUserId, format!("no user id at {pointer}")))?;
                let leaf: serde_json::Value =
                    serde_json::from_str(leaf.get()).map_err(|e| RouteError::new(DropReason::BadJson, e.to_string()))?;
                user_id_from_json(&leaf).ok_or_else(|| {
                    RouteError::new(DropReason::BadUserId, format!("user id at {pointer} is not a non-empty string or an integer"))
                })?
            }
        };
        out.push(Notification {
            user_id,
            event: rule.event.clone(),
            payload: raw.to_owned(),
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
        });
        Ok(())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(yaml: &str) -> Router {
        let config = Config::from_yaml(&format!("auth: {{jwt: {{secret: s}}}}\n{yaml}"), ".".into(), &|_| None).unwrap();
        Router::new(&config)
    }

    fn record<'a>(topic: &'a str, key: Option<&'a [u8]>, value: &'a [u8]) -> Record<'a> {
        Record { topic, partition: 0, offset: 7, key, value: Some(value), timestamp_ms: Some(1000) }
    }

    fn route(r: &Router, rec: Record<'_>) -> Result<Vec<Notification>, RouteError> {
        let mut out = Vec::new();
        r.route(&rec, &mut out).map(|()| out)
    }

    #[test]
    fn default_rule_takes_user_id_from_pointer_and_keeps_the_whole_value() {
        let r = router("");
        let value = br#"{"userId":"u42","type":"order.shipped","body":{"id":1}}"#;
        let n = route(&r, record("user-notifications", None, value)).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].user_id, "u42");
        assert_eq!(&*n[0].event, "notification");
        assert_eq!(n[0].payload.get(), std::str::from_utf8(value).unwrap());
        assert_eq!(n[0].timestamp_ms, 1000);
    }

    #[test]
    fn numeric_user_ids_and_nested_pointers_work() {
        let r = router("routes: {user_id: /to/id}");
        let n = route(&r, record("user-notifications", None, br#"{"to":{"id":42}}"#)).unwrap();
        assert_eq!(n[0].user_id, "42");
    }

    #[test]
    fn key_rule_and_per_topic_event() {
        let r = router("kafka: {topics: [{name: t, user_id: key, event: alert}]}");
        let n = route(&r, record("t", Some(b"u7"), br#"{"x":1}"#)).unwrap();
        assert_eq!((n[0].user_id.as_str(), &*n[0].event), ("u7", "alert"));
        let e = route(&r, record("t", None, br#"{"x":1}"#)).unwrap_err();
        assert_eq!(e.reason, DropReason::NoUserId);
        let e = route(&r, record("t", Some(&[0xff, 0xfe]), br#"{"x":1}"#)).unwrap_err();
        assert_eq!(e.reason, DropReason::BadUserId);
    }

    #[test]
    fn bad_records_are_classified() {
        let r = router("");
        let reason = |v: &[u8]| route(&r, record("user-notifications", None, v)).unwrap_err().reason;
        assert_eq!(reason(b""), DropReason::Empty);
        assert_eq!(reason(b"not json"), DropReason::BadJson);
        assert_eq!(reason(&[0xff, 0x00]), DropReason::BadJson);
        assert_eq!(reason(br#"{"userId":"u1""#), DropReason::BadJson);
        assert_eq!(reason(br#"{"other":1}"#), DropReason::NoUserId);
        assert_eq!(reason(br#"{"userId":null}"#), DropReason::BadUserId);
        assert_eq!(reason(br#"{"userId":""}"#), DropReason::BadUserId);
        assert_eq!(reason(br#"{"userId":{"a":1}}"#), DropReason::BadUserId);
        assert_eq!(reason(br#"[1,2]"#), DropReason::NoUserId);
        assert_eq!(reason(br#"{"userId":"u","junk":[1,}"#), DropReason::BadJson, "the whole value is validated");
    }
}
