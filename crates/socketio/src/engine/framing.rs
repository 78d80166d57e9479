//! WebSocket frames (RFC 6455, section 5) parsed from and written into buffers the caller owns:
//! no buffer of its own, so a connection keeps only the bytes of a frame that is not complete.

use std::fmt;

/// Frame types (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A client frame's header: everything before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    /// Payload length in bytes.
    pub len: usize,
    /// Header length in bytes: the payload starts here.
    pub header_len: usize,
    /// RSV1 on a message's first frame: its payload is compressed (permessage-deflate).
    pub compressed: bool,
}

/// Why a client frame is refused; each closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set without a negotiated extension.
    ReservedBits,
    UnknownOpcode,
    /// A client frame must be masked (section 5.1).
    Unmasked,
    /// A control frame longer than 125 bytes, or fragmented (section 5.5).
    BadControl,
    /// Longer than the largest message allowed.
    TooLarge,
    /// A length in a longer form than it needs (section 5.2: "the minimal number of bytes
    /// MUST be used"), or a 64-bit length with its most significant bit set.
    NonMinimalLength,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReservedBits => "reserved bits set",
            Self::UnknownOpcode => "unknown opcode",
            Self::Unmasked => "unmasked client frame",
            Self::BadControl => "bad control frame",
            Self::TooLarge => "frame too large",
            Self::NonMinimalLength => "length not in its shortest form",
        })
    }
}

/// Parses a client frame header from the start of `buf`: `Ok(None)` when more bytes are needed.
/// A payload longer than `max_len` is refused from its header alone, before any of it is read.
pub fn parse_header(buf: &[u8], max_len: usize) -> Result<Option<Header>, FrameError> {
    parse_header_with(buf, max_len, false)
}

/// [`parse_header`] on a connection that negotiated permessage-deflate (`deflate`): RSV1 is
/// then allowed on the first frame of a text or binary message, and nowhere else.
pub fn parse_header_with(buf: &[u8], max_len: usize, deflate: bool) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode)?;
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !(deflate && matches!(opcode, OpCode::Text | OpCode::Binary))) {
        return Err(FrameError::ReservedBits);
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, len_bytes) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 2),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 8),
            None => return Ok(None),
        },
        short => (short as u64, 0),
    };
    if (len_bytes == 2 && len < 126) || (len_bytes == 8 && (len <= u16::MAX as u64 || len >> 63 != 0)) {
        return Err(FrameError::NonMinimalLength);
    }
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    if len > max_len as u64 {
        return Err(FrameError::TooLarge);
    }
    let mask_at = 2 + len_bytes;
    let Some(mask) = buf.get(mask_at..mask_at + 4) else { return Ok(None) };
    Ok(Some(Header { fin, opcode, mask: mask.try_into().expect("4 bytes"), len: len as usize, header_len: mask_at + 4, compressed }))
}

/// Unmasks (or masks: it is its own inverse) `payload` in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes((&*chunk).try_into().expect("4 bytes")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// The longest server frame header: 2 bytes and a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// Writes the header of an unmasked, final server frame with a `len`-byte payload into `out`;
/// returns how many bytes it used.
pub fn write_header(out: &mut [u8; MAX_HEADER], opcode: OpCode, len: usize) -> usize {
    out[0] = 0x80 | opcode.bits();
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A client's frame, as a browser sends it: `first` is its first byte (FIN, RSV bits, opcode),
/// the payload masked with `mask`, the length in its shortest form. For tests, property tests,
/// fuzzing and load generators: the server itself only sends server frames.
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER];
    let n = write_header(&mut header, OpCode::Text, payload.len());
    let mut out = Vec::with_capacity(n + 4 + payload.len());
    out.push(first);
    out.push(header[1] | 0x80);
    out.extend_from_slice(&header[2..n]);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
    out
}

