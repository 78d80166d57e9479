//! The coordinator: spawns worker processes, measures herald's RSS and CPU through /proc,
//! produces records at fixed rates, collects arrivals and reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use serde_json::json;

use crate::fleet::{self, Fleet, Plan};
use crate::records::{Sender, Shape, payload, send_phase};
use crate::share;
use crate::stats::{cpu_micros, now_us, percentiles, proc_cpu_micros, raise_fd_limit, rss_kib};

#[derive(clap::Args)]
pub struct RunArgs {
    /// herald Socket.IO addresses; connections are spread evenly over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3000")]
    servers: Vec<SocketAddr>,
    /// herald process ids to measure, the first ones in the order of --servers; more may follow
    /// (instances that only consume).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Connections, one per distinct user (b0, b1, ...).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Most connections one worker process holds (each process may hold ~20,000 fds).
    #[arg(long, default_value_t = 9500)]
    per_worker: usize,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "herald-bench")]
    topic: String,
    /// Partitions of the topic (the warm-up sends one record to each).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// herald's auth.jwt.secret (HS256).
    #[arg(long, default_value = "bench-secret-not-for-production")]
    secret: String,
    /// Records per second of each phase; 0 = as fast as possible (--max-count records).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    rates: Vec<u64>,
    /// Length of each fixed-rate phase.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Records of an as-fast-as-possible phase.
    #[arg(long, default_value_t = 200_000)]
    max_count: u64,
    /// Producer linger.ms (0: lowest latency; a few ms batch better at high rates).
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
    /// Also consume the topic here, to time when a record becomes available to a consumer and
    /// so estimate herald's own share of the latency.
    #[arg(long)]
    probe: bool,
    /// Wait after connecting before reading RSS (lets allocations settle).
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Longest wait for stragglers after the last record of a phase.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// Skip the load phases (memory only).
    #[arg(long)]
    idle_only: bool,
    /// Clients use long-polling (a GET always waiting, POSTs on a second connection) instead
    /// of WebSocket; each then holds two connections, so --per-worker should be halved.
    #[arg(long)]
    polling: bool,
    /// Each session opens over long-polling on this instance, then upgrades on its --servers
    /// entry, which (another instance, with Redis) moves the session there.
    #[arg(long)]
    open_on: Option<SocketAddr>,
    /// Clients' WebSockets offer permessage-deflate (as browsers and the Node client do).
    #[arg(long)]
    deflate: bool,
    /// Pad each record's JSON to about this many bytes with a list of items (0: the short
    /// record alone).
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Each measured record carries a W3C `traceparent` header (its producer's, not sampled).
    #[arg(long)]
    traceparent: bool,
    /// Each measured record carries a header herald does not read, as long as a `traceparent`
    /// (`x-request-id`): the cost of a header, apart from propagating a trace.
    #[arg(long)]
    other_header: bool,
    /// The last this many users connect and then never read (an overload: their notifications
    /// pile up in herald's per-socket queues and are dropped there). Not counted as lost.
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// A name for this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Append the report as one JSON line to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Exit non-zero unless every record of every phase was delivered exactly once.
    #[arg(long)]
    strict: bool,
}

struct Phase {
    rate: u64,
    first_seq: u64,
    sent: u64,
    send_secs: f64,
    herald_cpu_us: u64,
    /// The same per herald PID, in `--pids` order.
    herald_cpu_us_by_pid: Vec<u64>,
    bench_cpu_us: u64,
    workers_cpu_us: u64,
    /// herald's own latency histogram over the phase, summed over the servers.
    share: share::Buckets,
    /// Bytes herald wrote to WebSockets over the phase.
    ws_bytes: f64,
}

