//! permessage-deflate (RFC 7692) without per-socket state: the server accepts the extension only
//! with `server_no_context_takeover` and `client_no_context_takeover`, so neither side keeps a
//! compression context between messages. Each outgoing message is compressed once, on its first
//! recipient that negotiated the extension, into a frame every such recipient shares; client
//! messages are inflated by one inflater per thread. A deflate context costs about 300 KiB: per
//! socket, as servers that keep context takeover pay it, it would be 150 times an idle socket.
//! Long-polling responses are compressed with `Content-Encoding: gzip` by the same compressor.

use std::cell::RefCell;

use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

/// What herald answers an acceptable offer with.
pub const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The bytes a sync flush ends with; RFC 7692 leaves them off the wire (section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// Raw deflate, reset for every message: no context survives from one message to another.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Whether a `Sec-WebSocket-Extensions` request header offers permessage-deflate in a form
/// herald can accept: every parameter known, once, and no `server_max_window_bits` below 15
/// (herald's compressor uses the full window; a client that asks for less is declined).
pub fn accepts(offers: Option<&str>) -> bool {
    offers.is_some_and(|offers| offers.split(',').any(acceptable))
}

fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
        return false;
    }
    let mut seen = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        let bits = |v: Option<&str>| v.map(|v| v.parse::<u8>().ok().filter(|b| (8..=15).contains(b)));
        let fine = match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // Herald inflates with the full window whatever the client uses.
            "client_max_window_bits" => !matches!(bits(value), Some(None)),
            "server_max_window_bits" => matches!(bits(value), Some(Some(15))),
            _ => false,
        };
        if !fine {
            return false;
        }
    }
    true
}

/// `payload` compressed as one permessage-deflate message (without the sync flush's tail).
pub fn compress(payload: &[u8]) -> Vec<u8> {
    COMPRESSOR.with_borrow_mut(|c| {
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            let before = c.total_in();
            out.reserve(out.len().max(64));
            c.compress_vec(input, &mut out, FlushCompress::Sync).expect("deflate into a growing buffer");
            input = &input[(c.total_in() - before) as usize..];
            // Done when everything went in and the flush fitted (room was left over).
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the payload limit.
    TooLarge,
    /// Not deflate data.
    Corrupt,
}

/// A permessage-deflate message inflated, refused as soon as it grows past `max` bytes (a small
/// message that inflates to gigabytes never gets there).
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with_borrow_mut(|d| {
        d.reset(false);
        let mut out = Vec::with_capacity((data.len() * 3).min(max.max(1)));
        for mut input in [data, &TAIL[..]] {
            loop {
                if out.len() == out.capacity() {
                    if out.len() >= max {
                        return Err(InflateError::TooLarge);
                    }
                    out.reserve((out.len().max(256)).min(max + 1 - out.len()));
                }
                let before = d.total_in();
                let status = d.decompress_vec(input, &mut out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
                input = &input[(d.total_in() - before) as usize..];
                if out.len() > max {
                    return Err(InflateError::TooLarge);
                }
                if status == Status::StreamEnd || (input.is_empty() && out.len() < out.capacity()) {
                    break;
                }
            }
        }
        Ok(out)
    })
}

/// `body` as a gzip member (RFC 1952), for a long-polling response.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let deflated = COMPRESSOR.with_borrow_mut(|c| {
        c.reset();
        let mut out = Vec::with_capacity(body.len() / 2 + 64);
        loop {
            out.reserve(out.len().max(64));
            let input = &body[c.total_in() as usize..];
            if c.compress_vec(input, &mut out, FlushCompress::Finish).expect("deflate into a growing buffer") == Status::StreamEnd {
                return out;
            }
        }
    });
    let mut crc = Crc::new();
    crc.update(body);
    // ID1 ID2, deflate, no flags, no time, no extra flags, unknown OS.
    let mut out = Vec::with_capacity(deflated.len() + 18);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out
}

/// Whether an `Accept-Encoding` request header accepts gzip (not with `q=0`).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|h| {
        h.split(',').any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.replace(' ', "").eq_ignore_ascii_case("q=0") || p.replace(' ', "").starts_with("q=0.0"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7692_s_example_message() {
        // Section 7.2.3.1: "Hello" compressed with no context takeover.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&hello, 100).unwrap(), b"Hello");
        assert_eq!(inflate(&compress(b"Hello"), 100).unwrap(), b"Hello");
    }

    #[test]
    fn messages_round_trip_and_compress_alone() {
        let json = br#"{"userId":"u1","type":"order","body":{"items":[1,2,3],"note":"the same words again and again"}}"#.repeat(40);
        let packed = compress(&json);
        assert!(packed.len() * 5 < json.len(), "{} of {}", packed.len(), json.len());
        assert_eq!(compress(&json), packed, "no context carries over from one message to the next");
        assert_eq!(inflate(&packed, json.len()).unwrap(), json);
        assert_eq!(inflate(&compress(b""), 10).unwrap(), b"");
        let random: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        assert_eq!(inflate(&compress(&random), random.len()).unwrap(), random);
    }

    #[test]
    fn inflating_is_bounded_and_refuses_what_is_not_deflate() {
        let zeros = vec![0u8; 10_000_000];
        let bomb = compress(&zeros);
        assert!(bomb.len() < zeros.len() / 100, "{} bytes inflate to 10 MB", bomb.len());
        assert_eq!(inflate(&bomb, 100_000), Err(InflateError::TooLarge));
        assert_eq!(inflate(&compress(&zeros[..100_000]), 100_000).unwrap().len(), 100_000, "exactly the limit is fine");
        assert_eq!(inflate(&[0xff, 0xff, 0xff], 100), Err(InflateError::Corrupt));
    }

    #[test]
    fn offers_herald_accepts_and_declines() {
        for offer in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=15; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10, permessage-deflate",
        ] {
            assert!(accepts(Some(offer)), "{offer}");
        }
        for offer in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; unknown",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover=1",
        ] {
            assert!(!accepts(Some(offer)), "{offer}");
        }
        assert!(!accepts(None));
    }

    #[test]
    fn gzip_members_read_back() {
        use std::io::Read;
        let body = b"42[\"notification\",{\"a\":1}]".repeat(100);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&body)[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, body);
        assert!(accepts_gzip(Some("gzip, deflate, br")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0, br")));
        assert!(!accepts_gzip(Some("br")));
        assert!(!accepts_gzip(None));
    }
}