/// How long the header of a `len`-byte server frame is.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Close codes herald sends (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;

    /// Whether a peer may put `code` in a close frame (section 7.4): the defined codes but
    /// 1004-1006 and 1015 (reserved, or for reporting only), the registered 1012-1014, and the
    /// ranges for libraries and applications, 3000-4999.
    pub fn may_be_sent(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// What a client's close frame says (section 5.5.1): nothing, or a code and a UTF-8 reason.
/// `Ok(code)`: the code to answer with (the client's own, or 1000 when it gave none);
/// `Err(code)`: the payload is malformed, and the connection fails with that code.
pub fn close_payload(payload: &[u8]) -> Result<u16, u16> {
    match payload {
        [] => Ok(close_code::NORMAL),
        [_] => Err(close_code::PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::may_be_sent(code) {
                return Err(close_code::PROTOCOL_ERROR);
            }
            std::str::from_utf8(reason).map(|_| code).map_err(|_| close_code::INVALID_DATA)
        }
    }
}

/// Puts a client's messages together from its frames (section 5.4): a message's fragments in
/// order, control frames allowed between them, text checked to be UTF-8 as a whole message
/// (so a character may be split across fragments), close payloads checked. Pure: the frames
/// come from [`parse_header`] and [`unmask`], and the caller acts on what comes out.
#[derive(Default)]
pub struct Assembler {
    /// A message whose last fragment has not come: its type, whether it is compressed, and its
    /// bytes so far. Boxed: an idle connection keeps only the pointer.
    unfinished: Option<Box<(OpCode, bool, Vec<u8>)>>,
}

/// What one client frame amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled<'a> {
    /// A fragment kept until its message is whole.
    Pending,
    Text(std::borrow::Cow<'a, str>),
    Binary(std::borrow::Cow<'a, [u8]>),
    /// To be answered with a pong carrying the same bytes.
    Ping(&'a [u8]),
    Pong,
    /// The client closes; answer with this code.
    Close(u16),
    /// The frame breaks the protocol: fail the connection with this close code.
    Fail(AssemblyError, u16),
}

/// Why a frame fails the connection, once its header was fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssemblyError {
    /// A continuation without a message, a new message before the last one ended, a bad close
    /// payload code.
    Fragmentation,
    /// The fragments together are over the payload limit.
    TooLarge,
    /// A text message (or a close reason) that is not UTF-8.
    BadUtf8,
    /// A compressed message that is not deflate data.
    BadDeflate,
}

impl Assembler {
    /// Takes one frame (its header and unmasked payload); `max` bounds a message's fragments
    /// together.
    pub fn frame<'a>(&mut self, header: &Header, payload: &'a [u8], max: usize) -> Assembled<'a> {
        use std::borrow::Cow;
        let whole = |opcode: OpCode, compressed: bool, data: Cow<'a, [u8]>| {
            let data = if compressed {
                match super::deflate::inflate(&data, max) {
                    Ok(inflated) => Cow::Owned(inflated),
                    Err(super::deflate::InflateError::TooLarge) => return Assembled::Fail(AssemblyError::TooLarge, close_code::TOO_BIG),
                    Err(super::deflate::InflateError::Corrupt) => {
                        return Assembled::Fail(AssemblyError::BadDeflate, close_code::INVALID_DATA);
                    }
                }
            } else {
                data
            };
            match (opcode, data) {
                (OpCode::Binary, data) => Assembled::Binary(data),
                (_, Cow::Borrowed(b)) => match std::str::from_utf8(b) {
                    Ok(text) => Assembled::Text(Cow::Borrowed(text)),
                    Err(_) => Assembled::Fail(AssemblyError::BadUtf8, close_code::INVALID_DATA),
                },
                (_, Cow::Owned(v)) => match String::from_utf8(v) {
                    Ok(text) => Assembled::Text(Cow::Owned(text)),
                    Err(_) => Assembled::Fail(AssemblyError::BadUtf8, close_code::INVALID_DATA),
                },
            }
        };
        match header.opcode {
            OpCode::Ping => Assembled::Ping(payload),
            OpCode::Pong => Assembled::Pong,
            OpCode::Close => match close_payload(payload) {
                Ok(code) => Assembled::Close(code),
                Err(code) => {
                    let why = if code == close_code::INVALID_DATA { AssemblyError::BadUtf8 } else { AssemblyError::Fragmentation };
                    Assembled::Fail(why, code)
                }
            },
            OpCode::Text | OpCode::Binary if self.unfinished.is_some() => {
                Assembled::Fail(AssemblyError::Fragmentation, close_code::PROTOCOL_ERROR)
            }
            OpCode::Text | OpCode::Binary if header.fin => whole(header.opcode, header.compressed, Cow::Borrowed(payload)),
            OpCode::Text | OpCode::Binary => {
                self.unfinished = Some(Box::new((header.opcode, header.compressed, payload.to_vec())));
                Assembled::Pending
            }
            OpCode::Continuation => {
                let Some(unfinished) = self.unfinished.as_mut() else {
                    return Assembled::Fail(AssemblyError::Fragmentation, close_code::PROTOCOL_ERROR);
                };
                if unfinished.2.len() + payload.len() > max {
                    return Assembled::Fail(AssemblyError::TooLarge, close_code::TOO_BIG);
                }
                unfinished.2.extend_from_slice(payload);
                if !header.fin {
                    return Assembled::Pending;
                }
                let (opcode, compressed, data) = *self.unfinished.take().expect("checked above");
                whole(opcode, compressed, Cow::Owned(data))
            }
        }
    }
}

