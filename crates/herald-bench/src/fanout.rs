//! Fan-out runs: broadcasts to every socket, or records to one big group, across instances;
//! per record, the time from produce to the first and to the last socket, CPU per delivered
//! notification, lost and duplicated (`scripts/bench.sh broadcast|group|scale`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fleet::{self, Fleet, Plan};
use crate::records::{Sender, Shape, payload, send_phase};
use crate::stats::{now_us, percentiles, proc_cpu_split, raise_fd_limit, rss_kib};
use crate::worker::{GROUP, Spread};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Audience {
    /// Every socket on every instance (topic herald-bench-broadcast).
    Broadcast,
    /// The group `bench-team` (topic herald-bench-group).
    Group,
}

#[derive(clap::Args)]
pub struct FanoutArgs {
    /// herald Socket.IO addresses; connections are spread evenly over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3000")]
    servers: Vec<SocketAddr>,
    /// herald process ids, in the order of --servers.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Connections, one per distinct user (b0, b1, ...).
    #[arg(long, default_value_t = 95_000)]
    users: usize,
    /// Most connections one worker process holds.
    #[arg(long, default_value_t = 9500)]
    per_worker: usize,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Partitions of each topic (the warm-up sends one record to each).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value = "bench-secret-not-for-production")]
    secret: String,
    #[arg(long, value_enum, default_value = "broadcast")]
    audience: Audience,
    /// Members of the group, spread evenly over the users (and so over the instances).
    #[arg(long, default_value_t = 10_000)]
    group_members: usize,
    /// Fan-out records to send.
    #[arg(long, default_value_t = 30)]
    records: u64,
    /// Fan-out records per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// First, one per-user record to every user at this rate (0: none), counted on its own.
    #[arg(long, default_value_t = 0)]
    per_user_rate: u64,
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Longest wait with no new arrival before a phase is taken as over.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    #[arg(long, default_value = "fanout")]
    label: String,
    /// Append the report as one JSON line here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const PER_USER_TOPIC: &str = "herald-bench";

