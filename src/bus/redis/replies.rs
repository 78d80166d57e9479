//! Redis replies as herald reads them: counts and stream entries.

use serde_json::value::RawValue;

use super::resp::Value;
use crate::replay::{NotificationId, Retained};

/// An integer reply as a count (0 for anything else, or a negative).
pub(super) fn integer(value: Option<&Value>) -> usize {
    match value {
        Some(Value::Integer(n)) => (*n).max(0) as usize,
        _ => 0,
    }
}

/// Stream entries `[[id, [field, value, ...]], ...]` as retained notifications.
pub(super) fn parse_entries(reply: Value) -> Vec<Retained> {
    let Value::Array(Some(entries)) = reply else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(Some(mut parts)) = entry else { return None };
            let Value::Array(Some(fields)) = parts.pop()? else { return None };
            let id: NotificationId = parts.pop()?.as_str()?.parse().ok()?;
            let (mut event, mut payload) = (None, None);
            for pair in fields.chunks(2) {
                match (pair[0].as_str(), pair.get(1).and_then(Value::as_str)) {
                    (Some("e"), Some(v)) => event = Some(v.to_owned()),
                    (Some("p"), Some(v)) => payload = RawValue::from_string(v.to_owned()).ok(),
                    _ => {}
                }
            }
            Some(Retained { id, event: event?, payload: payload? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn stream_entries_become_retained_notifications() {
        let bulk = |s: &str| Value::Bulk(Some(Bytes::from(s.to_owned())));
        let entry =
            |id: &str, fields: &[&str]| Value::Array(Some(vec![bulk(id), Value::Array(Some(fields.iter().map(|f| bulk(f)).collect()))]));
        let reply = Value::Array(Some(vec![
            entry("1-0", &["e", "notification", "t", "5", "p", "{\"a\":1}"]),
            entry("2-0", &["e", "notification"]),
            entry("3-1", &["p", "[1]", "e", "x", "o", "k"]),
        ]));
        let got = parse_entries(reply);
        assert_eq!(got.len(), 2, "an entry without its payload is skipped");
        assert_eq!((got[0].id.to_string(), got[0].payload.get()), ("1-0".to_owned(), "{\"a\":1}"));
        assert_eq!((got[1].event.as_str(), got[1].payload.get()), ("x", "[1]"));
    }
}
