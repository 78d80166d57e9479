//! Fuzzes Socket.IO packets as clients send them (`<type>[<attachments>-][<nsp>,][<id>][<json>]`),
//! binary ones with their attachment count: a packet or an error, never a panic; a packet that
//! reads is written back by herald's own writer to text that reads as the same packet (encode
//! then decode is the identity), and its event name and arguments split without panicking.
#![no_main]

use socketio::packet::{Kind, event_parts, parse, split_array, write};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(packet) = parse(text) else { return };
    let json = packet.payload.map(|p| p.get().as_bytes()).unwrap_or_default();
    let mut written = Vec::new();
    write(&mut written, packet.kind, packet.attachments, packet.namespace, packet.id, json);
    let written = String::from_utf8(written).expect("herald writes UTF-8");
    let again = parse(&written).unwrap_or_else(|e| panic!("{written:?} written from {text:?} does not read: {e:?}"));
    assert_eq!(
        (again.kind, again.attachments, again.namespace, again.id, again.payload.map(|p| p.get())),
        (packet.kind, packet.attachments, packet.namespace, packet.id, packet.payload.map(|p| p.get())),
        "{text:?} -> {written:?}"
    );
    if let (Kind::Event | Kind::BinaryEvent, Some(payload)) = (packet.kind, packet.payload) {
        let (_name, args) = event_parts(payload);
        assert!(args.len() < payload.get().len().max(1));
    }
    if let Some(payload) = packet.payload {
        let _ = split_array(payload);
    }
});
