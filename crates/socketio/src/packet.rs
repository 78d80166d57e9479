//! Socket.IO v5 packets: `<type>[<attachments>-][<namespace>,][<ack id>][<json>]`, read from an
//! Engine.IO message and written for one.

use std::fmt;

use serde_json::value::RawValue;

/// Packet types (socket.io-protocol v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl Kind {
    fn from_digit(d: u8) -> Option<Self> {
        Some(match d {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    pub fn digit(self) -> u8 {
        match self {
            Self::Connect => b'0',
            Self::Disconnect => b'1',
            Self::Event => b'2',
            Self::Ack => b'3',
            Self::ConnectError => b'4',
            Self::BinaryEvent => b'5',
            Self::BinaryAck => b'6',
        }
    }

    fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

/// Why a packet is refused; each ends the client's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    UnknownType,
    BadAttachments,
    BadJson,
    /// Valid JSON of the wrong shape for its type (an event that is not an array, ...).
    BadPayload,
    /// An ack id on a packet that cannot be acknowledged (only events and acks carry one).
    UnexpectedId,
}

impl PacketError {
    /// A short label, for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownType => "unknown_packet_type",
            Self::BadAttachments => "bad_attachments",
            Self::BadJson => "bad_json",
            Self::BadPayload => "bad_payload",
            Self::UnexpectedId => "unexpected_id",
        }
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The most binary attachments one packet may announce.
pub const MAX_ATTACHMENTS: usize = 64;

/// A parsed packet, borrowing from the message it came in.
#[derive(Debug)]
pub struct Packet<'a> {
    pub kind: Kind,
    /// Binary attachments that follow as separate Engine.IO messages.
    pub attachments: usize,
    pub namespace: &'a str,
    /// The ack id; an id too large for an i64 is dropped, as if none was sent.
    pub id: Option<i64>,
    /// The JSON payload, checked to be JSON of the shape its type needs.
    pub payload: Option<&'a RawValue>,
}

/// Event names the protocol reserves: a client may not emit them.
const RESERVED_EVENTS: [&str; 6] = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

pub fn parse(text: &str) -> Result<Packet<'_>, PacketError> {
    let bytes = text.as_bytes();
    let kind = bytes.first().and_then(|d| Kind::from_digit(*d)).ok_or(PacketError::UnknownType)?;
    let mut at = 1;
    let mut attachments = 0;
    if kind.is_binary() {
        let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 3 || bytes.get(at + digits) != Some(&b'-') {
            return Err(PacketError::BadAttachments);
        }
        attachments = text[at..at + digits].parse().map_err(|_| PacketError::BadAttachments)?;
        if attachments > MAX_ATTACHMENTS {
            return Err(PacketError::BadAttachments);
        }
        at += digits + 1;
    }
    let mut namespace = "/";
    if bytes.get(at) == Some(&b'/') {
        let end = bytes[at..].iter().position(|b| *b == b',').map_or(bytes.len(), |p| at + p);
        namespace = &text[at..end];
        at = (end + 1).min(bytes.len());
    }
    let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    // Only events and acks carry an id; elsewhere digits there would be ambiguous with a payload
    // that starts with one (`05` for CONNECT: id 5, or the number 5?), so they are refused.
    if digits > 0 && !matches!(kind, Kind::Event | Kind::BinaryEvent | Kind::Ack | Kind::BinaryAck) {
        return Err(PacketError::UnexpectedId);
    }
    let id = (digits > 0).then(|| text[at..at + digits].parse::<i64>().ok()).flatten();
    at += digits;
    let payload = match &text[at..] {
        "" => None,
        json => Some(serde_json::from_str::<&RawValue>(json).map_err(|_| PacketError::BadJson)?),
    };
    check_shape(kind, payload)?;
    Ok(Packet { kind, attachments, namespace, id, payload })
}

/// The payload shape each type needs, as socket.io-parser checks it.
fn check_shape(kind: Kind, payload: Option<&RawValue>) -> Result<(), PacketError> {
    let first = payload.map(|p| p.get().as_bytes()[0]);
    let ok = match kind {
        // The reference takes only an object; any JSON is read here, so that an application can
        // answer a malformed `auth` with CONNECT_ERROR instead of a dropped connection. But not a
        // number: on the wire it cannot be told from an ack id (`01`).
        Kind::Connect => !matches!(first, Some(b'0'..=b'9' | b'-')),
        Kind::Disconnect => first.is_none(),
        Kind::ConnectError => matches!(first, Some(b'{' | b'"')),
        Kind::Ack | Kind::BinaryAck => first == Some(b'['),
        Kind::Event | Kind::BinaryEvent => match payload {
            Some(p) if first == Some(b'[') => event_name(p).is_some(),
            _ => false,
        },
    };
    if ok { Ok(()) } else { Err(PacketError::BadPayload) }
}

/// An event array's name, which must be a string other than a reserved one. (socket.io-parser
/// also takes a number; herald's clients never send one, and a handler needs a name.)
fn event_name(array: &RawValue) -> Option<String> {
    let mut items = split_array(array)?.into_iter();
    let name: String = serde_json::from_str(items.next()?.get()).ok()?;
    (!RESERVED_EVENTS.contains(&name.as_str())).then_some(name)
}

/// The elements of a JSON array, each still as text.
pub fn split_array(array: &RawValue) -> Option<Vec<&RawValue>> {
    serde_json::from_str(array.get()).ok()
}