/// herald's counter of bytes written to WebSockets.
const WEBSOCKET_BYTES: &str = "herald_gateway_websocket_bytes_written_total";

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    anyhow::ensure!(!args.servers.is_empty() && args.users > 0, "need --servers and --users");
    anyhow::ensure!(args.pids.len() >= args.servers.len(), "give one --pids entry per server (and optionally more)");
    let rss_before: Vec<Option<u64>> = args.pids.iter().map(|p| rss_kib(*p)).collect();
    let plan = Plan { servers: &args.servers, users: args.users, per_worker: args.per_worker, secret: &args.secret };
    let mut fleet = Fleet::start(&plan, |first, n| {
        let mut extra = vec!["--stalled".to_owned(), stalled_in(first, n, args.users, args.stalled).to_string()];
        extra.extend(args.polling.then(|| "--polling".to_owned()));
        extra.extend(args.open_on.iter().flat_map(|a| ["--open-on".to_owned(), a.to_string()]));
        extra.extend(args.deflate.then(|| "--deflate".to_owned()));
        extra
    })
    .await?;
    let (connected, failed, connect_secs) = (fleet.connected, fleet.failed, fleet.connect_secs);
    let sockets_per_server = fleet.sockets_per_server.clone();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss = fleet::memory(&args.pids, &rss_before, &sockets_per_server);

    let mut report = json!({
        "label": args.label, "users": args.users, "connected": connected, "connect_failed": failed,
        "connect_secs": connect_secs, "rss": rss, "servers": args.servers.len(), "instances": args.pids.len(),
    });
    if !args.idle_only {
        let phases = load(&args, &mut fleet).await?;
        // After the load: what herald holds now (bounded queues, whatever stalled clients do).
        let end: Vec<u64> = args.pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();
        report["rss_end_kib"] = json!(end);
        report["phases"] = json!(phases);
    }
    fleet.stop().await;
    if let Some(path) = &args.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{report}")?;
    }
    if args.strict {
        let clean = report["phases"]
            .as_array()
            .map(|ps| ps.iter().all(|p| p["lost"] == 0 && p["duplicated"] == 0 && p["sent"] != 0))
            .unwrap_or(true);
        anyhow::ensure!(clean && failed == 0, "records were lost or duplicated, or connections failed");
    }
    Ok(())
}

