//! The W3C trace context (Trace Context Level 1: `traceparent`, `tracestate`) a notification
//! carries from its Kafka record's headers to the client: read and checked once, then passed
//! on as text, whether or not herald exports spans.

use std::sync::Arc;

/// Longest `tracestate` passed on: the 512 characters the W3C text has every platform pass on
/// (32 members); a longer one is dropped rather than cut.
const MAX_TRACESTATE: usize = 512;

/// A checked trace context. The `traceparent` is always in its version-00 form, held inline
/// (a record's context is one allocation, shared by its notifications).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: [u8; 55],
    tracestate: Option<Box<str>>,
}

/// The fields of a `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Whether the caller recorded its span (the `sampled` flag).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The version-00 text: `00-{trace id}-{parent id}-{flags}`.
    pub fn format(&self) -> String {
        String::from_utf8(self.text().to_vec()).expect("hex and dashes")
    }

    fn text(&self) -> [u8; 55] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let digits = |out: &mut [u8], value: u128| {
            for (i, d) in out.iter_mut().rev().enumerate() {
                *d = HEX[(value >> (4 * i) & 0xf) as usize];
            }
        };
        digits(&mut out[3..35], self.trace_id);
        digits(&mut out[36..52], u128::from(self.parent_id));
        digits(&mut out[53..55], u128::from(self.flags));
        out
    }

    /// Parses a `traceparent` as the W3C text says: lowercase hex, neither id all zeros,
    /// version `ff` invalid; a later version is read by its version-00 fields (it may only
    /// append fields after a `-`).
    pub fn parse(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex(&b[0..2])? as u8;
        let exact = version == 0 && b.len() == 55;
        let later = version != 0 && version != 0xff && (b.len() == 55 || b[55] == b'-');
        if !exact && !later {
            return None;
        }
        let trace_id = hex(&b[3..35])?;
        let parent_id = hex(&b[36..52])? as u64;
        let flags = hex(&b[53..55])? as u8;
        (trace_id != 0 && parent_id != 0).then_some(Self { trace_id, parent_id, flags })
    }
}

/// Lowercase hex digits as a number (at most 32 of them).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

impl TraceContext {
    /// A checked context, or `None` if `traceparent` is invalid (the W3C text: restart the
    /// trace; herald then carries none). A `tracestate` that is too long or not printable ASCII
    /// is dropped, the `traceparent` kept.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let text = traceparent.trim_matches([' ', '\t']);
        let parent = TraceParent::parse(text)?;
        let tracestate = tracestate
            .map(|s| s.trim_matches([' ', '\t']))
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(Box::from);
        // A version-00 text is kept as it came; a later version is written as version 00.
        let traceparent = match text.as_bytes().try_into() {
            Ok(exact) if text.starts_with("00-") => exact,
            _ => parent.text(),
        };
        Some(Self { traceparent, tracestate })
    }

    /// The context a record's headers carry (`traceparent`, and `tracestate` with it; names
    /// compared without case, as for HTTP); `None` for none or an invalid one.
    pub fn from_headers(headers: &[(&str, &[u8])]) -> Option<Arc<Self>> {
        let find = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok());
        let traceparent = find("traceparent")?;
        Self::parse(traceparent, find("tracestate")).map(Arc::new)
    }

    /// A context for a span of herald's own, keeping the caller's `tracestate`.
    pub fn child(parent: TraceParent, tracestate: Option<&str>) -> Self {
        Self { traceparent: parent.text(), tracestate: tracestate.map(Box::from) }
    }

    pub fn traceparent(&self) -> &str {
        std::str::from_utf8(&self.traceparent).expect("checked: hex and dashes")
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Its fields (always there: the text was checked).
    pub fn fields(&self) -> TraceParent {
        TraceParent::parse(self.traceparent()).expect("a checked traceparent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_reads_back() {
        let p = TraceParent::parse(GOOD).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.parent_id, 0x00f067aa0ba902b7);
        assert!(p.sampled());
        assert_eq!(p.format(), GOOD);
        assert!(!TraceParent { flags: 0, ..p }.sampled());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_version_00_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let c = TraceContext::parse(later, None).unwrap();
        assert_eq!(c.traceparent(), GOOD, "passed on as version 00");
    }

    #[test]
    fn headers_carry_the_context_and_a_bad_tracestate_is_dropped() {
        let headers = [("TraceParent", GOOD.as_bytes()), ("tracestate", b"congo=t61rcWkgMzE" as &[u8])];
        let c = TraceContext::from_headers(&headers).unwrap();
        assert_eq!((c.traceparent(), c.tracestate()), (GOOD, Some("congo=t61rcWkgMzE")));
        assert_eq!(TraceContext::from_headers(&[("other", b"x")]), None);
        assert_eq!(TraceContext::from_headers(&[("traceparent", b"nonsense")]), None);
        let long = format!("a={}", "b".repeat(MAX_TRACESTATE));
        assert_eq!(TraceContext::parse(GOOD, Some(&long)).unwrap().tracestate(), None);
        assert_eq!(TraceContext::parse(GOOD, Some("a=\u{7}")).unwrap().tracestate(), None);
    }
}
