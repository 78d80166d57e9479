//! Fuzzes the RESP reader of herald's own Redis connections: what a broken or hostile Redis,
//! or a proxy in between, could send (replies and Pub/Sub pushes). Byte 0 chooses how the rest
//! arrives in reads; the property: however it is split, the same values come out, in order, up
//! to the same error, and the fast path for Pub/Sub messages agrees with the full reader.
#![no_main]

use bytes::BytesMut;
use herald::bus::interpret_replies;
use herald::bus::resp::{Value, message_at, take};
use libfuzzer_sys::fuzz_target;

/// Every value read from `stream` in reads of `size` bytes, then the error if one stopped it.
fn read(stream: &[u8], size: usize) -> (Vec<Value>, bool) {
    let mut buf = BytesMut::new();
    let mut values = Vec::new();
    for piece in stream.chunks(size.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            if let Some(span) = message_at(&buf) {
                // The fast path must describe exactly what the full reader reads there.
                let mut copy = buf.clone();
                match take(&mut copy) {
                    Ok(Some(Value::Array(Some(parts)))) => {
                        assert_eq!(parts.len(), 3);
                        assert_eq!(parts[1].as_bytes().map(|b| &b[..]), Some(&buf[span.channel.clone()]));
                        assert_eq!(parts[2].as_bytes().map(|b| &b[..]), Some(&buf[span.payload.clone()]));
                        assert_eq!(buf.len() - copy.len(), span.len);
                    }
                    other => panic!("message_at found a message where take reads {other:?}"),
                }
            }
            match take(&mut buf) {
                Ok(Some(value)) => values.push(value),
                Ok(None) => break,
                Err(_) => return (values, true),
            }
        }
    }
    (values, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else { return };
    let whole = read(stream, stream.len());
    for value in &whole.0 {
        interpret_replies(value);
    }
    assert_eq!(read(stream, usize::from(split % 32) + 1), whole, "the same values whatever the reads");
});