/// Warm-up, the rate phases, then collecting every arrival from the workers.
async fn load(args: &RunArgs, fleet: &mut Fleet) -> anyhow::Result<Vec<serde_json::Value>> {
    let sender = Sender::start(&args.brokers, args.linger_ms)?;
    let producer = sender.producer.clone();
    let probe = args.probe.then(|| Probe::start(&args.brokers, &args.topic)).transpose()?;
    let users: Vec<String> = (0..args.users).map(|u| format!("b{u}")).collect();
    let mut send_us: Vec<u64> = Vec::new();

    // Warm-up: until one record per partition arrives, herald (auto.offset.reset=latest) may
    // not have its partitions yet. Warm-up records are not counted in any phase.
    let mut warmed = false;
    for _round in 0..40 {
        let base = fleet.total("count").await?;
        let probe_base = probe.as_ref().map(|p| p.count());
        for p in 0..args.partitions {
            let seq = send_us.len() as u64;
            send_us.push(now_us());
            let user = &users[seq as usize % users.len()];
            let value = payload(user, seq, args.payload_bytes);
            sender.send(&args.topic, p, Some(user), &value);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let got = fleet.total("count").await? >= base + args.partitions as u64;
            let probed = match (&probe, probe_base) {
                (Some(p), Some(b)) => p.count() >= b + args.partitions as u64,
                _ => true,
            };
            if got && probed {
                warmed = true;
                break;
            }
        }
        if warmed {
            break;
        }
    }
    anyhow::ensure!(warmed, "warm-up failed: records do not reach the clients (is herald consuming {}?)", args.topic);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut phases = Vec::new();
    for &rate in &args.rates {
        let count = if rate == 0 { args.max_count } else { rate * args.secs };
        let first_seq = send_us.len() as u64;
        let received_before = fleet.total("count").await?;
        let before_by_pid: Vec<u64> = args.pids.iter().map(|p| proc_cpu_micros(*p).unwrap_or(0)).collect();
        let herald_before: u64 = before_by_pid.iter().sum();
        let bench_before = cpu_micros();
        let workers_before = fleet.total("cpu").await?;
        let share_before = share::scrape(&args.servers).await;
        let bytes_before = share::counter(&args.servers, WEBSOCKET_BYTES).await.unwrap_or(0.0);
        let t0 = Instant::now();
        // Sending runs on a thread of its own; times are written into a buffer handed back.
        let (producer2, topic, users2) = (producer.clone(), args.topic.clone(), users.clone());
        let shape = Shape { pad: args.payload_bytes, traceparent: args.traceparent, other_header: args.other_header };
        let times = tokio::task::spawn_blocking(move || send_phase(&producer2, &topic, &users2, (first_seq, count), rate, shape)).await?;
        let send_secs = t0.elapsed().as_secs_f64();
        let sent = times.len() as u64;
        send_us.extend(times);
        let expected = sent - to_stalled(first_seq, sent, args.users, args.stalled);
        // Drain: until every record of the phase arrived, or nothing new for --drain-secs.
        fleet.drain(received_before + expected, Duration::from_secs(args.drain_secs)).await?;
        let after_by_pid: Vec<u64> = args.pids.iter().map(|p| proc_cpu_micros(*p).unwrap_or(0)).collect();
        let herald_after: u64 = after_by_pid.iter().sum();
        let workers_after = fleet.total("cpu").await?;
        let ws_bytes = share::counter(&args.servers, WEBSOCKET_BYTES).await.unwrap_or(0.0) - bytes_before;
        let share = match (share_before, share::scrape(&args.servers).await) {
            (Ok(before), Ok(after)) => share::since(&before, &after),
            (Err(e), _) | (_, Err(e)) => {
                println!("herald's latency histogram not read: {e}");
                Vec::new()
            }
        };
        phases.push(Phase {
            rate,
            first_seq,
            sent,
            send_secs,
            herald_cpu_us: herald_after.saturating_sub(herald_before),
            herald_cpu_us_by_pid: after_by_pid.iter().zip(&before_by_pid).map(|(a, b)| a.saturating_sub(*b)).collect(),
            bench_cpu_us: cpu_micros().saturating_sub(bench_before),
            workers_cpu_us: workers_after.saturating_sub(workers_before),
            ws_bytes,
            share,
        });
        println!("phase rate={rate}: sent {sent} in {send_secs:.2} s");
    }
    sender.stop();
    let probe_times = probe.map(Probe::stop).unwrap_or_default();

    // Collect arrivals.
    let mut arrivals: Vec<(u64, u64)> = Vec::new();
    let workers_cpu_total = fleet
        .hand_back(|kind, numbers| {
            if let ("d", [seq, at]) = (kind, numbers) {
                arrivals.push((*seq, *at));
            }
        })
        .await?;
    let acks = producer.context();
    let acked_failed = acks.failed();
    println!(
        "producer: {} acknowledged, {acked_failed} failed; workers used {:.2} s CPU in all",
        acks.ok(),
        workers_cpu_total as f64 / 1e6
    );

    let mut out = Vec::new();
    for phase in &phases {
        let range = phase.first_seq..phase.first_seq + phase.sent;
        let mut seen: HashMap<u64, u64> = HashMap::with_capacity(phase.sent as usize);
        let mut deliveries = 0u64;
        let mut e2e = Vec::with_capacity(phase.sent as usize);
        let mut share = Vec::new();
        let mut last_rx = 0u64;
        for &(seq, at) in arrivals.iter().filter(|(s, _)| range.contains(s)) {
            deliveries += 1;
            if seen.insert(seq, at).is_some() {
                continue;
            }
            last_rx = last_rx.max(at);
            e2e.push(at as i64 - send_us[seq as usize] as i64);
            if let Some(consumed) = probe_times.get(&seq) {
                share.push(at as i64 - *consumed as i64);
            }
        }
        let unique = seen.len() as u64;
        let stalled_sent = to_stalled(phase.first_seq, phase.sent, args.users, args.stalled);
        let expected = phase.sent - stalled_sent;
        let first_send = send_us.get(phase.first_seq as usize).copied().unwrap_or(0);
        let span_secs = (last_rx.saturating_sub(first_send)) as f64 / 1e6;
        let rate_delivered = if span_secs > 0.0 { unique as f64 / span_secs } else { 0.0 };
        let e2e = percentiles(&mut e2e);
        let share_p = percentiles(&mut share);
        let cpu_per = if unique > 0 { phase.herald_cpu_us as f64 / unique as f64 } else { 0.0 };
        let herald_share: Option<[f64; 3]> = [0.5, 0.9, 0.99]
            .map(|q| share::quantile(&phase.share, q).map(|s| s * 1e6))
            .into_iter()
            .collect::<Option<Vec<f64>>>()
            .map(|v| [v[0], v[1], v[2]]);
        let within_2ms = share::fraction_within(&phase.share, 0.002);
        println!(
            "rate {:>6}/s: sent {} delivered {} lost {} duplicated {} | {:.0} delivered/s | e2e us p50 {} p90 {} p99 {} max {}{}{} | herald CPU {:.2} s = {:.2} us/notification | bench CPU {:.2} s, workers {:.2} s",
            phase.rate,
            phase.sent,
            unique,
            expected.saturating_sub(unique),
            deliveries - unique,
            rate_delivered,
            e2e[0],
            e2e[1],
            e2e[2],
            e2e[3],
            if share.is_empty() {
                String::new()
            } else {
                format!(" | after consume us p50 {} p90 {} p99 {} max {}", share_p[0], share_p[1], share_p[2], share_p[3])
            },
            match (herald_share, within_2ms) {
                (Some(s), Some(w)) => format!(
                    " | herald share (consume -> emit) us p50 {:.0} p90 {:.0} p99 {:.0}, {:.2}% within 2 ms",
                    s[0],
                    s[1],
                    s[2],
                    w * 100.0
                ),
                _ => String::new(),
            },
            phase.herald_cpu_us as f64 / 1e6,
            cpu_per,
            phase.bench_cpu_us as f64 / 1e6,
            phase.workers_cpu_us as f64 / 1e6,
        );
        if unique > 0 {
            println!("  websocket bytes written per delivered notification: {:.0}", phase.ws_bytes / unique as f64);
        }
        out.push(json!({
            "rate": phase.rate, "sent": phase.sent, "delivered": unique, "lost": expected.saturating_sub(unique), "to_stalled": stalled_sent,
            "duplicated": deliveries - unique, "send_secs": phase.send_secs, "delivered_per_sec": rate_delivered,
            "e2e_us": e2e, "share_us": if share.is_empty() { serde_json::Value::Null } else { json!(share_p) },
            "herald_share_us": herald_share, "herald_share_within_2ms": within_2ms,
            "herald_cpu_us": phase.herald_cpu_us, "herald_cpu_us_by_pid": phase.herald_cpu_us_by_pid, "herald_cpu_us_per_delivered": cpu_per,
            "bench_cpu_us": phase.bench_cpu_us, "workers_cpu_us": phase.workers_cpu_us,
            "producer_failed": acked_failed,
            "ws_bytes_per_delivered": if unique > 0 { phase.ws_bytes / unique as f64 } else { 0.0 },
        }));
    }
    Ok(out)
}

