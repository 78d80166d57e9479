//! Shared test harness: real redis-server processes, the embedded Kafka-protocol broker over
//! TCP, herald instances on port 0, and the real npm socket.io-client driven through Node.
//! `scenario` puts them together in one call (and holds the sentinel that proves absence);
//! `process` is the one way to start the built binary; `kubelet` writes files the way they
//! reach a pod.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald::config::Config;
use herald::source::embedded::EmbeddedBroker;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

mod cluster;
pub mod kubelet;
pub mod otlp;
mod process;
pub mod proxy;
mod scenario;
pub mod tls;
#[allow(unused_imports)] // only the cluster test uses it
pub use cluster::RedisCluster;
#[allow(unused_imports)]
pub use process::{HERALD, HeraldProcess, Launch, herald};
#[allow(unused_imports)]
pub use scenario::{Scenario, Sentinel, Stack, settle, settle_with};

pub const SECRET: &str = "test-secret";
pub const TOPIC: &str = "user-notifications";
/// Partitions of every topic the test broker creates.
pub const PARTITIONS: i32 = 4;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn token(user: &str) -> String {
    token_with(json!({"sub": user, "exp": jsonwebtoken::get_current_timestamp() + 3600}))
}

pub fn token_with(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A private redis-server on a free loopback port, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis { port: free_port(), child: None, dir };
        r.spawn().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new(redis_server())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the README's test command installs it)");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        eventually(Duration::from_secs(10), "redis-server to accept connections", async || {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server and starts a fresh one on the same port (all subscriptions are gone).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn redis_server() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("redis-server"))
}

// ---------------------------------------------------------------------------------------------
// Kafka

/// The embedded broker (librdkafka's mock cluster) on a free loopback port, reached over TCP.
pub struct Kafka {
    pub broker: EmbeddedBroker,
    pub producer: FutureProducer,
}

impl Kafka {
    pub async fn start(topics: &[&str]) -> Self {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), &topics, PARTITIONS).await.unwrap();
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", broker.address().to_string())
            .set("linger.ms", "0")
            // Outage tests hold records in the producer while the broker is down: give them
            // time, and retry connecting every half second at most (librdkafka's default backoff
            // grows to 10 s, as long as the old message timeout, which made produce fail).
            .set("message.timeout.ms", "30000")
            .set("reconnect.backoff.max.ms", "500")
            .create()
            .unwrap();
        Kafka { broker, producer }
    }

    pub fn address(&self) -> String {
        self.broker.address().to_string()
    }

    pub async fn produce(&self, topic: &str, key: Option<&str>, value: &[u8]) {
        self.produce_to(topic, None, key, value).await
    }

    pub async fn produce_to(&self, topic: &str, partition: Option<i32>, key: Option<&str>, value: &[u8]) {
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        self.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produce");
    }

    /// A record with headers (a producer's `traceparent`, say) into `partition`.
    pub async fn produce_with_headers(&self, topic: &str, partition: i32, key: &str, value: &[u8], headers: &[(&str, &str)]) {
        use rdkafka::message::{Header, OwnedHeaders};
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(*v) }));
        let record = FutureRecord::<str, [u8]>::to(topic).payload(value).key(key).partition(partition).headers(headers);
        self.producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produce");
    }

    pub async fn notify(&self, user: &str, body: Value) {
        self.notify_in(None, user, body).await
    }

    /// [`Kafka::notify`] into `partition` (`None`: the one the user's key picks).
    pub async fn notify_in(&self, partition: Option<i32>, user: &str, body: Value) {
        let value = json!({"userId": user, "type": "test", "body": body});
        self.produce_to(TOPIC, partition, Some(user), value.to_string().as_bytes()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// herald

/// A config overlay: YAML written out as a literal (`"server: {ping_interval_secs: 1}"`) or data
/// (`json!({...})`), never text put together with `format!`: a value goes in as data.
pub trait Overlay {
    fn into_value(self) -> Value;
}

impl Overlay for &'static str {
    fn into_value(self) -> Value {
        if self.trim().is_empty() { json!({}) } else { serde_saphyr::from_str(self).unwrap_or_else(|e| panic!("overlay: {e}")) }
    }
}

impl Overlay for Value {
    fn into_value(self) -> Value {
        self
    }
}

/// A config for tests, as data: fast consumer-group settings, records from the start of the
/// topic, Redis if given, the test secret; `overlay` (`""` for none) merged in, e.g.
/// `"server: {event: alert}"`. The result is JSON, which is YAML.
pub fn config_yaml(kafka: &Kafka, redis: Option<&Redis>, overlay: impl Overlay) -> String {
    let mut config = base_config(kafka, redis);
    merge_into(&mut config, overlay.into_value());
    config.to_string()
}

/// The base config for `kafka` (and `redis`, else the in-process bus), as data.
pub fn base_config(kafka: &Kafka, redis: Option<&Redis>) -> Value {
    let mut base = json!({
        "kafka": {
            "brokers": kafka.address(),
            "group_id": "herald-test",
            "options": {
                "auto.offset.reset": "earliest",
                "session.timeout.ms": "3000",
                "heartbeat.interval.ms": "500",
                "reconnect.backoff.max.ms": "500",
            },
        },
        "auth": {"jwt": {"secret": SECRET}},
        "server": {"shutdown_grace_secs": 5},
    });
    if let Some(redis) = redis {
        base["redis"] = json!({"url": redis.url()});
    }
    base
}

/// `yaml` with `keys` merged into its `kafka` section, e.g.
/// `with_kafka(&yaml, "dead_letter_topic: dead-letters")`.
pub fn with_kafka(yaml: &str, keys: impl Overlay) -> String {
    merge(yaml, json!({"kafka": keys.into_value()}))
}

/// `yaml` with its top-level `section` replaced as a whole by `body`, e.g. an `auth` section
/// without the default JWT secret.
pub fn replace_section(yaml: &str, section: &str, body: impl Overlay) -> String {
    let mut config: Value = serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("base config: {e}"));
    config[section] = body.into_value();
    config.to_string()
}

