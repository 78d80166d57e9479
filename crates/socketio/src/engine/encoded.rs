//! Encoded packets: one Engine.IO packet as a WebSocket frame whose payload is the packet as
//! long-polling sends it, built once and shared by every session it goes to.

use std::fmt;
use std::sync::{Arc, LazyLock, OnceLock};

use super::deflate;
use super::framing::{self, OpCode};

/// One encoded Engine.IO packet, shared by every session it goes to: a WebSocket frame whose
/// payload is the packet as long-polling sends it. One allocation, of its exact size; cloning
/// it copies no bytes. A packet long enough to be worth compressing also has room for its
/// permessage-deflate frame, made once, by the first session that negotiated the extension.
#[derive(Clone)]
pub struct Frame {
    bytes: Arc<[u8]>,
    header: u8,
    binary: bool,
    deflated: Option<Arc<OnceLock<Box<[u8]>>>>,
}

/// The shortest packet that ever gets a compressed frame (`server.compression.threshold_bytes`
/// cannot go below it): shorter ones rarely shrink.
pub const DEFLATE_FLOOR: usize = 128;

thread_local! {
    /// Where frames are written before their exact size is known.
    static BUILD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Frame {
    /// A text packet whose text `write` appends (type digit included).
    pub fn text(write: impl FnOnce(&mut Vec<u8>)) -> Self {
        Self::build(OpCode::Text, write)
    }

    /// A binary message.
    pub fn binary(data: &[u8]) -> Self {
        Self::build(OpCode::Binary, |out| out.extend_from_slice(data))
    }

    /// A control frame (ping, pong) with `payload`.
    pub(super) fn control(opcode: OpCode, payload: &[u8]) -> Self {
        Self { binary: false, deflated: None, ..Self::build(opcode, |out| out.extend_from_slice(payload)) }
    }

    fn build(opcode: OpCode, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        BUILD.with_borrow_mut(|buf| {
            buf.clear();
            buf.resize(framing::MAX_HEADER, 0);
            write(buf);
            let len = buf.len() - framing::MAX_HEADER;
            let mut header = [0u8; framing::MAX_HEADER];
            let n = framing::write_header(&mut header, opcode, len);
            let start = framing::MAX_HEADER - n;
            buf[start..framing::MAX_HEADER].copy_from_slice(&header[..n]);
            let deflated = (len >= DEFLATE_FLOOR).then(|| Arc::new(OnceLock::new()));
            let frame = Self { bytes: Arc::from(&buf[start..]), header: n as u8, binary: opcode == OpCode::Binary, deflated };
            // A large message does not keep its buffer on the thread.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::new();
            }
            frame
        })
    }

    /// The whole WebSocket frame.
    pub fn ws(&self) -> &[u8] {
        &self.bytes
    }

    /// What goes on the wire: for a session that negotiated permessage-deflate (`deflate_over`,
    /// its threshold), a packet that long as its compressed frame, made on first use (`made`
    /// runs then); otherwise [`Frame::ws`].
    pub(super) fn wire(&self, deflate_over: Option<usize>, made: impl FnOnce()) -> &[u8] {
        match (&self.deflated, deflate_over) {
            (Some(deflated), Some(threshold)) if self.packet().len() >= threshold => deflated.get_or_init(|| {
                made();
                let payload = deflate::compress(self.packet());
                let mut header = [0u8; framing::MAX_HEADER];
                let opcode = if self.binary { OpCode::Binary } else { OpCode::Text };
                let n = framing::write_header(&mut header, opcode, payload.len());
                // RSV1: the message is compressed.
                header[0] |= 0x40;
                [&header[..n], &payload].concat().into_boxed_slice()
            }),
            _ => self.ws(),
        }
    }

    /// The packet as long-polling carries it (binary still raw).
    pub fn packet(&self) -> &[u8] {
        &self.bytes[self.header as usize..]
    }

    pub fn is_binary(&self) -> bool {
        self.binary
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({:?})", String::from_utf8_lossy(self.packet()))
    }
}

/// Packets the engine sends often, built once.
pub(super) static PING: LazyLock<Frame> = LazyLock::new(|| Frame::text(|b| b.push(b'2')));
pub(super) static PONG_PROBE: LazyLock<Frame> = LazyLock::new(|| Frame::text(|b| b.extend_from_slice(b"3probe")));
pub(super) static NOOP: LazyLock<Frame> = LazyLock::new(|| Frame::text(|b| b.push(b'6')));
pub(super) static CLOSE: LazyLock<Frame> = LazyLock::new(|| Frame::text(|b| b.push(b'1')));