/// How many of the users `first..first + n` are stalled (the last `stalled` of `users`).
fn stalled_in(first: usize, n: usize, users: usize, stalled: usize) -> usize {
    let from = users.saturating_sub(stalled);
    (first + n).saturating_sub(from.max(first)).min(n)
}

/// How many of the records `first_seq..first_seq + count` go to a stalled user (record `seq` goes
/// to user `seq % users`).
fn to_stalled(first_seq: u64, count: u64, users: usize, stalled: usize) -> u64 {
    if stalled == 0 || users == 0 {
        return 0;
    }
    let from = users.saturating_sub(stalled) as u64;
    (first_seq..first_seq + count).filter(|seq| seq % users as u64 >= from).count() as u64
}

/// A consumer of our own, in its own group, with the fetch settings of bench/herald.yaml: when a record reaches
/// it is about when it reaches herald's consumer.
struct Probe {
    stop: Arc<AtomicBool>,
    times: Arc<Mutex<HashMap<u64, u64>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Probe {
    fn start(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("herald-bench-probe-{}", std::process::id()))
            .set("auto.offset.reset", "latest")
            .set("fetch.wait.max.ms", "5")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[topic])?;
        let stop = Arc::new(AtomicBool::new(false));
        let times = Arc::new(Mutex::new(HashMap::new()));
        let thread = {
            let (stop, times) = (stop.clone(), times.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(3600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                        let at = now_us();
                        let seq = m.payload().and_then(|p| std::str::from_utf8(p).ok()).and_then(|t| {
                            let start = t.find("\"seq\":")? + 6;
                            let rest = &t[start..];
                            rest[..rest.find(',').unwrap_or(rest.len())].parse::<u64>().ok()
                        });
                        if let (Some(seq), Ok(mut times)) = (seq, times.lock()) {
                            times.insert(seq, at);
                        }
                    }
                }
            })
        };
        Ok(Self { stop, times, thread })
    }

    fn count(&self) -> u64 {
        self.times.lock().map(|t| t.len() as u64).unwrap_or(0)
    }

    fn stop(self) -> HashMap<u64, u64> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        std::mem::take(&mut *self.times.lock().expect("probe lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_users_are_the_last_ones() {
        assert_eq!(stalled_in(0, 500, 1000, 100), 0);
        assert_eq!(stalled_in(500, 500, 1000, 100), 100);
        assert_eq!(stalled_in(850, 100, 1000, 100), 50);
        assert_eq!(to_stalled(0, 1000, 1000, 100), 100);
        assert_eq!(to_stalled(0, 200_000, 1000, 0), 0);
        assert_eq!(to_stalled(950, 10, 1000, 100), 10);
    }
}