/// `overlay` merged into `yaml`, key by key at every depth (the overlay wins): a config built
/// as data, e.g. `merge(&config_yaml(..), "auth: {jwt: {groups_claim: groups}}")`. The result is
/// JSON, which is YAML.
pub fn merge(yaml: &str, overlay: impl Overlay) -> String {
    let mut base: Value = serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("base config: {e}"));
    merge_into(&mut base, overlay.into_value());
    base.to_string()
}

/// `over` merged into `base`, key by key at every depth (`over` wins).
pub fn merge_into(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                merge_into(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, over) => *base = over,
    }
}

pub struct Herald {
    pub running: Option<herald::app::Running>,
    pub addr: SocketAddr,
}

impl Herald {
    pub async fn start(yaml: &str) -> Self {
        Self::start_in(yaml, Path::new(env!("CARGO_MANIFEST_DIR"))).await
    }

    pub async fn start_in(yaml: &str, base_dir: &Path) -> Self {
        let h = Self::start_unready(yaml, base_dir).await;
        h.wait_ready().await;
        h
    }

    /// Starting with `yaml` must fail (a valid config that cannot run, such as an untrusted
    /// Redis certificate): the error's text.
    pub async fn start_failure(yaml: &str) -> String {
        match Self::run(yaml, &std::env::current_dir().unwrap()).await {
            Ok(running) => {
                running.shutdown().await.ok();
                panic!("herald started")
            }
            Err(e) => format!("{e:#}"),
        }
    }

    /// Started, without waiting for readiness (which a test may expect never to come).
    pub async fn start_unready(yaml: &str, base_dir: &Path) -> Self {
        let running = Self::run(yaml, base_dir).await.unwrap();
        let addr = running.local_addr();
        Herald { running: Some(running), addr }
    }

    /// herald on port 0 with `yaml` (which must be a valid config), as `app::start` leaves it.
    async fn run(yaml: &str, base_dir: &Path) -> anyhow::Result<herald::app::Running> {
        let config = Config::from_yaml(yaml, base_dir.to_path_buf(), &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        herald::app::start(config, Some(listener)).await
    }

    /// `/readyz`: its status and body.
    pub async fn readyz(&self) -> (u16, Value) {
        let r = reqwest::get(format!("{}/readyz", self.url())).await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.url());
        eventually(
            Duration::from_secs(20),
            "herald to be ready",
            async || matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()),
        )
        .await;
    }

    /// Waits until the consumer owns exactly `n` partitions (the group has settled).
    pub async fn wait_assigned(&self, n: usize) {
        eventually(Duration::from_secs(20), &format!("{n} partitions assigned"), async || {
            self.metric("herald_source_assigned_partitions").await == n as f64
        })
        .await;
    }

    /// The value of one metric series (`name` or `name{labels}`), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        scrape(&self.url(), series).await
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }
}

