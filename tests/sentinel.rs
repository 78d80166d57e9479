//! Redis under Sentinel, as users run it for high availability: a real master, a replica and
//! three `redis-sentinel` processes. herald reaches Redis through the Sentinels
//! (`redis-sentinel://.../mymaster`); the master is killed mid-stream, the Sentinels promote the
//! replica, and herald follows: for a user connected throughout nothing is lost.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A redis-server or redis-sentinel process, killed on drop.
struct Process(Option<Child>);

impl Process {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_sentinel() -> PathBuf {
    std::env::var_os("REDIS_SENTINEL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("redis-sentinel"))
}

/// A master, its replica and three Sentinels watching them as `mymaster`.
struct SentinelSet {
    master: Process,
    _replica: Process,
    _sentinels: Vec<Process>,
    master_port: u16,
    replica_port: u16,
    sentinel_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (master_port, replica_port) = (free_port(), free_port());
        let server = |port: u16, extra: &[String]| {
            let data = dir.path().join(port.to_string());
            std::fs::create_dir_all(&data).unwrap();
            Command::new(redis_server())
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
                .arg(&data)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (the README's test command installs it)")
        };
        // Redis otherwise waits 5 s for more replicas before a first sync, and a replica that
        // never synced is not promoted.
        let master = Process(Some(server(master_port, &["--repl-diskless-sync-delay".into(), "0".into()])));
        wait_for_port(master_port).await;
        let replica = Process(Some(server(replica_port, &["--replicaof".into(), "127.0.0.1".into(), master_port.to_string()])));
        wait_for_port(replica_port).await;
        eventually(Duration::from_secs(20), "the replica to sync", async || {
            info(master_port, "replication").await.contains("state=online")
        })
        .await;

        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            // Sentinel rewrites its config file: each needs its own, writable.
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            let child = Command::new(redis_sentinel())
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel must be installed (the README's test command installs it)");
            sentinels.push(Process(Some(child)));
            wait_for_port(port).await;
            sentinel_ports.push(port);
        }
        let set = SentinelSet { master, _replica: replica, _sentinels: sentinels, master_port, replica_port, sentinel_ports, _dir: dir };
        // Every Sentinel must know the replica (and the others) before a failover can happen.
        for &port in &set.sentinel_ports {
            eventually(Duration::from_secs(20), "each Sentinel to see the replica and its peers", async || {
                let s = info(port, "sentinel").await;
                s.contains("slaves=1") && s.contains("sentinels=3")
            })
            .await;
        }
        set
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinel_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis-sentinel://{}/mymaster", hosts.join(","))
    }
}

async fn wait_for_port(port: u16) {
    eventually(Duration::from_secs(10), "a Redis process to accept connections", async || {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
}

/// `INFO <section>` of the server on `port`, or "" when it does not answer.
async fn info(port: u16, section: &str) -> String {
    let ask = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("INFO {section}\r\n").as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        // A bulk string: `$<len>\r\n<text>\r\n`; read until the whole of it is there.
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((len, rest)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n"))
                && rest.len() >= len.parse::<usize>().ok()?
            {
                return Some(text);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_nothing_for_connected_users() {
    sentinel_failover(false).await;
}

/// The same for a retained topic; afterwards the user's history, read from the promoted
/// replica by a socket replaying from the start, holds every notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_every_retained_notification_in_the_history() {
    sentinel_failover(true).await;
}

async fn sentinel_failover(retain: bool) {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let mut set = SentinelSet::start().await;
    let yaml = config_yaml(&kafka, None, json!({"redis": {"url": set.url(), "command_timeout_ms": 500}, "replay": {"history": 1000}}));
    let topics = if retain { "topics: [{name: user-notifications, retain: true}]" } else { "topics: [user-notifications]" };
    // Only `one` consumes the topic; the socket is on `two`: every record crosses Redis.
    let one = Herald::start(&with_kafka(&yaml, topics)).await;
    let two = Herald::start(&with_kafka(&yaml, "topics: [elsewhere]")).await;
    one.wait_assigned(4).await;
    two.wait_assigned(4).await;
    let mut c = Clients::start().await;
    c.connect_as("frank", &two.url(), "frank").await;

    const N: i64 = 150;
    for n in 0..N {
        kafka.produce_to(TOPIC, Some(1), Some("frank"), json!({"userId": "frank", "n": n}).to_string().as_bytes()).await;
        if n == N / 5 {
            set.master.kill();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // The replica is the master now, and both instances got there.
    eventually(Duration::from_secs(30), "the replica to be promoted", async || {
        info(set.replica_port, "replication").await.contains("role:master")
    })
    .await;
    let what = if retain { "sentinel failover, retained" } else { "sentinel failover" };
    let (_, _, lost) = report(&mut c, "frank", N, what).await;
    assert_eq!(lost, 0);
    if retain {
        c.connect("replayer", &two.url(), json!({"auth": {"token": token("frank"), "since": "0-0"}})).await.unwrap();
        let (_, _, lost) = report(&mut c, "replayer", N, "the history after the failover").await;
        assert_eq!(lost, 0, "notifications missing from the history");
    }
    assert_first_seen_in_order(&mut c, "frank").await;
    assert!(one.metric("herald_bus_publish_retries_total").await >= 1.0, "the failover was retried through, not skipped");
    assert!(two.metric("herald_bus_redis_reconnects_total").await >= 1.0, "the subscriber followed the failover");
    assert!(info(set.master_port, "server").await.is_empty(), "the old master is gone");
    c.stop().await;
    one.shutdown().await;
    two.shutdown().await;
}
