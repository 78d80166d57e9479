//! Fuzzes the HTTP/1.1 request head parser of herald's own front (every Socket.IO request
//! passes through it before anything else): any bytes give a request, "not complete yet" or a
//! refusal, never a panic; a head parsed whole parses the same with more bytes after it, and no
//! shorter prefix of it reads as a request.
#![no_main]

use socketio::engine::front::parse_head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keep = |name: &str| name.starts_with('x');
    let Ok(Some((request, len))) = parse_head(data, &keep) else { return };
    assert!(len > 0 && len <= data.len());
    let mut longer = data[..len].to_vec();
    longer.extend_from_slice(b"POST /next HTTP/1.1\r\n");
    let (again, again_len) = parse_head(&longer, &keep).expect("the same head").expect("complete");
    assert_eq!(
        (again_len, &again.path, &again.query, again.method, again.keep_alive),
        (len, &request.path, &request.query, request.method, request.keep_alive)
    );
    for cut in [0, len / 2, len - 1] {
        assert!(!matches!(parse_head(&data[..cut], &keep), Ok(Some(_))), "a prefix of a head is not a request");
    }
    for (name, _) in &request.headers {
        assert_eq!(name.to_ascii_lowercase(), **name, "header names are kept lower-case");
    }
});
