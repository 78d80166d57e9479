//! Properties of herald's RESP reader, over generated replies (proptest): encode then decode is
//! the identity, and any split of a byte stream into reads yields the same values. The Socket.IO
//! server's parsers have theirs in crates/socketio/tests/properties.rs; the fuzz targets
//! (fuzz/) check the same on arbitrary bytes.

use bytes::BytesMut;
use herald::bus::resp;
use proptest::prelude::*;

/// A RESP reply as Redis writes it.
fn write_resp(out: &mut Vec<u8>, value: &resp::Value) {
    match value {
        resp::Value::Simple(s) => out.extend([&b"+"[..], s, b"\r\n"].concat()),
        resp::Value::Error(s) => out.extend([&b"-"[..], s, b"\r\n"].concat()),
        resp::Value::Integer(n) => out.extend(format!(":{n}\r\n").into_bytes()),
        resp::Value::Bulk(None) => out.extend(b"$-1\r\n"),
        resp::Value::Bulk(Some(b)) => out.extend([format!("${}\r\n", b.len()).as_bytes(), b, b"\r\n"].concat()),
        resp::Value::Array(None) => out.extend(b"*-1\r\n"),
        resp::Value::Array(Some(items)) => {
            out.extend(format!("*{}\r\n", items.len()).into_bytes());
            for item in items {
                write_resp(out, item);
            }
        }
    }
}

fn resp_value() -> impl Strategy<Value = resp::Value> {
    let line = "[a-zA-Z0-9 :_-]{0,20}".prop_map(|s| bytes::Bytes::from(s.into_bytes()));
    let leaf = prop_oneof![
        line.clone().prop_map(resp::Value::Simple),
        line.prop_map(resp::Value::Error),
        any::<i64>().prop_map(resp::Value::Integer),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)).prop_map(|b| resp::Value::Bulk(b.map(bytes::Bytes::from))),
    ];
    // Nesting as deep as herald's own replies go.
    leaf.prop_recursive(3, 24, 6, |inner| prop::option::of(prop::collection::vec(inner, 0..6)).prop_map(resp::Value::Array))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn resp_replies_read_back_whatever_the_reads(
        values in prop::collection::vec(resp_value(), 1..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut wire = Vec::new();
        for v in &values {
            write_resp(&mut wire, v);
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let (mut buf, mut read, mut from) = (BytesMut::new(), Vec::new(), 0);
        for to in points {
            buf.extend_from_slice(&wire[from..to]);
            from = to;
            while let Some(value) = resp::take(&mut buf).expect("well-formed") {
                read.push(value);
            }
        }
        prop_assert_eq!(read, values);
    }
}