/// A whole close frame with `code` and no reason.
pub fn close_frame(code: u16) -> [u8; 4] {
    let c = code.to_be_bytes();
    [0x88, 2, c[0], c[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked with `mask`, as a browser sends it.
    fn masked(fin: bool, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        super::client_frame((u8::from(fin) << 7) | opcode.bits(), payload, mask)
    }

    #[test]
    fn lengths_in_a_longer_form_than_needed_are_refused() {
        let masked = |b1: u8, len: &[u8]| [&[0x81, b1][..], len, &[0, 0, 0, 0]].concat();
        assert_eq!(parse_header(&masked(0xFE, &[0, 125]), 1 << 20), Err(FrameError::NonMinimalLength));
        assert!(parse_header(&masked(0xFE, &[0, 126]), 1 << 20).unwrap().is_some());
        assert_eq!(parse_header(&masked(0xFF, &65_535u64.to_be_bytes()), 1 << 20), Err(FrameError::NonMinimalLength));
        assert!(parse_header(&masked(0xFF, &65_536u64.to_be_bytes()), 1 << 20).unwrap().is_some());
        assert_eq!(parse_header(&masked(0xFF, &(1u64 << 63).to_be_bytes()), usize::MAX), Err(FrameError::NonMinimalLength));
    }

    #[test]
    fn close_payloads_are_read_by_the_rules() {
        assert_eq!(close_payload(b""), Ok(1000));
        assert_eq!(close_payload(b"\x03"), Err(1002), "one byte: no code fits");
        assert_eq!(close_payload(b"\x03\xe8bye"), Ok(1000));
        assert_eq!(close_payload(&[0x0f, 0xa0]), Ok(4000));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535] {
            assert_eq!(close_payload(&bad.to_be_bytes()), Err(1002), "{bad}");
        }
        assert_eq!(close_payload(&[0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd]), Err(1007), "a reason cut inside a character");
    }

    #[test]
    fn parses_every_length_form_and_unmasks() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = masked(true, OpCode::Binary, &payload, [1, 2, 3, 4]);
            let h = parse_header(&frame, 1 << 20).unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.len), (true, OpCode::Binary, len));
            assert_eq!(h.header_len + len, frame.len());
            let mut body = frame[h.header_len..].to_vec();
            unmask(&mut body, h.mask);
            assert_eq!(body, payload, "len {len}");
            // Every strict prefix of the header asks for more.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&frame[..cut], 1 << 20), Ok(None), "len {len}, cut {cut}");
            }
        }
    }

    #[test]
    fn refuses_what_a_client_must_not_send() {
        let good = masked(true, OpCode::Text, b"hi", [9, 9, 9, 9]);
        let mut unmasked = good.clone();
        unmasked[1] &= 0x7F;
        assert_eq!(parse_header(&unmasked, 100), Err(FrameError::Unmasked));
        let mut rsv = good.clone();
        rsv[0] |= 0x40;
        assert_eq!(parse_header(&rsv, 100), Err(FrameError::ReservedBits));
        let mut op = good.clone();
        op[0] = 0x83;
        assert_eq!(parse_header(&op, 100), Err(FrameError::UnknownOpcode));
        let fragmented_ping = masked(false, OpCode::Ping, b"", [0; 4]);
        assert_eq!(parse_header(&fragmented_ping, 100), Err(FrameError::BadControl));
        let long_ping = masked(true, OpCode::Ping, &[0; 126], [0; 4]);
        assert_eq!(parse_header(&long_ping, 1000), Err(FrameError::BadControl));
        let big = masked(true, OpCode::Binary, &[0; 101], [0; 4]);
        assert_eq!(parse_header(&big, 100), Err(FrameError::TooLarge));
        // A 64-bit length beyond any limit is refused from the first ten bytes.
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(parse_header(&huge, 1 << 30), Err(FrameError::TooLarge));
    }

    #[test]
    fn server_headers() {
        let mut h = [0u8; MAX_HEADER];
        let mut header = |opcode, len| {
            let n = write_header(&mut h, opcode, len);
            h[..n].to_vec()
        };
        assert_eq!(header(OpCode::Text, 1), [0x81, 1]);
        assert_eq!(header(OpCode::Text, 200), [0x81, 126, 0, 200]);
        assert_eq!(header(OpCode::Binary, 1 << 16), [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        for len in [0, 125, 126, 65_535, 65_536] {
            assert_eq!(header_len(len), write_header(&mut h, OpCode::Text, len));
        }
        assert_eq!(close_frame(close_code::GOING_AWAY), [0x88, 2, 0x03, 0xE9]);
    }
}