/// Waits until the herald at `base_url` answers `/readyz` with 200.
pub async fn wait_ready(base_url: &str) {
    let url = format!("{base_url}/readyz");
    eventually(
        Duration::from_secs(20),
        "herald to be ready",
        async || matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()),
    )
    .await;
}

/// The value of one series (`name{label="v"}`), or, for a bare name, the sum of all its series.
pub async fn scrape(base_url: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{base_url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| *key == series || (!series.contains('{') && key.strip_prefix(series).is_some_and(|r| r.starts_with('{'))))
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// socket.io-client

/// Real npm socket.io-client sockets, driven through `tests/client/driver.mjs`.
pub struct Clients {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Value>,
    log: Vec<Value>,
}

pub fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client")
}

impl Clients {
    pub async fn start() -> Self {
        let dir = client_dir();
        assert!(dir.join("node_modules/socket.io-client").exists(), "run `npm ci` in tests/client (the README's test command does)");
        let mut node = Command::new("node");
        node.arg(dir.join("driver.mjs"));
        Self::spawn(node).await
    }

    /// python-socketio's client, driven through `tests/client/python_client.py` with the same
    /// commands.
    pub async fn start_python() -> Self {
        let dir = client_dir();
        let python = dir.join(".venv/bin/python");
        assert!(python.exists(), "create tests/client/.venv from requirements.txt (the README's test command does)");
        let mut command = Command::new(python);
        command.arg(dir.join("python_client.py"));
        Self::spawn(command).await
    }

