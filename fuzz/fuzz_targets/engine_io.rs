//! Fuzzes Engine.IO packets and long-polling payloads (packets joined by 0x1e, binary ones as
//! `b<base64>`), as a client's POST body: all of it read or all of it refused, never a panic;
//! a payload that reads has one packet per part, each read the same on its own.
#![no_main]

use socketio::engine::packet::{Packet, SEPARATOR, parse_payload, parse_text, write_binary_for_polling};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_text(text);
    }
    let Ok(packets) = parse_payload(data) else { return };
    let parts: Vec<&[u8]> = data.split(|b| *b == SEPARATOR).collect();
    assert_eq!(packets.len(), parts.len(), "one packet per part");
    for (packet, part) in packets.iter().zip(parts) {
        match packet {
            // Binary data written for polling reads back as the same bytes.
            Packet::Binary(bytes) => {
                let mut encoded = Vec::new();
                write_binary_for_polling(&mut encoded, bytes);
                assert_eq!(parse_payload(&encoded).unwrap(), [Packet::Binary(bytes.clone())]);
            }
            other => assert_eq!(Ok(other), parse_text(std::str::from_utf8(part).unwrap()).as_ref()),
        }
    }
});
