//! Fuzzes the bus messages an instance reads off Redis, which any service may publish to a
//! user's, a group's or the broadcast channel: a notification envelope, a control message, or
//! neither, never a panic; a control message written back by herald reads the same. A trace
//! context (`"tp"`, `"ts"`) is read as the W3C text says or refused, and one read is written
//! back in the version-00 form, which reads the same.
#![no_main]

use herald::bus::envelope::{decode, decode_control, encode_end_sessions};
use herald::telemetry::TraceContext;
use herald::telemetry::context::TraceParent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode(data) {
        let _ = envelope.consumed_us();
        if let Some(tp) = envelope.traceparent.as_deref()
            && let Some(context) = TraceContext::parse(tp, envelope.tracestate.as_deref())
        {
            let fields = context.fields();
            assert_eq!(context.traceparent().len(), 55, "{tp}");
            assert!(fields.trace_id != 0 && fields.parent_id != 0, "{tp}");
            assert_eq!(TraceParent::parse(&fields.format()), Some(fields), "{tp}");
            assert!(context.tracestate().is_none_or(|s| s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b))));
        }
        // JSON syntax (a number may be past what an f64 holds: it is passed on as written).
        assert!(serde_json::from_str::<serde::de::IgnoredAny>(envelope.payload.get()).is_ok(), "the payload is JSON");
    }
    if let Some(control) = decode_control(data) {
        let users: Vec<String> = control.users.iter().map(|u| u.to_string()).collect();
        let written = encode_end_sessions(&users, control.revoked_at_ms);
        let again = decode_control(written.as_bytes()).expect("herald's own control message reads");
        assert_eq!((again.users, again.revoked_at_ms), (control.users, control.revoked_at_ms));
        assert!(decode(written.as_bytes()).is_err(), "a control message is no notification");
    }
});
