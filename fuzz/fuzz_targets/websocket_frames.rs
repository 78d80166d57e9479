//! Fuzzes what a WebSocket client sends: frame headers, unmasking, fragment assembly with
//! control frames in between, UTF-8 checks across fragments, close payloads, permessage-deflate
//! (RSV1 and inflating, bounded), then the Engine.IO and Socket.IO packets inside text
//! messages. Byte 0 chooses how the rest is split into reads, and (its top bit) whether the
//! connection negotiated permessage-deflate; the property: however the stream is split, the
//! same frames and messages come out (what the server reads never depends on how TCP delivered
//! it), and nothing panics.
#![no_main]

use socketio::engine::framing::{Assembled, Assembler, parse_header_with, unmask};
use socketio::engine::packet::{Packet, parse_text};
use libfuzzer_sys::fuzz_target;

const MAX_PAYLOAD: usize = 1 << 16;

/// Reads `stream` in reads of `size` bytes as the server does (a carry for an incomplete
/// frame); what each frame amounted to, until the connection would fail or close.
fn read(stream: &[u8], size: usize, deflate: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut carry = Vec::new();
    let mut messages = Assembler::default();
    for piece in stream.chunks(size.max(1)) {
        carry.extend_from_slice(piece);
        loop {
            let header = match parse_header_with(&carry, MAX_PAYLOAD, deflate) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("refused: {e}"));
                    return out;
                }
            };
            let end = header.header_len + header.len;
            if carry.len() < end {
                break;
            }
            let mut payload = carry[header.header_len..end].to_vec();
            unmask(&mut payload, header.mask);
            let assembled = messages.frame(&header, &payload, MAX_PAYLOAD);
            if let Assembled::Text(text) = &assembled {
                // Inside: an Engine.IO packet, and in a message packet a Socket.IO one.
                if let Ok(Packet::Text(message)) = parse_text(text) {
                    out.push(format!("socket.io: {:?}", socketio::packet::parse(message).map(|p| (p.kind, p.attachments, p.id))));
                }
            }
            let done = matches!(assembled, Assembled::Close(_) | Assembled::Fail(..));
            out.push(format!("{assembled:?}"));
            if done {
                return out;
            }
            carry.drain(..end);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else { return };
    let deflate = split & 0x80 != 0;
    let whole = read(stream, stream.len(), deflate);
    assert_eq!(read(stream, usize::from(split % 64) + 1, deflate), whole, "the same frames whatever the reads");
    assert_eq!(read(stream, 1, deflate), whole, "byte by byte too");
});