    async fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the client driver's interpreter must be installed");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut c = Clients { child, stdin, events, log: Vec::new() };
        c.wait_for(Duration::from_secs(10), |e| e["type"] == "ready").await.expect("the Node driver did not start");
        c
    }

    async fn send(&mut self, cmd: Value) {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Waits for the first unconsumed event matching `pred`, consuming it.
    async fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(i) = self.log.iter().position(&pred) {
            return Some(self.log.remove(i));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) if pred(&e) => return Some(e),
                Ok(Some(e)) => self.log.push(e),
                _ => return None,
            }
        }
    }

    /// Opens a socket; returns Ok(transport) on `connect`, Err(message) on `connect_error`.
    pub async fn connect(&mut self, id: &str, url: &str, options: Value) -> Result<String, String> {
        let mut cmd = json!({"op": "connect", "id": id, "url": url});
        if let Value::Object(extra) = options {
            cmd.as_object_mut().unwrap().extend(extra);
        }
        self.send(cmd).await;
        let id_owned = id.to_owned();
        let e = self
            .wait_for(Duration::from_secs(15), move |e| {
                e["id"] == id_owned.as_str() && (e["type"] == "connect" || e["type"] == "connect_error")
            })
            .await
            .unwrap_or_else(|| panic!("socket {id}: neither connect nor connect_error"));
        if e["type"] == "connect" {
            Ok(e["transport"].as_str().unwrap_or_default().to_owned())
        } else {
            Err(e["message"].as_str().unwrap_or_default().to_owned())
        }
    }

    /// Connects with a token in the handshake `auth` payload; panics if refused.
    pub async fn connect_as(&mut self, id: &str, url: &str, user: &str) {
        self.connect(id, url, json!({"auth": {"token": token(user)}})).await.unwrap_or_else(|e| panic!("socket {id} refused: {e}"));
    }

    /// The next `event` received by socket `id` (its first argument), within `timeout`.
    pub async fn next(&mut self, id: &str, event: &str, timeout: Duration) -> Option<Value> {
        let (id, event) = (id.to_owned(), event.to_owned());
        self.wait_for(timeout, move |e| e["id"] == id.as_str() && e["type"] == "event" && e["event"] == event.as_str())
            .await
            .map(|e| e["args"][0].clone())
    }

    pub async fn expect(&mut self, id: &str, event: &str) -> Value {
        self.next(id, event, Duration::from_secs(15)).await.unwrap_or_else(|| panic!("socket {id} did not receive `{event}`"))
    }

    /// Every `event` socket `id` received so far (drains what has arrived).
    pub async fn received(&mut self, id: &str, event: &str) -> Vec<Value> {
        while let Ok(e) = self.events.try_recv() {
            self.log.push(e);
        }
        self.log.iter().filter(|e| e["id"] == id && e["type"] == "event" && e["event"] == event).map(|e| e["args"][0].clone()).collect()
    }

    pub async fn disconnected(&mut self, id: &str, timeout: Duration) -> Option<String> {
        let id = id.to_owned();
        self.wait_for(timeout, move |e| e["id"] == id.as_str() && e["type"] == "disconnect")
            .await
            .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
    }

    /// The transport socket `id` upgraded to, if it did within a few seconds.
    pub async fn upgraded(&mut self, id: &str) -> Option<String> {
        let id = id.to_owned();
        self.wait_for(Duration::from_secs(5), move |e| e["id"] == id.as_str() && e["type"] == "transport")
            .await
            .map(|e| e["transport"].as_str().unwrap_or_default().to_owned())
    }

    /// Makes socket `id` stop reading from its TCP connection.
    pub async fn pause(&mut self, id: &str) {
        self.send(json!({"op": "pause", "id": id})).await;
    }

    /// Drops socket `id`'s TCP connection without a goodbye.
    pub async fn cut(&mut self, id: &str) {
        self.send(json!({"op": "cut", "id": id})).await;
    }

    /// Every event `event` received so far with all its arguments (drains what has arrived).
    pub async fn received_args(&mut self, id: &str, event: &str) -> Vec<Value> {
        while let Ok(e) = self.events.try_recv() {
            self.log.push(e);
        }
        self.log.iter().filter(|e| e["id"] == id && e["type"] == "event" && e["event"] == event).map(|e| e["args"].clone()).collect()
    }

    pub async fn close(&mut self, id: &str) {
        self.send(json!({"op": "close", "id": id})).await;
    }

    /// Emits with an acknowledgement callback; read the reply with [`Clients::expect_ack`].
    pub async fn emit_with_ack(&mut self, id: &str, event: &str, data: Value) {
        self.send(json!({"op": "emit", "id": id, "event": event, "data": data, "ack": true})).await;
    }

    pub async fn expect_ack(&mut self, id: &str, event: &str) -> Value {
        let (i, e) = (id.to_owned(), event.to_owned());
        self.wait_for(Duration::from_secs(10), move |v| v["id"] == i.as_str() && v["type"] == "ack" && v["event"] == e.as_str())
            .await
            .unwrap_or_else(|| panic!("socket {id}: no ack for `{event}`"))["args"][0]
            .clone()
    }

    pub async fn emit(&mut self, id: &str, event: &str, data: Value) {
        self.send(json!({"op": "emit", "id": id, "event": event, "data": data})).await;
    }

    pub async fn stop(mut self) {
        let _ = self.send(json!({"op": "exit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
    }
}

/// Waits for every record `0..produced` (payload field `n`) on socket `id`, then prints and
/// returns (delivered, duplicated, lost).
pub async fn report(c: &mut Clients, id: &str, produced: i64, what: &str) -> (usize, usize, usize) {
    eventually(Duration::from_secs(60), "every record to arrive", async || {
        let got = c.received(id, "notification").await;
        (0..produced).all(|n| got.iter().any(|p| p["n"] == n))
    })
    .await;
    let got: Vec<i64> = c.received(id, "notification").await.iter().map(|p| p["n"].as_i64().unwrap()).collect();
    let distinct: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    let (delivered, duplicated, lost) = (got.len(), got.len() - distinct.len(), produced as usize - distinct.len());
    eprintln!("{what}: produced {produced}, delivered {delivered}, duplicated {duplicated}, lost {lost}");
    (delivered, duplicated, lost)
}

/// At-least-once: a duplicate may show up, but the first sighting of each `n` on socket `id`
/// comes in order.
pub async fn assert_first_seen_in_order(c: &mut Clients, id: &str) {
    let mut first_seen = Vec::new();
    for p in c.received(id, "notification").await {
        let n = p["n"].as_i64().unwrap();
        if !first_seen.contains(&n) {
            first_seen.push(n);
        }
    }
    assert!(first_seen.windows(2).all(|w| w[0] < w[1]), "in order: {first_seen:?}");
}

/// A reader of `topic` from its start: every partition assigned by hand, so it joins no group
/// and closes at once (a group member's close waits on the coordinator).
pub fn topic_reader(kafka: &Kafka, group: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let reader: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.address())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    reader.assign(&partitions).unwrap();
    reader
}