/// An event's name and its arguments, from an EVENT payload that [`parse`] accepted.
pub fn event_parts(array: &RawValue) -> (String, Vec<&RawValue>) {
    let mut items = split_array(array).unwrap_or_default();
    let name = if items.is_empty() { String::new() } else { serde_json::from_str(items.remove(0).get()).unwrap_or_default() };
    (name, items)
}

/// Writes a packet's text: header, then `json` as given (already valid JSON, or empty).
pub fn write(out: &mut Vec<u8>, kind: Kind, attachments: usize, namespace: &str, id: Option<i64>, json: &[u8]) {
    out.push(kind.digit());
    if kind.is_binary() {
        out.extend_from_slice(itoa::Buffer::new().format(attachments).as_bytes());
        out.push(b'-');
    }
    if namespace != "/" {
        out.extend_from_slice(namespace.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    }
    out.extend_from_slice(json);
}

/// Writes `["<event>",arg,...]`.
pub fn write_event_array(out: &mut Vec<u8>, event: &str, args: &[&RawValue]) {
    out.push(b'[');
    serde_json::to_writer(&mut *out, event).expect("writing a string to a Vec cannot fail");
    for arg in args {
        out.push(b',');
        out.extend_from_slice(arg.get().as_bytes());
    }
    out.push(b']');
}

/// Writes `[arg,...]`.
pub fn write_array(out: &mut Vec<u8>, args: &[&RawValue]) {
    out.push(b'[');
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(arg.get().as_bytes());
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn parses_each_form() {
        let p = parse("0").unwrap();
        assert_eq!((p.kind, p.namespace, p.id, p.payload.is_none()), (Kind::Connect, "/", None, true));
        let p = parse(r#"0/admin,{"token":"t"}"#).unwrap();
        assert_eq!((p.namespace, p.payload.unwrap().get()), ("/admin", r#"{"token":"t"}"#));
        let p = parse(r#"2["hello",1]"#).unwrap();
        assert_eq!((p.kind, p.id), (Kind::Event, None));
        assert_eq!(event_parts(p.payload.unwrap()).0, "hello");
        let p = parse(r#"2/admin,12["hello"]"#).unwrap();
        assert_eq!((p.namespace, p.id), ("/admin", Some(12)));
        let p = parse(r#"3/admin,13["bar"]"#).unwrap();
        assert_eq!((p.kind, p.id), (Kind::Ack, Some(13)));
        let p = parse(r#"51-["hello",{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!((p.kind, p.attachments), (Kind::BinaryEvent, 1));
        let p = parse(r#"61-/admin,15[{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!((p.kind, p.attachments, p.namespace, p.id), (Kind::BinaryAck, 1, "/admin", Some(15)));
        assert_eq!(parse("1/admin,").unwrap().kind, Kind::Disconnect);
        assert_eq!(parse("1").unwrap().namespace, "/");
        // An id beyond i64 is dropped, the event still read.
        let huge = format!("2{}[\"x\"]", "9".repeat(40));
        assert_eq!(parse(&huge).unwrap().id, None);
        assert_eq!(parse(&format!("2{}[\"x\"]", i64::MAX)).unwrap().id, Some(i64::MAX));
    }

    #[test]
    fn refuses_bad_packets() {
        for (text, err) in [
            ("", PacketError::UnknownType),
            ("9[]", PacketError::UnknownType),
            ("x", PacketError::UnknownType),
            ("5[\"a\"]", PacketError::BadAttachments),
            ("5x-[\"a\"]", PacketError::BadAttachments),
            ("51[\"a\"]", PacketError::BadAttachments),
            ("5999-[\"a\"]", PacketError::BadAttachments),
            ("2[\"a\",{bad", PacketError::BadJson),
            ("2{\"a\":1}", PacketError::BadPayload),
            ("2[]", PacketError::BadPayload),
            ("2[1]", PacketError::BadPayload),
            ("2[\"connect\"]", PacketError::BadPayload),
            ("2", PacketError::BadPayload),
            ("1{}", PacketError::BadPayload),
            ("3{}", PacketError::BadPayload),
            ("4[]", PacketError::BadPayload),
            // Found by the socket_io fuzz target: `055\n5` read as a CONNECT with id 55 and the
            // number 5, which no writer gives back.
            ("055\n5", PacketError::UnexpectedId),
            ("05", PacketError::UnexpectedId),
            ("0 1 ", PacketError::BadPayload),
            ("0-1", PacketError::BadPayload),
            ("1/x,7", PacketError::UnexpectedId),
        ] {
            assert_eq!(parse(text).unwrap_err(), err, "{text:?}");
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let mut out = Vec::new();
        let mut json = Vec::new();
        write_event_array(&mut json, "no\"te", &[raw("{\"a\":1}"), raw("[2]")]);
        write(&mut out, Kind::Event, 0, "/custom", Some(7), &json);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, r#"2/custom,7["no\"te",{"a":1},[2]]"#);
        let p = parse(&text).unwrap();
        let (name, args) = event_parts(p.payload.unwrap());
        assert_eq!((name.as_str(), args.len(), p.id), ("no\"te", 2, Some(7)));
        let mut out = Vec::new();
        let mut json = Vec::new();
        write_array(&mut json, &[raw("1"), raw("\"b\"")]);
        write(&mut out, Kind::BinaryAck, 2, "/", Some(3), &json);
        assert_eq!(out, b"62-3[1,\"b\"]");
    }
}
