//! Fuzzes routing: any record (key, value, headers, timestamp) through the default rule (user
//! id from a JSON pointer or from the key) and through the shipped script
//! `routes/user-notifications.rhai` must give notifications or a `RouteError`, never a panic; a
//! `traceparent` header, read as the Kafka source reads it, is carried by every notification.
//!
//! Input layout, so seeds stay readable: byte 0 picks the topic (bits 0-1) and whether there is
//! a key (bit 2) and a timestamp (bit 3); then, if keyed, a length byte and the key; a byte with
//! the header count (0-3), each header as a length byte + name and a length byte + value; then
//! 8 timestamp bytes if flagged; the rest is the record value.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use herald::config::Config;
use herald::notification::Audience;
use herald::route::{Record, Router};
use herald::telemetry::TraceContext;
use libfuzzer_sys::fuzz_target;

const TOPICS: [&str; 4] = ["scripted", "by-pointer", "by-key", "unconfigured"];

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let yaml = r#"
auth: {jwt: {secret: fuzz}}
kafka:
  topics:
    - {name: scripted, script: routes/user-notifications.rhai}
    - {name: by-pointer, retain: true}
    - {name: by-key, user_id: key}
"#;
        let base = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let config = Config::from_yaml(yaml, base, &|_| None).expect("the fuzz config is valid");
        Router::new(&config, herald::metrics::Metrics::detached()).expect("the shipped script compiles")
    })
}

/// Splits `n` bytes off the front of `data`, or all that is left.
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let flags = byte(&mut data);
    let topic = TOPICS[usize::from(flags & 3)];
    let key = if flags & 4 != 0 {
        let n = byte(&mut data);
        Some(take(&mut data, n.into()))
    } else {
        None
    };
    let mut owned_headers = Vec::new();
    for _ in 0..byte(&mut data) % 4 {
        let n = byte(&mut data);
        let name = String::from_utf8_lossy(take(&mut data, n.into())).into_owned();
        let n = byte(&mut data);
        owned_headers.push((name, take(&mut data, n.into())));
    }
    let timestamp_ms = (flags & 8 != 0).then(|| {
        let mut bytes = [0u8; 8];
        let t = take(&mut data, 8);
        bytes[..t.len()].copy_from_slice(t);
        i64::from_le_bytes(bytes)
    });
    let headers: Vec<(&str, &[u8])> = owned_headers.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    // A `traceparent` among the headers is read as the source reads it, and carried on.
    let trace = TraceContext::from_headers(&headers);
    let record = Record { topic, partition: 0, offset: 0, key, value: Some(data), timestamp_ms, headers: &headers, trace: trace.as_ref() };
    let mut out = Vec::new();
    if router().route(&record, &mut out).is_ok() {
        assert!(!out.is_empty(), "a routed record gives at least one notification");
        for n in &out {
            match &n.to {
                Audience::User(user) => assert!(!user.is_empty(), "a notification always names its user"),
                Audience::Group { name, .. } => assert!(!name.is_empty(), "or its group"),
                Audience::Broadcast => {}
            }
            assert_eq!(n.trace, trace, "each notification carries its record's trace");
        }
    }
});
