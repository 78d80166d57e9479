//! Redis replies as herald reads them: counts, stream entries, and fred's values in the
//! frame form of herald's own connections.

use super::*;

/// An integer reply as a count (0 for anything else, or a negative).
pub(super) fn integer(frame: Option<&Frame>) -> usize {
    match frame {
        Some(Frame::Integer(n)) => (*n).max(0) as usize,
        _ => 0,
    }
}

/// A reply fred read, in the form herald's own connections read.
pub(super) fn frame_of(value: fred::types::Value) -> Frame {
    use fred::types::Value;
    match value {
        Value::Integer(n) => Frame::Integer(n),
        Value::Boolean(b) => Frame::Integer(b as i64),
        Value::Null => Frame::Bulk(None),
        Value::Array(items) => Frame::Array(Some(items.into_iter().map(frame_of).collect())),
        Value::Bytes(b) => Frame::Bulk(Some(b)),
        Value::String(s) => Frame::Bulk(Some(s.into_inner())),
        Value::Double(d) => Frame::Bulk(Some(Bytes::from(d.to_string()))),
        other => Frame::Bulk(other.as_bytes().map(Bytes::copy_from_slice)),
    }
}

/// Stream entries `[[id, [field, value, ...]], ...]` as retained notifications.
pub(super) fn parse_entries(value: fred::types::Value) -> Vec<Retained> {
    use fred::types::Value;
    let Value::Array(entries) = value else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else { return None };
            let fields = match parts.pop()? {
                Value::Array(f) => f,
                _ => return None,
            };
            let id: NotificationId = parts.pop()?.as_string()?.parse().ok()?;
            let (mut event, mut payload) = (None, None);
            for pair in fields.chunks(2) {
                match (pair[0].as_string().as_deref(), pair.get(1).and_then(|v| v.as_string())) {
                    (Some("e"), Some(v)) => event = Some(v),
                    (Some("p"), Some(v)) => payload = RawValue::from_string(v).ok(),
                    _ => {}
                }
            }
            Some(Retained { id, event: event?, payload: payload? })
        })
        .collect()
}
