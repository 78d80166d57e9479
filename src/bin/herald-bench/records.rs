//! The records the load generator produces: per-user notifications, padded to a size when
//! asked, sent at a fixed rate or as fast as the producer takes them.

use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};

use crate::run::Acks;
use crate::stats::now_us;

/// A record for `user`; with `pad`, an order's items bring it to about `pad` bytes of JSON, as
/// an application's notification is (repeated keys, varied values).
pub fn payload(user: &str, seq: u64, pad: usize) -> String {
    let mut out = format!("{{\"userId\":\"{user}\",\"seq\":{seq},\"ts\":{}", now_us());
    if pad > out.len() {
        out.push_str(",\"items\":[");
        let mut i = 0u64;
        while out.len() + 2 < pad {
            let n = seq.wrapping_mul(7919).wrapping_add(i * 104_729) % 100_000;
            let item =
                format!("{{\"sku\":\"SKU-{n:06}\",\"name\":\"Item {n}\",\"qty\":{},\"price\":{}.{:02}}}", n % 9 + 1, n % 500, n % 100);
            if i > 0 {
                out.push(',');
            }
            out.push_str(&item);
            i += 1;
        }
        out.push(']');
    }
    out.push('}');
    out
}

/// What each measured record is like.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Its JSON padded to about this many bytes (0: the short record alone).
    pub pad: usize,
    /// A `traceparent` header, one trace per record, not sampled.
    pub traceparent: bool,
}

/// Sends `count` records (`seqs`: the first sequence number and the count) at `rate` per second
/// (0: as fast as the producer takes them), to user `seq % users`, keyed by user, shaped by
/// `shape`; returns each record's send time.
pub fn send_phase(producer: &BaseProducer<Acks>, topic: &str, users: &[String], seqs: (u64, u64), rate: u64, shape: Shape) -> Vec<u64> {
    let (first_seq, count) = seqs;
    let mut times = Vec::with_capacity(count as usize);
    let start = Instant::now();
    let time_limit = Duration::from_secs(if rate == 0 { 120 } else { count / rate.max(1) * 3 + 30 });
    let mut seq = first_seq;
    while seq < first_seq + count && start.elapsed() < time_limit {
        if rate > 0 {
            let due = Duration::from_secs_f64((seq - first_seq) as f64 / rate as f64);
            let elapsed = start.elapsed();
            if due > elapsed {
                std::thread::sleep((due - elapsed).min(Duration::from_micros(500)));
                continue;
            }
        }
        let user = &users[seq as usize % users.len()];
        let value = payload(user, seq, shape.pad);
        let traceparent = if shape.traceparent { format!("00-{:032x}-{:016x}-00", u128::from(seq) + 1, seq + 1) } else { String::new() };
        let sent_at = now_us();
        let mut record = BaseRecord::<str, str>::to(topic).key(user).payload(&value);
        if shape.traceparent {
            record = record.headers(OwnedHeaders::new().insert(Header { key: "traceparent", value: Some(&traceparent) }));
        }
        let mut tries = 0;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) if tries < 1000 => {
                    record = back;
                    tries += 1;
                    producer.poll(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
        times.push(sent_at);
        seq += 1;
    }
    times
}
