//! The wire form of a notification on the bus: `{"e":event,"t":timestamp_ms,"c":consumed_us,"p":payload}`,
//! with `"i":id` first for retained notifications (added by the Redis store script), `"o"` its
//! origin (its id for receipts), and `"g"` every group its record addressed, on a group's
//! channel when there were several. `"c"` (when the record was taken from Kafka, for herald's
//! own latency) is optional, as for any publisher other than herald. `"tp"` and `"ts"` carry the
//! W3C `traceparent` and `tracestate` of a notification that continues a trace (any publisher
//! may add them; an invalid `"tp"` is ignored).
//!
//! JSON so that operators can read it with `redis-cli subscribe` and other services can publish
//! to a user's channel; the payload is spliced in as raw text and read back borrowed, so it is
//! never parsed into a tree on either side.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::notification::{Audience, Notification};
use crate::replay::NotificationId;

/// A notification as it arrives, borrowed from its message.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    pub event: &'a str,
    pub payload: &'a RawValue,
    /// When its record was produced (milliseconds since the epoch).
    pub timestamp_ms: i64,
    /// When herald consumed its record (microseconds since the epoch); 0 if unknown.
    pub consumed_us: i64,
    /// The W3C trace context it continues, as its publisher wrote it (checked where used).
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(rename = "e", borrow)]
    pub event: Cow<'a, str>,
    #[serde(rename = "t", default)]
    pub timestamp_ms: i64,
    /// Read leniently: another publisher's `"c"` of any type must not make the message unreadable.
    #[serde(rename = "c", default, borrow)]
    consumed: Option<&'a RawValue>,
    #[serde(rename = "p", borrow)]
    pub payload: &'a RawValue,
    /// The id in the user's history, for retained notifications.
    #[serde(rename = "i", default, borrow)]
    pub id: Option<Cow<'a, str>>,
    /// Where a live notification came from (`topic/partition/offset/index`), when herald was
    /// asked to keep it: its id for receipts.
    #[serde(rename = "o", default, borrow)]
    pub origin: Option<Cow<'a, str>>,
    /// On a group's channel: all the groups the record addressed, when more than one.
    #[serde(rename = "g", default, borrow)]
    pub among: Vec<Cow<'a, str>>,
    #[serde(rename = "tp", default, borrow)]
    pub traceparent: Option<Cow<'a, str>>,
    #[serde(rename = "ts", default, borrow)]
    pub tracestate: Option<Cow<'a, str>>,
}

impl<'a> Envelope<'a> {
    /// What the notification is, to hand to the sockets.
    pub fn arrival(&'a self) -> Arrival<'a> {
        Arrival {
            event: &self.event,
            payload: self.payload,
            timestamp_ms: self.timestamp_ms,
            consumed_us: self.consumed_us(),
            traceparent: self.traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
        }
    }

    /// When herald took the record, in microseconds since the epoch; 0 if absent or not an integer.
    pub fn consumed_us(&self) -> i64 {
        self.consumed.and_then(|c| c.get().parse().ok()).unwrap_or(0)
    }
}

pub fn encode(n: &Notification) -> String {
    encode_with(n, None)
}

/// The live message of a notification already stored in the user's history as `id`, as the
/// store script publishes it.
pub fn encode_stored(n: &Notification, id: NotificationId) -> String {
    encode_with(n, Some(id))
}

fn encode_with(n: &Notification, id: Option<NotificationId>) -> String {
    let payload = n.payload.get();
    let mut out = String::with_capacity(payload.len() + n.event.len() + 80);
    out.push('{');
    if let Some(id) = id {
        out.push_str(&format!("\"i\":\"{id}\","));
    }
    out.push_str("\"e\":");
    // Event names come from config or scripts and may need escaping.
    out.push_str(&serde_json::to_string(&*n.event).expect("a string always serialises"));
    out.push_str(",\"t\":");
    out.push_str(itoa::Buffer::new().format(n.timestamp_ms));
    if n.consumed_us > 0 {
        out.push_str(",\"c\":");
        out.push_str(itoa::Buffer::new().format(n.consumed_us));
    }
    if id.is_none()
        && let Some(origin) = &n.origin
    {
        out.push_str(",\"o\":");
        out.push_str(&serde_json::to_string(&**origin).expect("a string always serialises"));
    }
    if let Audience::Group { among: Some(all), .. } = &n.to {
        out.push_str(",\"g\":");
        out.push_str(&serde_json::to_string(&**all).expect("strings always serialise"));
    }
    if let Some(trace) = &n.trace {
        // A checked traceparent is hex and dashes; a tracestate may need escaping.
        out.push_str(",\"tp\":\"");
        out.push_str(trace.traceparent());
        out.push('"');
        if let Some(state) = trace.tracestate() {
            out.push_str(",\"ts\":");
            out.push_str(&serde_json::to_string(state).expect("a string always serialises"));
        }
    }
    out.push_str(",\"p\":");
    out.push_str(payload);
    out.push('}');
    out
}

pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// A message to every instance, on the broadcast channel, that is not a notification:
/// `{"x":"end","u":[user ids],"r":ms}` ends the sessions of those users everywhere (`"r"`, when
/// present: their tokens issued before that moment are refused). No notification has `"x"`.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Control<'a> {
    #[serde(rename = "x", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(rename = "u", borrow, default)]
    pub users: Vec<Cow<'a, str>>,
    #[serde(rename = "r", default)]
    pub revoked_at_ms: Option<i64>,
}

