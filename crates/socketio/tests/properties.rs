//! Properties of the parsers that face the network, over generated inputs (proptest): encode
//! then decode is the identity, and any split of a byte stream into reads yields the same
//! frames, messages and packets. The fuzz targets (herald's fuzz/) check the same on arbitrary
//! bytes.

use proptest::prelude::*;
use socketio::engine::framing::{Assembled, Assembler, client_frame, parse_header, unmask};
use socketio::engine::packet::{Packet as EnginePacket, SEPARATOR, parse_payload, write_binary_for_polling};
use socketio::packet::{Kind, parse, write};

/// Reads `stream` in reads cut at `cuts` (as the server's carry does) into what each frame
/// amounts to, as text.
fn read_frames(stream: &[u8], cuts: &[usize], max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut carry = Vec::new();
    let mut messages = Assembler::default();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut from = 0;
    for to in points {
        carry.extend_from_slice(&stream[from..to]);
        from = to;
        while let Ok(Some(header)) = parse_header(&carry, max) {
            let end = header.header_len + header.len;
            if carry.len() < end {
                break;
            }
            let mut payload = carry[header.header_len..end].to_vec();
            unmask(&mut payload, header.mask);
            match messages.frame(&header, &payload, max) {
                Assembled::Pending => {}
                other => out.push(format!("{other:?}")),
            }
            carry.drain(..end);
        }
    }
    out
}

/// One client message: text or binary, cut into fragments of these sizes, with a ping after
/// the first fragment when asked.
#[derive(Debug, Clone)]
struct Message {
    text: Option<String>,
    binary: Vec<u8>,
    fragment: usize,
    ping_between: bool,
}

fn message() -> impl Strategy<Value = Message> {
    (prop::option::of("\\PC{0,40}"), prop::collection::vec(any::<u8>(), 0..300), 1usize..80, any::<bool>())
        .prop_map(|(text, binary, fragment, ping_between)| Message { text, binary, fragment, ping_between })
}

/// The frames a client sends for `m`, and what the server should make of them.
fn encode(m: &Message, mask: [u8; 4]) -> (Vec<u8>, Vec<String>) {
    let (opcode, data): (u8, &[u8]) = match &m.text {
        Some(t) => (0x1, t.as_bytes()),
        None => (0x2, &m.binary),
    };
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![data] } else { data.chunks(m.fragment).collect() };
    let whole = match &m.text {
        Some(t) => format!("{:?}", Assembled::Text(t.as_str().into())),
        None => format!("{:?}", Assembled::Binary(m.binary.as_slice().into())),
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let fin = i + 1 == chunks.len();
        let op = if i == 0 { opcode } else { 0x0 };
        wire.extend(client_frame((u8::from(fin) << 7) | op, chunk, mask));
        if fin {
            expected.push(whole.clone());
        }
        if i == 0 && m.ping_between {
            wire.extend(client_frame(0x89, b"ping", mask));
            expected.push(format!("{:?}", Assembled::Ping(b"ping")));
        }
    }
    (wire, expected)
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Connect),
        Just(Kind::Disconnect),
        Just(Kind::Event),
        Just(Kind::Ack),
        Just(Kind::BinaryEvent),
        Just(Kind::BinaryAck)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn websocket_messages_read_back_whatever_the_reads(
        messages in prop::collection::vec(message(), 1..6),
        mask in any::<[u8; 4]>(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for m in &messages {
            let (bytes, what) = encode(m, mask);
            wire.extend(bytes);
            expected.extend(what);
        }
        prop_assert_eq!(read_frames(&wire, &[], 1 << 20), expected.clone(), "encode then decode");
        prop_assert_eq!(read_frames(&wire, &cuts, 1 << 20), expected, "split anywhere");
    }


    #[test]
    fn polling_payloads_read_back(parts in prop::collection::vec(prop_oneof![
        "[1-6][^\u{1e}]{0,30}".prop_map(|t| (Some(t), Vec::new())),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| (None, b)),
    ], 1..8)) {
        let mut body = Vec::new();
        for (i, (text, binary)) in parts.iter().enumerate() {
            if i > 0 {
                body.push(SEPARATOR);
            }
            match text {
                Some(t) => body.extend_from_slice(t.as_bytes()),
                None => write_binary_for_polling(&mut body, binary),
            }
        }
        let packets = parse_payload(&body).expect("herald's own encoding reads");
        prop_assert_eq!(packets.len(), parts.len());
        for (packet, (text, binary)) in packets.iter().zip(&parts) {
            match (packet, text) {
                (EnginePacket::Binary(b), None) => prop_assert_eq!(b, binary),
                (p, Some(t)) => {
                    let alone = socketio::engine::packet::parse_text(t);
                    prop_assert_eq!(Some(p), alone.as_ref().ok());
                }
                (p, None) => prop_assert!(false, "binary read as {:?}", p),
            }
        }
    }

    #[test]
    fn socket_io_packets_read_back(
        kind in kind(),
        attachments in 0usize..64,
        namespace in prop_oneof![Just("/".to_owned()), "/[a-z]{1,10}"],
        id in prop::option::of(0i64..i64::MAX),
        args in prop::collection::vec("[a-z]{0,8}", 0..4),
    ) {
        let json = match kind {
            Kind::Event | Kind::BinaryEvent => serde_json::to_string(&[vec!["event".to_owned()], args].concat()).unwrap(),
            Kind::Ack | Kind::BinaryAck => serde_json::to_string(&args).unwrap(),
            Kind::Connect => "{\"token\":\"t\"}".to_owned(),
            _ => String::new(),
        };
        let attachments = if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) { attachments } else { 0 };
        let id = if matches!(kind, Kind::Event | Kind::BinaryEvent | Kind::Ack | Kind::BinaryAck) { id } else { None };
        let id = if matches!(kind, Kind::Ack | Kind::BinaryAck) { Some(id.unwrap_or(0)) } else { id };
        let mut text = Vec::new();
        write(&mut text, kind, attachments, &namespace, id, json.as_bytes());
        let text = String::from_utf8(text).unwrap();
        let packet = parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e:?}")))?;
        prop_assert_eq!(
            (packet.kind, packet.attachments, packet.namespace, packet.id, packet.payload.map(|p| p.get().to_owned()).unwrap_or_default()),
            (kind, attachments, namespace.as_str(), id, json)
        );
    }
}
