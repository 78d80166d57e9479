//! The records the load generator produces: per-user notifications, padded to a size when
//! asked, sent at a fixed rate or as fast as the producer takes them.

use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

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

/// Counts producer acknowledgements.
#[derive(Default)]
pub struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

impl Acks {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// A producer with its delivery reports polled on a thread of its own.
pub struct Sender {
    pub producer: Arc<BaseProducer<Acks>>,
    stop: Arc<AtomicBool>,
    poller: std::thread::JoinHandle<()>,
}

impl Sender {
    pub fn start(brokers: &str, linger_ms: u64) -> anyhow::Result<Sender> {
        let producer: Arc<BaseProducer<Acks>> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", linger_ms.to_string())
                .set("queue.buffering.max.messages", "1000000")
                .set("message.timeout.ms", "30000")
                .create_with_context(Acks::default())?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(3600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    producer.poll(Duration::from_millis(50));
                }
            })
        };
        Ok(Sender { producer, stop, poller })
    }

    /// Queues one record (no key: the partition alone places it).
    pub fn send(&self, topic: &str, partition: i32, key: Option<&str>, value: &str) {
        let mut record = BaseRecord::<str, str>::to(topic).partition(partition).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Err((e, _)) = self.producer.send(record) {
            eprintln!("herald-bench: a record was not queued: {e}");
        }
    }

    /// Flushes what is queued (at most 10 s) and stops polling.
    pub fn stop(self) {
        let _ = self.producer.flush(Duration::from_secs(10));
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.poller.join();
    }
}

/// What each measured record is like.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Its JSON padded to about this many bytes (0: the short record alone).
    pub pad: usize,
    /// A `traceparent` header, one trace per record, not sampled.
    pub traceparent: bool,
    /// Instead, a header herald does not read, of the same size (`x-request-id`): what a record
    /// carrying any header costs, apart from what propagating a trace adds.
    pub other_header: bool,
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
        let header = match (shape.traceparent, shape.other_header) {
            (true, _) => Some(("traceparent", format!("00-{:032x}-{:016x}-00", u128::from(seq) + 1, seq + 1))),
            (false, true) => Some(("x-request-id", format!("{:032x}-{:016x}-0000", u128::from(seq) + 1, seq + 1))),
            _ => None,
        };
        let sent_at = now_us();
        let mut record = BaseRecord::<str, str>::to(topic).key(user).payload(&value);
        if let Some((key, value)) = &header {
            record = record.headers(OwnedHeaders::new().insert(Header { key, value: Some(value) }));
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
