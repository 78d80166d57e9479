//! The worker processes that hold the connections: spawned over the servers' shares, each on a
//! source address of its own, asked for counts over a line protocol, and stopped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    server: usize,
}

impl Worker {
    /// Sends `command` and reads the number after `answer` on the reply line.
    pub async fn ask(&mut self, command: &str, answer: &str) -> anyhow::Result<u64> {
        self.tell(command).await?;
        let line = self.line_within(Duration::from_secs(10), command).await?;
        let value = line.strip_prefix(answer).and_then(|v| v.trim().parse().ok());
        value.ok_or_else(|| anyhow::anyhow!("unexpected worker answer {line:?}"))
    }

    pub async fn tell(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The next line the worker prints, waiting at most `within` for it (`what`: for the error).
    async fn line_within(&mut self, within: Duration, what: &str) -> anyhow::Result<String> {
        tokio::time::timeout(within, self.lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("a worker did not answer in {within:?}: {what}"))??
            .ok_or_else(|| anyhow::anyhow!("a worker exited before answering: {what}"))
    }
}

/// What to start: `users` connections (users b0, b1, ...) spread evenly over `servers`, at most
/// `per_worker` per process.
pub struct Plan<'a> {
    pub servers: &'a [SocketAddr],
    pub users: usize,
    pub per_worker: usize,
    pub secret: &'a str,
}

/// The running workers, connected.
pub struct Fleet {
    pub workers: Vec<Worker>,
    pub connected: u64,
    pub failed: u64,
    pub sockets_per_server: Vec<usize>,
    pub connect_secs: f64,
}

impl Fleet {
    /// Spawns the workers (`extra(first_user, n)`: more arguments for the one holding users
    /// `first_user..first_user + n`) and waits until every connection attempt is over.
    pub async fn start(plan: &Plan<'_>, extra: impl Fn(usize, usize) -> Vec<String>) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe()?;
        let mut workers = Vec::new();
        let started = Instant::now();
        let mut next_user = 0;
        for (s, server) in plan.servers.iter().enumerate() {
            let share = plan.users / plan.servers.len() + usize::from(s < plan.users % plan.servers.len());
            let mut left = share;
            while left > 0 {
                let n = left.min(plan.per_worker);
                // A source address per worker, so ephemeral ports never run out.
                let bind = IpAddr::V4(Ipv4Addr::new(127, 0, (workers.len() / 250) as u8, (2 + workers.len() % 250) as u8));
                let mut child = Command::new(&exe)
                    .args(["worker", "--server", &server.to_string(), "--bind", &bind.to_string()])
                    .args(["--first-user", &next_user.to_string(), "--users", &n.to_string(), "--secret", plan.secret])
                    .args(extra(next_user, n))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()?;
                let stdin = child.stdin.take().expect("piped");
                let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
                workers.push(Worker { child, stdin, lines, server: s });
                next_user += n;
                left -= n;
            }
        }
        let mut fleet = Fleet { workers, connected: 0, failed: 0, sockets_per_server: vec![0; plan.servers.len()], connect_secs: 0.0 };
        for w in &mut fleet.workers {
            let line = w.line_within(Duration::from_secs(300), "ready").await?;
            let parts: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
            anyhow::ensure!(line.starts_with("ready") && parts.len() == 3, "unexpected worker line {line:?}");
            fleet.connected += parts[0];
            fleet.failed += parts[1];
            fleet.sockets_per_server[w.server] += parts[0] as usize;
        }
        fleet.connect_secs = started.elapsed().as_secs_f64();
        println!("connected {} of {} sockets in {:.1} s ({} failed)", fleet.connected, plan.users, fleet.connect_secs, fleet.failed);
        Ok(fleet)
    }

    /// Sum of one numeric answer over all workers.
    pub async fn total(&mut self, command: &str) -> anyhow::Result<u64> {
        let mut sum = 0;
        for w in self.workers.iter_mut() {
            sum += w.ask(command, command).await?;
        }
        Ok(sum)
    }

    /// Waits until the workers hold `target` notifications in all, or none arrived for `quiet`
    /// (bounded by six times that); returns the count reached.
    pub async fn drain(&mut self, target: u64, quiet: Duration) -> anyhow::Result<u64> {
        let mut last = self.total("count").await?;
        let mut last_change = Instant::now();
        let hard_deadline = Instant::now() + quiet * 6;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.total("count").await?;
            if now >= target || Instant::now() > hard_deadline {
                return Ok(now);
            }
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() > quiet {
                return Ok(now);
            }
        }
    }

    /// Tells every worker to stop and reads what it hands back until its `end` line: each other
    /// line's first word and numbers go to `each`. Returns the workers' CPU time in all (µs).
    pub async fn hand_back(&mut self, mut each: impl FnMut(&str, &[u64])) -> anyhow::Result<u64> {
        let mut cpu = 0;
        for w in self.workers.iter_mut() {
            w.tell("stop").await?;
            loop {
                let line = w.line_within(Duration::from_secs(60), "its arrivals").await?;
                let mut words = line.split_whitespace();
                let kind = words.next().unwrap_or_default();
                let numbers: Vec<u64> = words.filter_map(|v| v.parse().ok()).collect();
                if kind == "end" {
                    cpu += numbers.first().copied().unwrap_or(0);
                    break;
                }
                each(kind, &numbers);
            }
        }
        Ok(cpu)
    }

    /// Kills every worker and waits for it.
    pub async fn stop(self) {
        for mut w in self.workers {
            let _ = w.child.start_kill();
            let _ = w.child.wait().await;
        }
    }
}

/// Each herald's RSS now against `before`, per connection it holds (`sockets`, in `pids` order),
/// printed and as JSON.
pub fn memory(pids: &[u32], before: &[Option<u64>], sockets: &[usize]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (i, pid) in pids.iter().enumerate() {
        let sockets = sockets.get(i).copied().unwrap_or(0);
        let (before, after) = (before[i].unwrap_or(0), crate::stats::rss_kib(*pid).unwrap_or(0));
        let per_conn = if sockets > 0 { (after as f64 - before as f64) / sockets as f64 } else { 0.0 };
        println!("herald pid {pid}: RSS {before} KiB -> {after} KiB with {sockets} sockets: {per_conn:.2} KiB per connection");
        out.push(json!({"pid": pid, "before_kib": before, "after_kib": after, "sockets": sockets, "per_conn_kib": per_conn}));
    }
    out
}
