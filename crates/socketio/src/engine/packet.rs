//! Engine.IO v4 packets (`<type digit><data>`) and long-polling payloads (packets joined by the
//! record separator 0x1e, binary ones as `b<base64>`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The record separator between packets of a long-polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// A packet a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Text(&'a str),
    /// A binary message, decoded from base64 (over WebSocket, binary frames bypass packets).
    Binary(Vec<u8>),
    Upgrade,
    Noop,
}

/// Why a packet could not be read; the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    UnknownType,
    /// An open packet from a client, or a packet with no type.
    Unexpected,
    BadBase64,
    BadUtf8,
}

/// Reads a text packet (a WebSocket text message, or one packet of a polling payload).
pub fn parse_text(text: &str) -> Result<Packet<'_>, PacketError> {
    let Some(&kind) = text.as_bytes().first() else { return Err(PacketError::Unexpected) };
    // A type is one ASCII digit: anything else (a multi-byte character too, which must not be
    // split) is refused before the rest is looked at.
    if !kind.is_ascii_digit() {
        return Err(PacketError::UnknownType);
    }
    let data = &text[1..];
    Ok(match kind {
        b'1' => Packet::Close,
        b'2' => Packet::Ping(data),
        b'3' => Packet::Pong(data),
        b'4' => Packet::Text(data),
        b'5' => Packet::Upgrade,
        b'6' => Packet::Noop,
        b'0' => return Err(PacketError::Unexpected),
        _ => return Err(PacketError::UnknownType),
    })
}

/// Reads every packet of a long-polling request body. All or nothing: one bad packet refuses
/// the whole payload.
pub fn parse_payload(body: &[u8]) -> Result<Vec<Packet<'_>>, PacketError> {
    body.split(|b| *b == SEPARATOR)
        .map(|part| {
            if let Some(encoded) = part.strip_prefix(b"b") {
                return BASE64.decode(encoded).map(Packet::Binary).map_err(|_| PacketError::BadBase64);
            }
            parse_text(std::str::from_utf8(part).map_err(|_| PacketError::BadUtf8)?)
        })
        .collect()
}

/// Appends a binary message to a long-polling payload being built.
pub fn write_binary_for_polling(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'b');
    let start = out.len();
    out.resize(start + base64::encoded_len(data.len(), true).expect("a message fits in memory"), 0);
    let n = BASE64.encode_slice(data, &mut out[start..]).expect("sized above");
    out.truncate(start + n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_starting_with_a_multi_byte_character_is_refused_not_split() {
        // Found by the engine_io and websocket_frames fuzz targets: slicing after byte 0 panicked.
        assert_eq!(parse_text("\u{35a}b+AA"), Err(PacketError::UnknownType));
        assert_eq!(parse_payload("\u{35a}b+AA".as_bytes()), Err(PacketError::UnknownType));
        assert_eq!(parse_text("é"), Err(PacketError::UnknownType));
    }

    #[test]
    fn reads_text_packets() {
        assert_eq!(parse_text("2probe"), Ok(Packet::Ping("probe")));
        assert_eq!(parse_text("3"), Ok(Packet::Pong("")));
        assert_eq!(parse_text("4héllo"), Ok(Packet::Text("héllo")));
        assert_eq!(parse_text("5"), Ok(Packet::Upgrade));
        assert_eq!(parse_text("6"), Ok(Packet::Noop));
        assert_eq!(parse_text("1"), Ok(Packet::Close));
        assert_eq!(parse_text("9x"), Err(PacketError::UnknownType));
        assert_eq!(parse_text("0{}"), Err(PacketError::Unexpected));
        assert_eq!(parse_text(""), Err(PacketError::Unexpected));
    }

    #[test]
    fn reads_payloads() {
        let packets = parse_payload(b"4hello\x1ebAQID\x1e2").unwrap();
        assert_eq!(packets, vec![Packet::Text("hello"), Packet::Binary(vec![1, 2, 3]), Packet::Ping("")]);
        assert_eq!(parse_payload(b"4a\x1e\x1e4b"), Err(PacketError::Unexpected), "an empty packet");
        assert_eq!(parse_payload(b"bnot base64!!"), Err(PacketError::BadBase64));
        assert_eq!(parse_payload(b"4\xff"), Err(PacketError::BadUtf8));
        let mut out = b"4x\x1e".to_vec();
        write_binary_for_polling(&mut out, &[1, 2, 3, 4]);
        assert_eq!(out, b"4x\x1ebAQIDBA==");
    }
}
