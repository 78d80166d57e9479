//! What compressing one notification costs on one core, and where the time goes: herald's
//! `compress` (zlib-rs, level 1, a per-thread compressor reset for each message, as
//! permessage-deflate without context takeover needs) on 2 KiB of JSON shaped like
//! herald-bench's `--payload-bytes 2048` notifications, against the reset alone (zlib-rs clears
//! its 128 KiB hash table so that no message refers to another) and against compressing with
//! no reset at all (which would be wrong on the wire: the floor of the work itself), and against
//! libdeflate, another compressor, at its fastest level. Prints medians of 5 runs.
//!
//! Run: `cargo bench -p herald-socketio --bench deflate`

use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use socketio::engine::deflate;

const MESSAGES: usize = 100_000;
const RUNS: usize = 5;

/// A notification of about `size` bytes: an order with a list of items (herald-bench's shape).
fn notification(seq: u64, size: usize) -> String {
    let mut out = format!("{{\"userId\":\"user-{}\",\"seq\":{seq},\"ts\":1764662400000000,\"items\":[", seq % 1000);
    let mut i = 0u64;
    while out.len() + 2 < size {
        let n = seq.wrapping_mul(7919).wrapping_add(i * 104_729) % 100_000;
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"sku\":\"SKU-{n:06}\",\"name\":\"Item {n}\",\"qty\":{},\"price\":{}.{:02}}}",
            n % 9 + 1,
            n % 500,
            n % 100
        ));
        i += 1;
    }
    out.push_str("]}");
    out
}

/// Median microseconds per message of `work` over `RUNS` runs of `MESSAGES` messages.
fn median_us(mut work: impl FnMut(usize) -> usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..RUNS {
        bytes = 0;
        let started = Instant::now();
        for i in 0..MESSAGES {
            bytes += work(i);
        }
        times.push(started.elapsed().as_secs_f64() * 1e6 / MESSAGES as f64);
    }
    times.sort_by(f64::total_cmp);
    (times[RUNS / 2], bytes / MESSAGES)
}

fn main() {
    let messages: Vec<String> = (0..64).map(|seq| notification(seq, 2048)).collect();
    let size = messages.iter().map(String::len).sum::<usize>() / messages.len();
    println!("{MESSAGES} messages of {size} bytes of JSON, medians of {RUNS} runs, one thread");
    let (us, out) = median_us(|i| deflate::compress(messages[i % 64].as_bytes()).len());
    println!("herald's compress (reset + level 1):        {us:.2} µs per message, {out} bytes ({:.2}x)", out as f64 / size as f64);
    let mut c = Compress::new(Compression::new(1), false);
    let (us, _) = median_us(|_| {
        c.reset();
        0
    });
    println!("the reset alone (clearing the hash table):  {us:.2} µs per message");
    let mut c = Compress::new(Compression::new(1), false);
    let mut out = Vec::with_capacity(4096);
    let (us, _) = median_us(|i| {
        out.clear();
        c.compress_vec(messages[i % 64].as_bytes(), &mut out, FlushCompress::Sync).expect("room enough");
        out.len()
    });
    println!("level 1 without any reset (the work alone): {us:.2} µs per message");
    // Another compressor, for comparison only: libdeflate compresses a whole buffer at once (no
    // stream, so no sync flush: its output ends with a final block, which RFC 7692 allows but
    // herald does not send). Level 1, its fastest.
    let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).expect("level 1 exists"));
    let mut out = vec![0; c.deflate_compress_bound(4096)];
    let (us, bytes) = median_us(|i| c.deflate_compress(messages[i % 64].as_bytes(), &mut out).expect("room enough"));
    println!("libdeflate level 1, whole buffer:           {us:.2} µs per message, {bytes} bytes ({:.2}x)", bytes as f64 / size as f64);
}
