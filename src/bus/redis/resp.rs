//! RESP2 as far as herald's own Redis connections need it: commands written into a buffer, and
//! replies and Pub/Sub messages read out of one without copying their strings.

use bytes::{Bytes, BytesMut};

/// The longest string herald accepts from Redis (its own limit is 512 MiB; a notification is
/// far smaller, and a corrupt length must not make herald allocate it).
const MAX_BULK: usize = 64 << 20;
/// The most elements of one array: Pub/Sub messages have 3 or 4, replies herald asks for few.
const MAX_ARRAY: usize = 1 << 16;
/// Nesting herald's replies never exceed.
const MAX_DEPTH: usize = 4;

/// One reply or push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Bytes>),
    /// `None`: the null array.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Simple(b) | Value::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// What Redis sent cannot be RESP2: the connection is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a RESP2 reply from Redis: {0}")]
pub struct ProtocolError(&'static str);

/// Appends a command (an array of bulk strings) to `out`.
pub fn command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    header(out, b'*', args.len());
    for arg in args {
        let arg = arg.as_ref();
        header(out, b'$', arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    out.push(kind);
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Takes the first complete value off `buf`; `Ok(None)` while it is still incomplete.
pub fn take(buf: &mut BytesMut) -> Result<Option<Value>, ProtocolError> {
    let Some(len) = measure(buf, 0, 0)? else { return Ok(None) };
    let chunk = buf.split_to(len).freeze();
    let (value, used) = build(&chunk, 0);
    debug_assert_eq!(used, len);
    Ok(Some(value))
}

/// Where a Pub/Sub message at the start of a buffer lies: `[message|smessage, channel, payload]`.
pub struct MessageSpan {
    pub channel: std::ops::Range<usize>,
    pub payload: std::ops::Range<usize>,
    /// Its whole length, to advance past it.
    pub len: usize,
}

/// The Pub/Sub message at the start of `buf`, if that is what is there and it is complete;
/// anything else (another reply, an incomplete message) is `None`, for [`take`] to read.
pub fn message_at(buf: &[u8]) -> Option<MessageSpan> {
    const HEAD: &[u8] = b"*3\r\n$";
    const MESSAGE: &[u8] = b"7\r\nmessage\r\n";
    const SMESSAGE: &[u8] = b"8\r\nsmessage\r\n";
    let rest = buf.strip_prefix(HEAD)?;
    let at = HEAD.len()
        + if rest.starts_with(MESSAGE) {
            MESSAGE.len()
        } else if rest.starts_with(SMESSAGE) {
            SMESSAGE.len()
        } else {
            return None;
        };
    let channel = bulk_at(buf, at)?;
    let payload = bulk_at(buf, channel.end + 2)?;
    Some(MessageSpan { len: payload.end + 2, channel, payload })
}

/// The bytes of the complete bulk string at `at`.
fn bulk_at(buf: &[u8], at: usize) -> Option<std::ops::Range<usize>> {
    if buf.get(at) != Some(&b'$') {
        return None;
    }
    let (text, start) = line(buf, at + 1)?;
    let len: usize = std::str::from_utf8(text).ok()?.parse().ok()?;
    let end = start.checked_add(len)?;
    (buf.get(end..end + 2)? == b"\r\n").then_some(start..end)
}

/// The line starting at `at`, without its CRLF, and where the next one starts.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = memchr::memchr(b'\n', rest)?;
    let text = rest[..end].strip_suffix(b"\r")?;
    Some((text, at + end + 1))
}

fn number(text: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(text).ok().and_then(|s| s.parse().ok()).ok_or(ProtocolError("bad number"))
}

/// The length of the complete value at `at`, checking it on the way; `None` if incomplete.
fn measure(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some((text, next)) = line(buf, at + 1) else {
        // A line far longer than any herald reads has no end coming.
        return if buf.len() - at > MAX_BULK { Err(ProtocolError("line too long")) } else { Ok(None) };
    };
    match kind {
        b'+' | b'-' => Ok(Some(next - at)),
        b':' => number(text).map(|_| Some(next - at)),
        b'$' => match number(text)? {
            -1 => Ok(Some(next - at)),
            n if n < 0 || n as usize > MAX_BULK => Err(ProtocolError("bad bulk length")),
            n => {
                let end = next + n as usize + 2;
                match buf.get(end - 2..end) {
                    None => Ok(None),
                    Some(b"\r\n") => Ok(Some(end - at)),
                    Some(_) => Err(ProtocolError("bulk string not followed by CRLF")),
                }
            }
        },
        b'*' => match number(text)? {
            -1 => Ok(Some(next - at)),
            n if n < 0 || n as usize > MAX_ARRAY => Err(ProtocolError("bad array length")),
            _ if depth >= MAX_DEPTH => Err(ProtocolError("nested too deep")),
            n => {
                let mut end = next;
                for _ in 0..n {
                    match measure(buf, end, depth + 1)? {
                        Some(len) => end += len,
                        None => return Ok(None),
                    }
                }
                Ok(Some(end - at))
            }
        },
        _ => Err(ProtocolError("unknown type byte")),
    }
}

/// Builds the value at `at` of a chunk [`measure`] checked whole; returns it and its length.
fn build(chunk: &Bytes, at: usize) -> (Value, usize) {
    let (text, next) = line(chunk, at).map(|(t, n)| (&t[1..], n)).expect("measured");
    let n = || number(text).expect("measured");
    match chunk[at] {
        b'+' => (Value::Simple(chunk.slice(at + 1..next - 2)), next - at),
        b'-' => (Value::Error(chunk.slice(at + 1..next - 2)), next - at),
        b':' => (Value::Integer(n()), next - at),
        b'$' => match n() {
            -1 => (Value::Bulk(None), next - at),
            len => {
                let end = next + len as usize;
                (Value::Bulk(Some(chunk.slice(next..end))), end + 2 - at)
            }
        },
        _ => match n() {
            -1 => (Value::Array(None), next - at),
            len => {
                let mut items = Vec::with_capacity(len as usize);
                let mut end = next;
                for _ in 0..len {
                    let (item, used) = build(chunk, end);
                    items.push(item);
                    end += used;
                }
                (Value::Array(Some(items)), end - at)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Value>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = take(&mut buf)? {
            out.push(f);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH".as_slice(), b"herald:user:u1", b"{}"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$14\r\nherald:user:u1\r\n$2\r\n{}\r\n");
    }

    #[test]
    fn every_kind_of_value_is_read() {
        let values = all(b"+OK\r\n-ERR no\r\n:42\r\n$-1\r\n*-1\r\n$0\r\n\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\na\r\nbc\r\n").unwrap();
        assert_eq!(
            values,
            vec![
                Value::Simple(Bytes::from_static(b"OK")),
                Value::Error(Bytes::from_static(b"ERR no")),
                Value::Integer(42),
                Value::Bulk(None),
                Value::Array(None),
                bulk(""),
                Value::Array(Some(vec![bulk("message"), bulk("ch"), bulk("a\r\nbc")])),
            ]
        );
    }

    #[test]
    fn a_value_split_anywhere_waits_for_the_rest() {
        let whole = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nabc\r\n:7\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let first = take(&mut buf).unwrap();
            if cut < whole.len() - 4 {
                assert_eq!(first, None, "cut at {cut}");
                assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            }
            buf.extend_from_slice(&whole[cut..]);
            let mut values: Vec<Value> = first.into_iter().collect();
            while let Some(f) = take(&mut buf).unwrap() {
                values.push(f);
            }
            assert_eq!(values.len(), 2, "cut at {cut}");
            assert_eq!(values[1], Value::Integer(7));
        }
    }

    #[test]
    fn messages_are_found_in_place_and_anything_else_is_left_to_take() {
        let buf = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\na\r\nbc\r\n:1\r\n";
        let m = message_at(buf).unwrap();
        assert_eq!((&buf[m.channel.clone()], &buf[m.payload.clone()]), (&b"ch"[..], &b"a\r\nbc"[..]));
        assert_eq!(&buf[m.len..], b":1\r\n");
        let s = b"*3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$0\r\n\r\n";
        assert_eq!(message_at(s).unwrap().len, s.len());
        for other in [&b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"[..], b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nab", b":1\r\n", b""] {
            assert!(message_at(other).is_none(), "{:?}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn what_is_not_resp2_is_an_error() {
        for bad in [&b"?x\r\n"[..], b":x\r\n", b"$-2\r\n", b"$3\r\nabcde\r\n", b"*99999999\r\n", b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"] {
            assert!(all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut huge = BytesMut::from(&b"+"[..]);
        huge.extend_from_slice(&vec![b'a'; MAX_BULK + 2]);
        assert!(take(&mut huge).is_err(), "a line with no end in sight");
    }
}
