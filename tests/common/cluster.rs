//! A local Redis Cluster of three masters (optionally with a replica each) on free loopback
//! ports, for the sharded Pub/Sub and failover tests and the retention benchmark (which
//! includes this file by path).
//! Blocking on purpose: it is set up once, before anything runs against it.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
    /// redis-cli's TLS arguments, for a TLS cluster.
    tls_cli: Vec<String>,
}

impl RedisCluster {
    /// Starts three `redis-server --cluster-enabled yes` (each with its cluster bus on another
    /// free port), joins them with `redis-cli --cluster create`, and waits for `cluster_state:ok`.
    pub fn start() -> Self {
        Self::start_with(0, 5000)
    }

    /// Three masters with `replicas` replicas each; a master unreachable for `node_timeout_ms`
    /// is failed over to its replica.
    pub fn start_with(replicas: usize, node_timeout_ms: u32) -> Self {
        Self::start_secured(replicas, node_timeout_ms, None)
    }

    /// Three masters speaking only TLS, between themselves too: `tls` holds the servers'
    /// `--tls-*` arguments and redis-cli's (`--tls --cacert ...`).
    pub fn start_tls(server: Vec<String>, cli: Vec<String>) -> Self {
        Self::start_secured(0, 5000, Some((server, cli)))
    }

    fn start_secured(replicas: usize, node_timeout_ms: u32, tls: Option<(Vec<String>, Vec<String>)>) -> Self {
        let (tls_server, tls_cli) = tls.clone().unwrap_or_default();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3 * (1 + replicas)).map(|_| free_port()).collect();
        let server = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let children = ports
            .iter()
            .map(|port| {
                let listen: Vec<String> = match &tls {
                    None => vec!["--port".into(), port.to_string()],
                    Some(_) => ["--port", "0", "--tls-port", &port.to_string(), "--tls-cluster", "yes", "--tls-replication", "yes"]
                        .iter()
                        .map(|s| s.to_string())
                        .chain(tls_server.iter().cloned())
                        .collect(),
                };
                Command::new(&server)
                    .args(&listen)
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &free_port().to_string(),
                        "--cluster-node-timeout",
                        &node_timeout_ms.to_string(),
                    ])
                    .arg("--cluster-config-file")
                    .arg(dir.path().join(format!("nodes-{port}.conf")))
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map(Some)
                    .expect("redis-server must be installed (the README's test command installs it)")
            })
            .collect();
        let cluster = RedisCluster { ports, children, _dir: dir, tls_cli };
        wait_until("the cluster nodes to accept connections", || {
            cluster.ports.iter().all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(&cluster.tls_cli)
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(created.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&created.stdout));
        wait_until("the cluster to be ok on every node", || {
            cluster.ports.iter().all(|p| cluster.cli(*p, &["cluster", "info"]).contains("cluster_state:ok"))
        });
        wait_until("every replica to be in sync with its master", || {
            cluster.ports.iter().all(|p| {
                let info = cluster.cli(*p, &["info", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        cluster
    }

    /// The port of the master that owns `key`'s slot, as node `ask` sees it (none while a
    /// failover is under way).
    pub fn master_of(&self, ask: u16, key: &str) -> Option<u16> {
        let slot: u16 = self.cli(ask, &["cluster", "keyslot", key]).trim().parse().unwrap();
        for line in self.cli(ask, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if owns {
                let port = fields[1].split('@').next().unwrap().rsplit(':').next().unwrap();
                return port.parse().ok();
            }
        }
        None
    }

    /// Kills the node on `port` (SIGKILL, as a crash).
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).expect("a node of this cluster");
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Moves `slot` from the master on `from` to the one on `to` as a resharding does: importing
    /// and migrating, its keys migrated, then the new owner announced to every node.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let (slot, from_id, to_id) = (
            slot.to_string(),
            self.cli(from, &["cluster", "myid"]).trim().to_owned(),
            self.cli(to, &["cluster", "myid"]).trim().to_owned(),
        );
        self.cli(to, &["cluster", "setslot", &slot, "importing", &from_id]);
        self.cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]);
        loop {
            let keys = self.cli(from, &["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            self.cli(from, &args);
        }
        for port in &self.ports {
            self.cli(*port, &["cluster", "setslot", &slot, "node", &to_id]);
        }
    }

    /// The URL herald takes: every node, so it can start from any.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.ports[1..].iter().map(|p| format!("node=127.0.0.1:{p}")).collect();
        let scheme = if self.tls_cli.is_empty() { "redis-cluster" } else { "rediss-cluster" };
        format!("{scheme}://127.0.0.1:{}?{}", self.ports[0], others.join("&"))
    }

    /// Runs one redis-cli command against one node; its stdout.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(&self.tls_cli).args(["-p", &port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
