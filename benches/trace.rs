//! What tracing costs herald, in CPU on this machine, piece by piece (the end-to-end bursts of
//! `scripts/bench.sh trace` are too noisy to see tenths of a microsecond):
//!
//! - carrying a record's `traceparent` with export off, per notification: reading it from the
//!   record's headers (once per record), the bus envelope's extra field written and read, and
//!   the second argument with it, each against the same without a trace;
//! - exporting: the sampling decision every record pays, and the four spans of a traced record
//!   (consume, route, publish, deliver) built, ended, batched, encoded and sent over OTLP/HTTP
//!   to a local sink by the SDK's batch thread (this process's CPU, all threads), which 1% of
//!   the records pay.
//!
//! Prints medians of 5 runs. Run: `cargo bench --bench trace`

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Instant, SystemTime};

use herald::bus::envelope;
use herald::config::TelemetryConfig;
use herald::gateway::second_argument;
use herald::notification::{Audience, Notification};
use herald::telemetry::TraceContext;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use serde_json::value::RawValue;

const N: usize = 200_000;
const RUNS: usize = 5;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

/// Median nanoseconds per iteration of `work`.
fn median_ns(n: usize, mut work: impl FnMut(usize)) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            for i in 0..n {
                work(i);
            }
            started.elapsed().as_secs_f64() * 1e9 / n as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

/// User + system CPU of this process so far (every thread), in microseconds.
fn cpu_micros() -> u64 {
    // SAFETY: getrusage only writes into the struct passed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// An OTLP/HTTP endpoint that takes every request and answers 200 (on a thread of its own).
fn sink() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
                    if reader.get_mut().write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn main() {
    println!("medians of {RUNS} runs; ns per operation unless said");
    let payload = RawValue::from_string(r#"{"userId":"user-1","seq":1,"ts":1764662400000000}"#.into()).unwrap();
    let plain = Notification::new(Audience::User("user-1".into()), "notification".into(), payload, 1_764_662_400_000);
    let headers: [(&str, &[u8]); 1] = [("traceparent", TRACEPARENT.as_bytes())];
    let read = median_ns(N, |_| {
        std::hint::black_box(TraceContext::from_headers(std::hint::black_box(&headers)));
    });
    let traced = Notification { trace: TraceContext::from_headers(&headers), ..plain.clone() };
    let encode = |n: &Notification| median_ns(N, |_| drop(std::hint::black_box(envelope::encode(n))));
    let (encode_plain, encode_traced) = (encode(&plain), encode(&traced));
    let (wire_plain, wire_traced) = (envelope::encode(&plain), envelope::encode(&traced));
    let decode = |wire: &str| {
        median_ns(N, |_| {
            let e = envelope::decode(std::hint::black_box(wire.as_bytes())).unwrap();
            std::hint::black_box(e.arrival());
        })
    };
    let (decode_plain, decode_traced) = (decode(&wire_plain), decode(&wire_traced));
    let id = "user-notifications/3/1234567/0";
    let arg = |tp: Option<&str>| median_ns(N, |_| drop(std::hint::black_box(second_argument(Some(id), tp))));
    let (arg_plain, arg_traced) = (arg(None), arg(Some(TRACEPARENT)));
    println!("carrying a traceparent, export off:");
    println!("  read from a record's headers (once per record): {read:.0}");
    println!("  bus envelope written: {encode_plain:.0} without, {encode_traced:.0} with");
    println!("  bus envelope read:    {decode_plain:.0} without, {decode_traced:.0} with");
    println!("  second argument:      {arg_plain:.0} without, {arg_traced:.0} with (id and traceparent)");
    let added = read + (encode_traced - encode_plain) + (decode_traced - decode_plain) + (arg_traced - arg_plain);
    println!("  added per notification: {:.2} µs", added / 1000.0);

    let config = TelemetryConfig { endpoint: Some(sink()), sampling_ratio: Some(0.01), ..TelemetryConfig::default() };
    herald::telemetry::spans::start(&config).unwrap();
    let tracer = herald::telemetry::tracer().expect("exporting");
    let decide = median_ns(N, |_| {
        std::hint::black_box(tracer.traces(None));
    });
    let parent = TraceContext::parse(TRACEPARENT.replace("-00", "-01").as_str(), None).unwrap();
    const TRACED: usize = 20_000;
    let cpu_before = cpu_micros();
    for i in 0..TRACED {
        let now = SystemTime::now();
        let consume = tracer.start(
            "consume",
            SpanKind::Consumer,
            Some(&parent),
            now,
            vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", "user-notifications".to_owned()),
                KeyValue::new("messaging.destination.partition.id", "3".to_owned()),
                KeyValue::new("messaging.kafka.offset", i as i64),
            ],
        );
        let mut route =
            tracer.start("route", SpanKind::Internal, Some(&consume.context), now, vec![KeyValue::new("herald.route", "default")]);
        route.set(KeyValue::new("herald.notifications", 1));
        let mut publish =
            tracer.start("publish", SpanKind::Producer, Some(&route.context), now, vec![KeyValue::new("herald.audience", "user")]);
        let mut deliver =
            tracer.start("deliver", SpanKind::Consumer, Some(&publish.context), now, vec![KeyValue::new("herald.audience", "user")]);
        deliver.set(KeyValue::new("herald.sockets", 1));
        deliver.end();
        publish.set(KeyValue::new("herald.receivers", 1));
        publish.end();
        route.end();
        consume.end();
    }
    // Everything exported before the CPU is read: the batch thread's share counts.
    herald::telemetry::spans::shutdown(std::time::Duration::from_secs(30));
    let per_traced = (cpu_micros() - cpu_before) as f64 / TRACED as f64;
    println!("exporting (OTLP/HTTP to a local sink):");
    println!("  sampling decision, every record: {decide:.0}");
    println!("  a traced record's 4 spans, built, ended and exported (all threads' CPU): {per_traced:.2} µs");
    println!("  at 1% sampling, per record: {:.3} µs", decide / 1000.0 + per_traced / 100.0);
}
