//! The cost of retention, and one Redis against a cluster: bus publish throughput with
//! `retain` off and on, on the in-process bus, a real redis-server and a local three-master
//! Redis Cluster with sharded Pub/Sub (all started here on free loopback ports).
//! Prints medians of 5 runs and the ratio.
//!
//! Run: `cargo bench --bench retention` (needs `redis-server` and `redis-cli` on PATH).

// The failover helpers are for the tests.
#[path = "../tests/common/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::bus::Bus;
use herald::bus::inbound::Nobody;
use herald::config::Config;
use herald::metrics::Metrics;
use herald::notification::Notification;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

const NOTIFICATIONS: usize = 40_000;
const BATCH: usize = 512;
const RUNS: usize = 5;

fn main() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    std::thread::sleep(Duration::from_millis(300));
    let cluster = cluster::RedisCluster::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        println!("publishing {NOTIFICATIONS} notifications in batches of {BATCH}, {RUNS} runs, medians");
        for (name, redis_yaml) in [
            ("in-process bus", String::new()),
            ("Redis bus", format!("redis: {{url: \"redis://127.0.0.1:{port}\"}}\n")),
            ("Redis Cluster (3 masters, sharded)", format!("redis: {{url: \"{}\"}}\n", cluster.url())),
        ] {
            let yaml = format!("auth: {{jwt: {{secret: s}}}}\nreplay: {{history: 100}}\n{redis_yaml}");
            let config = Config::from_yaml(&yaml, Path::new(".").into(), &|_| None).unwrap();
            let metrics = Arc::new(Metrics::new(&[]));
            let deliverer = Arc::new(Nobody);
            let bus =
                Bus::start(&config, None, deliverer, metrics, &herald::supervise::Supervisor::new(CancellationToken::new())).await.unwrap();
            let mut rates = [0.0; 2];
            for (i, retain) in [false, true].into_iter().enumerate() {
                let mut runs: Vec<f64> = (0..RUNS).map(|_| 0.0).collect();
                for run in runs.iter_mut() {
                    let started = Instant::now();
                    for chunk in 0..NOTIFICATIONS / BATCH {
                        let batch: Vec<Notification> = (0..BATCH).map(|j| notification(chunk * BATCH + j, retain)).collect();
                        bus.publish(&batch).await.expect("publish");
                    }
                    *run = (NOTIFICATIONS / BATCH * BATCH) as f64 / started.elapsed().as_secs_f64();
                }
                runs.sort_by(f64::total_cmp);
                rates[i] = runs[RUNS / 2];
            }
            println!("{name:<36} retain off {:>9.0}/s   retain on {:>9.0}/s   ratio {:.2}", rates[0], rates[1], rates[1] / rates[0]);
            bus.close().await;
        }
    });
    let _ = redis.kill();
    let _ = redis.wait();
}

/// The `n`th notification, for one of 1000 users; retained ones carry an origin as the Kafka
/// source gives them, which their history entry keeps.
fn notification(n: usize, retain: bool) -> Notification {
    let user = n % 1000;
    let payload =
        format!(r#"{{"userId":"user-{user}","type":"order.shipped","body":{{"orderId":{user},"carrier":"DHL","eta":"2026-11-27"}}}}"#);
    Notification {
        to: herald::notification::Audience::User(format!("user-{user}")),
        event: "notification".into(),
        payload: RawValue::from_string(payload).unwrap(),
        timestamp_ms: 0,
        consumed_us: 0,
        retain,
        origin: retain.then(|| format!("user-notifications/{}/{n}/0", n % 4).into()),
        trace: None,
    }
}