/// The control message that ends `users`' sessions.
pub fn encode_end_sessions(users: &[String], revoked_at_ms: Option<i64>) -> String {
    let users = serde_json::to_string(users).expect("strings always serialise");
    match revoked_at_ms {
        Some(at) => format!(r#"{{"x":"end","u":{users},"r":{at}}}"#),
        None => format!(r#"{{"x":"end","u":{users}}}"#),
    }
}

/// The marker of a socket's move between instances, published on each of its channels
/// (`{"x":"cut","m":token}`): notifications before it on a channel are the old instance's to
/// deliver, those after it the new one's. Other subscribers of the channels ignore it.
pub fn encode_cut(token: u64) -> String {
    format!(r#"{{"x":"cut","m":{token}}}"#)
}

/// The token of a move's marker, if `bytes` is one.
pub fn decode_cut(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.strip_prefix(br#"{"x":"cut","m":"#)?.strip_suffix(b"}")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// A control message, if `bytes` is one (it starts `{"x":`, as herald writes them).
pub fn decode_control(bytes: &[u8]) -> Option<Control<'_>> {
    if !bytes.starts_with(br#"{"x":"#) {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// A message on an instance's own channel: a long-polling request forwarded to the instance
/// holding its session (`{"x":"req","i":id,"f":from tag,"s":sid,"p":is POST,"t":content type,"b":body}`),
/// or the answer (`{"x":"res","i":id,"c":status,"t":content type,"b":body}`); or a step of moving
/// a session to the instance that received its WebSocket upgrade
/// (`{"x":"move","i":id,"f":from tag,"s":sid,"m":"probe"|"take"|"release"}`), answered the same
/// way. Bodies are Engine.IO long-polling payloads (or a moved session's state), which are text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(tag = "x")]
pub enum Relayed {
    #[serde(rename = "req")]
    Request {
        #[serde(flatten)]
        asking: Asking,
        #[serde(rename = "p")]
        post: bool,
        #[serde(rename = "t", default)]
        content_type: Option<String>,
        #[serde(rename = "b")]
        body: String,
    },
    #[serde(rename = "move")]
    Move {
        #[serde(flatten)]
        asking: Asking,
        #[serde(rename = "m")]
        step: MoveStep,
    },
    #[serde(rename = "res")]
    Response {
        #[serde(rename = "i")]
        id: u64,
        #[serde(rename = "c")]
        status: u16,
        #[serde(rename = "t")]
        content_type: String,
        #[serde(rename = "b")]
        body: String,
    },
}

/// Who asks, under which id its answer comes back, and about which session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Asking {
    #[serde(rename = "i")]
    pub id: u64,
    /// The asking instance's tag.
    #[serde(rename = "f")]
    pub from: String,
    #[serde(rename = "s")]
    pub sid: String,
}

/// The steps of moving a session, as the instance holding it answers them (see
/// `socketio::engine::moving`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveStep {
    Probe,
    Take,
    Release,
}

impl Relayed {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("strings and numbers always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_without_touching_the_payload() {
        let n = Notification {
            to: Audience::User("u".into()),
            event: "no\"tif".into(),
            payload: RawValue::from_string(r#"{"a": [1, 2], "b":"é"}"#.into()).unwrap(),
            timestamp_ms: 1_700_000_000_123,
            consumed_us: 1_700_000_000_123_456,
            retain: false,
            origin: None,
            trace: None,
        };
        let wire = encode(&n);
        let env = decode(wire.as_bytes()).unwrap();
        assert_eq!(env.event, "no\"tif");
        assert_eq!(env.timestamp_ms, 1_700_000_000_123);
        assert_eq!(env.consumed_us(), 1_700_000_000_123_456);
        assert_eq!(env.payload.get(), r#"{"a": [1, 2], "b":"é"}"#);
        assert_eq!(env.id, None);
        let stored = encode_stored(&n, NotificationId { ms: 17, seq: 2 });
        let env = decode(stored.as_bytes()).unwrap();
        assert_eq!((env.id.as_deref(), env.payload.get()), (Some("17-2"), r#"{"a": [1, 2], "b":"é"}"#));
        let with_id = decode(br#"{"i":"17-2","e":"n","t":1,"p":{}}"#).unwrap();
        assert_eq!(with_id.id.as_deref(), Some("17-2"));
        assert_eq!(with_id.consumed_us(), 0, "optional, for publishers other than herald");
        let with_origin = Notification { origin: Some("t/1/2/0".into()), ..n };
        assert_eq!(decode(encode(&with_origin).as_bytes()).unwrap().origin.as_deref(), Some("t/1/2/0"));
        let grouped = Notification { to: Audience::groups(vec!["a".into(), "b\"".into()]).remove(1), ..with_origin };
        assert_eq!(decode(encode(&grouped).as_bytes()).unwrap().among, ["a", "b\""]);
        let foreign = decode(br#"{"e":"n","c":"yesterday","p":{}}"#).unwrap();
        assert_eq!(foreign.consumed_us(), 0, "another publisher's `c` is ignored, not an error");
    }

    #[test]
    fn control_messages_round_trip_and_are_no_notification() {
        let users = vec!["a".to_owned(), "b\"".to_owned()];
        let wire = encode_end_sessions(&users, Some(17));
        let control = decode_control(wire.as_bytes()).unwrap();
        assert_eq!((control.kind.as_ref(), control.users.len(), control.revoked_at_ms), ("end", 2, Some(17)));
        assert_eq!(control.users[1], "b\"");
        assert_eq!(decode_control(encode_end_sessions(&users, None).as_bytes()).unwrap().revoked_at_ms, None);
        assert!(decode(wire.as_bytes()).is_err(), "not a notification");
        assert_eq!(decode_control(br#"{"e":"n","t":1,"p":{}}"#), None, "a notification is not a control message");
    }

    #[test]
    fn foreign_messages_are_refused() {
        assert!(decode(b"hello").is_err());
        assert!(decode(br#"{"e":"x"}"#).is_err());
    }

    #[test]
    fn relayed_requests_and_answers_round_trip() {
        let asking = Asking { id: 7, from: "AbC_".into(), sid: "AbC_0123456789abcdef".into() };
        let request = Relayed::Request {
            asking: asking.clone(),
            post: true,
            content_type: Some("text/plain;charset=UTF-8".into()),
            body: "4\u{1e}2[\"x\"]".into(),
        };
        assert_eq!(Relayed::decode(request.encode().as_bytes()), Some(request.clone()));
        assert!(request.encode().starts_with(r#"{"x":"req""#));
        let answer = Relayed::Response { id: 7, status: 200, content_type: "text/html".into(), body: "ok".into() };
        assert_eq!(Relayed::decode(answer.encode().as_bytes()), Some(answer));
        assert_eq!(Relayed::decode(b"{\"x\":\"end\",\"u\":[]}"), None);
        let step = Relayed::Move { asking, step: MoveStep::Take };
        assert_eq!(step.encode(), r#"{"x":"move","i":7,"f":"AbC_","s":"AbC_0123456789abcdef","m":"take"}"#);
        assert_eq!(Relayed::decode(step.encode().as_bytes()), Some(step));
    }

    #[test]
    fn cut_markers_round_trip_and_are_no_notification() {
        let wire = encode_cut(u64::MAX);
        assert_eq!(decode_cut(wire.as_bytes()), Some(u64::MAX));
        assert!(decode(wire.as_bytes()).is_err(), "not a notification");
        assert_eq!(decode_cut(br#"{"x":"cut","m":-1}"#), None);
        assert_eq!(decode_cut(br#"{"x":"end","u":[]}"#), None);
        assert_eq!(decode_cut(br#"{"e":"n","t":1,"p":{}}"#), None);
    }
}