impl Audience {
    fn topic(self) -> &'static str {
        match self {
            Audience::Broadcast => "herald-bench-broadcast",
            Audience::Group => "herald-bench-group",
        }
    }

    /// How many of `connected` sockets a record reaches.
    fn size(self, args: &FanoutArgs, connected: u64) -> u64 {
        match self {
            Audience::Broadcast => connected,
            Audience::Group => args.group_members.min(args.users) as u64,
        }
    }
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    anyhow::ensure!(!args.servers.is_empty() && args.pids.len() >= args.servers.len(), "give --servers and one --pids entry each");
    anyhow::ensure!(args.rate > 0.0 && args.records > 0, "need --records and a --rate above 0");
    let rss_before: Vec<Option<u64>> = args.pids.iter().map(|p| rss_kib(*p)).collect();
    let plan = Plan { servers: &args.servers, users: args.users, per_worker: args.per_worker, secret: &args.secret };
    let members = match args.audience {
        Audience::Group => args.group_members,
        Audience::Broadcast => 0,
    };
    let mut fleet = Fleet::start(&plan, |_, _| {
        ["--summary", "--group-members", &members.to_string(), "--all-users", &args.users.to_string()].map(String::from).to_vec()
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss = fleet::memory(&args.pids, &rss_before, &fleet.sockets_per_server);
    let rss_total_kib: u64 = args.pids.iter().filter_map(|p| rss_kib(*p)).sum();
    println!("instances' total RSS {:.1} MiB", rss_total_kib as f64 / 1024.0);

    let producer = Sender::start(&args.brokers, 0)?;
    let audience = args.audience.size(&args, fleet.connected);
    let mut send_us: Vec<u64> = Vec::new();
    let users: Vec<String> = (0..args.users).map(|u| format!("b{u}")).collect();

    // Warm-up (herald starts at the latest offsets): one record per partition of each topic used,
    // until all of them arrived.
    if args.per_user_rate > 0 {
        warm_up(&mut fleet, &args, 1, |p| {
            let seq = send_us.len() as u64;
            send_us.push(now_us());
            let user = &users[seq as usize % users.len()];
            producer.send(PER_USER_TOPIC, p, Some(user), &payload(user, seq, 0));
        })
        .await?;
    }
    warm_up(&mut fleet, &args, audience, |p| {
        let seq = send_us.len() as u64;
        send_us.push(now_us());
        producer.send(args.audience.topic(), p, None, &fanout_payload(seq));
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut report = json!({
        "label": args.label, "audience": format!("{:?}", args.audience).to_lowercase(), "users": args.users,
        "connected": fleet.connected, "connect_failed": fleet.failed, "connect_secs": fleet.connect_secs,
        "instances": args.pids.len(), "rss": rss, "rss_total_kib": rss_total_kib, "audience_size": audience,
    });

    let per_user = if args.per_user_rate > 0 {
        let first_seq = send_us.len() as u64;
        let before = fleet.total("count").await?;
        // Batched (linger 5 ms) as the single and pair runs are: librdkafka's mock broker walks
        // its batches linearly on every fetch, and 190,000 one-record batches slow it to a crawl.
        let batched = Sender::start(&args.brokers, 5)?;
        let (p, u, rate) = (batched.producer.clone(), users.clone(), args.per_user_rate);
        let shape = Shape { pad: 0, traceparent: false, other_header: false };
        let times =
            tokio::task::spawn_blocking(move || send_phase(&p, PER_USER_TOPIC, &u, (first_seq, u.len() as u64), rate, shape)).await?;
        let sent = times.len() as u64;
        send_us.extend(times);
        fleet.drain(before + sent, Duration::from_secs(args.drain_secs)).await?;
        batched.stop();
        println!("per-user phase: sent {sent} at {rate}/s");
        Some(first_seq..first_seq + sent)
    } else {
        None
    };

    let first_seq = send_us.len() as u64;
    let before = fleet.total("count").await?;
    let cpu_before = herald_cpu(&args.pids);
    let workers_before = fleet.total("cpu").await?;
    let start = Instant::now();
    for i in 0..args.records {
        let due = Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep(due.saturating_sub(start.elapsed())).await;
        let seq = send_us.len() as u64;
        send_us.push(now_us());
        producer.send(args.audience.topic(), (seq % args.partitions as u64) as i32, None, &fanout_payload(seq));
    }
    fleet.drain(before + args.records * audience, Duration::from_secs(args.drain_secs)).await?;
    let phase_secs = start.elapsed().as_secs_f64();
    let cpu_after = herald_cpu(&args.pids);
    let workers_cpu_us = fleet.total("cpu").await?.saturating_sub(workers_before);
    let (user_us, system_us) = (cpu_after.0.saturating_sub(cpu_before.0), cpu_after.1.saturating_sub(cpu_before.1));
    let herald_cpu_us = user_us + system_us;
    let fanout = first_seq..first_seq + args.records;
    producer.stop();

    let spreads = collect(&mut fleet).await?;
    fleet.stop().await;
    if let Some(range) = per_user {
        let (mut delivered, mut lost, mut duplicated, mut e2e) = (0u64, 0u64, 0u64, Vec::new());
        for seq in range.clone() {
            match spreads.get(&seq) {
                Some(s) => {
                    delivered += s.count;
                    duplicated += s.duplicates;
                    e2e.push(s.first as i64 - send_us[seq as usize] as i64);
                }
                None => lost += 1,
            }
        }
        let e2e = percentiles(&mut e2e);
        println!(
            "per-user: sent {} delivered {delivered} lost {lost} duplicated {duplicated} | e2e ms p50 {:.1} p99 {:.1} max {:.1}",
            range.end - range.start,
            ms(e2e[0]),
            ms(e2e[2]),
            ms(e2e[3])
        );
        report["per_user"] =
            json!({"sent": range.end - range.start, "delivered": delivered, "lost": lost, "duplicated": duplicated, "e2e_us": e2e});
    }
    let figures = Figures::of(fanout.map(|seq| (send_us[seq as usize], spreads.get(&seq).copied())), audience);
    let cpu_per = herald_cpu_us as f64 / figures.delivered.max(1) as f64;
    let workers_per = workers_cpu_us as f64 / figures.delivered.max(1) as f64;
    let kernel_share = system_us as f64 / herald_cpu_us.max(1) as f64;
    println!(
        "{:?} x{} to {audience} sockets: delivered {} lost {} duplicated {} | to first ms p50 {:.1} p99 {:.1} max {:.1} | to last ms p50 {:.1} p99 {:.1} max {:.1} | herald CPU {:.2} s = {cpu_per:.2} us per delivered notification ({:.0}% in the kernel), clients {workers_per:.2} us; {:.2} of 2 cores busy over {phase_secs:.1} s",
        args.audience,
        args.records,
        figures.delivered,
        figures.lost,
        figures.duplicated,
        ms(figures.to_first[0]),
        ms(figures.to_first[2]),
        ms(figures.to_first[3]),
        ms(figures.to_last[0]),
        ms(figures.to_last[2]),
        ms(figures.to_last[3]),
        herald_cpu_us as f64 / 1e6,
        kernel_share * 100.0,
        (herald_cpu_us + workers_cpu_us) as f64 / 1e6 / phase_secs,
    );
    report["fanout"] = json!({
        "records": args.records, "rate": args.rate, "delivered": figures.delivered, "lost": figures.lost,
        "duplicated": figures.duplicated, "to_first_us": figures.to_first, "to_last_us": figures.to_last,
        "herald_cpu_us": herald_cpu_us, "herald_cpu_us_per_delivered": cpu_per, "herald_kernel_share": kernel_share,
        "workers_cpu_us": workers_cpu_us, "workers_cpu_us_per_delivered": workers_per, "phase_secs": phase_secs,
    });
    if let Some(path) = &args.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{report}")?;
    }
    Ok(())
}

/// The herald processes' CPU time so far, summed: in user space and in the kernel.
fn herald_cpu(pids: &[u32]) -> (u64, u64) {
    pids.iter().filter_map(|p| proc_cpu_split(*p)).fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps))
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// A fan-out record: no user, the group for group topics (read by bench/herald-fanout.yaml's
/// `group: /group`), the sequence number the workers read.
fn fanout_payload(seq: u64) -> String {
    format!("{{\"group\":\"{GROUP}\",\"seq\":{seq},\"ts\":{}}}", now_us())
}

/// Sends one record to each partition (`send(partition)`) until every one reached its
/// `audience`, at most 40 rounds.
async fn warm_up(fleet: &mut Fleet, args: &FanoutArgs, audience: u64, mut send: impl FnMut(i32)) -> anyhow::Result<()> {
    for _round in 0..40 {
        let base = fleet.total("count").await?;
        (0..args.partitions).for_each(&mut send);
        let target = base + audience * args.partitions as u64;
        if fleet.drain(target, Duration::from_secs(2)).await? >= target {
            return Ok(());
        }
    }
    anyhow::bail!("warm-up failed: records do not reach the clients")
}

/// Every worker's summaries, merged per record.
async fn collect(fleet: &mut Fleet) -> anyhow::Result<BTreeMap<u64, Spread>> {
    let mut spreads: BTreeMap<u64, Spread> = BTreeMap::new();
    let mut malformed = 0;
    fleet
        .hand_back(|kind, numbers| match (kind, numbers) {
            ("f", &[seq, count, duplicates, first, last]) => {
                spreads.entry(seq).or_insert(Spread::NONE).merge(Spread { count, duplicates, first, last })
            }
            _ => malformed += 1,
        })
        .await?;
    anyhow::ensure!(malformed == 0, "{malformed} unexpected lines from the workers");
    Ok(spreads)
}

/// What the fan-out phase's records did.
#[derive(Debug, PartialEq)]
struct Figures {
    delivered: u64,
    lost: u64,
    duplicated: u64,
    /// Produce to the first socket and to the last, microseconds: p50, p90, p99, max over the
    /// records that arrived anywhere.
    to_first: [i64; 4],
    to_last: [i64; 4],
}

impl Figures {
    /// From each record's send time and spread (None: it reached nobody).
    fn of(records: impl Iterator<Item = (u64, Option<Spread>)>, audience: u64) -> Figures {
        let (mut delivered, mut lost, mut duplicated) = (0, 0, 0);
        let (mut first, mut last) = (Vec::new(), Vec::new());
        for (sent, spread) in records {
            let Some(s) = spread else {
                lost += audience;
                continue;
            };
            delivered += s.count;
            lost += audience.saturating_sub(s.count);
            duplicated += s.duplicates;
            first.push(s.first as i64 - sent as i64);
            last.push(s.last as i64 - sent as i64);
        }
        Figures { delivered, lost, duplicated, to_first: percentiles(&mut first), to_last: percentiles(&mut last) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_what_never_arrived_as_lost() {
        let spread = |count, first, last| Some(Spread { count, duplicates: 1, first, last });
        let records = [(100, spread(10, 150, 400)), (1000, None), (2000, spread(8, 2010, 2100))];
        let f = Figures::of(records.into_iter(), 10);
        assert_eq!((f.delivered, f.lost, f.duplicated), (18, 12, 2));
        assert_eq!(f.to_first[3], 50);
        assert_eq!(f.to_last[3], 300);
    }
}
