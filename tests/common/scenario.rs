//! One scenario, set up in one call: the broker, Redis if asked, herald instances (each with
//! its config overlay merged into the base config as data), and the real socket.io-client.
//! Also the sentinel that proves nothing else is on its way to a socket.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use super::{Clients, Herald, Kafka, Overlay, Redis, TOPIC, base_config, merge_into};

/// What to start; [`Stack::start`] starts it.
pub struct Stack {
    topics: Vec<&'static str>,
    redis: bool,
    sections: Vec<(&'static str, Value)>,
    instances: Vec<Value>,
    dir: PathBuf,
    python: bool,
}

impl Default for Stack {
    fn default() -> Self {
        Self {
            topics: vec![TOPIC],
            redis: false,
            sections: Vec::new(),
            instances: Vec::new(),
            dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            python: false,
        }
    }
}

impl Stack {
    /// The broker's topics (default: `user-notifications`).
    pub fn topics(mut self, topics: &[&'static str]) -> Self {
        self.topics = topics.to_vec();
        self
    }

    /// A real redis-server as the bus (without it, one instance uses the in-process bus).
    pub fn redis(mut self) -> Self {
        self.redis = true;
        self
    }

    /// Every instance's top-level `name` section is `body` as a whole, in place of the base
    /// config's (its overlay is merged in after), e.g. an `auth` section without the default JWT
    /// secret.
    pub fn section(mut self, name: &'static str, body: impl Overlay) -> Self {
        self.sections.push((name, body.into_value()));
        self
    }

    /// One more herald instance, with `overlay` (a YAML literal, `""` for none, or `json!` data)
    /// merged into the base config, e.g. `"server: {ping_interval_secs: 1}"`.
    pub fn instance(mut self, overlay: impl Overlay) -> Self {
        self.instances.push(overlay.into_value());
        self
    }

    /// The folder the instances resolve relative paths from (route scripts, key files), as the
    /// config file's folder is for the binary; without it, the crate's.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = dir.to_owned();
        self
    }

    /// Drive the sockets with python-socketio's client instead of npm socket.io-client.
    pub fn python(mut self) -> Self {
        self.python = true;
        self
    }

    pub async fn start(self) -> Scenario {
        super::init_logs();
        let kafka = Kafka::start(&self.topics).await;
        let redis = if self.redis { Some(Redis::start().await) } else { None };
        let mut heralds = Vec::new();
        for overlay in self.instances {
            heralds.push(Herald::start_in(&instance_config(&kafka, redis.as_ref(), &self.sections, overlay), &self.dir).await);
        }
        let c = if self.python { Clients::start_python().await } else { Clients::start().await };
        Scenario { kafka, redis, heralds, c, sections: self.sections, dir: self.dir }
    }
}

/// An instance's config: the base one, `sections` in place of its own, `overlay` merged in.
fn instance_config(kafka: &Kafka, redis: Option<&Redis>, sections: &[(&'static str, Value)], overlay: Value) -> String {
    let mut config = base_config(kafka, redis);
    for (name, body) in sections {
        config[*name] = body.clone();
    }
    merge_into(&mut config, overlay);
    config.to_string()
}

/// A running scenario. `c` drives the sockets; `heralds[i]` is the i-th instance.
pub struct Scenario {
    pub kafka: Kafka,
    pub redis: Option<Redis>,
    pub heralds: Vec<Herald>,
    pub c: Clients,
    sections: Vec<(&'static str, Value)>,
    dir: PathBuf,
}

impl Scenario {
    pub fn url(&self, instance: usize) -> String {
        self.heralds[instance].url()
    }

    /// Starts one more instance (the stack's sections, `overlay` merged in), e.g. one that comes
    /// up after something happened; it is `heralds.last()`.
    pub async fn add_instance(&mut self, overlay: impl Overlay) -> &Herald {
        let config = instance_config(&self.kafka, self.redis.as_ref(), &self.sections, overlay.into_value());
        self.heralds.push(Herald::start_in(&config, &self.dir).await);
        self.heralds.last().expect("just added")
    }

    /// Connects socket `id` as `user` to instance `instance`.
    pub async fn connect(&mut self, id: &str, instance: usize, user: &str) {
        let url = self.url(instance);
        self.c.connect_as(id, &url, user).await;
    }

    /// A notification for `user` (the usual test record), always in partition 0: records for
    /// different users keep their order, so a later one is a sentinel for the earlier ones.
    pub async fn notify(&self, user: &str, body: Value) {
        self.kafka.notify_in(Some(0), user, body).await
    }

    /// See [`settle`].
    pub async fn settle(&mut self, user: &str, sockets: &[&str]) -> Vec<Vec<Value>> {
        settle(&self.kafka, &mut self.c, user, sockets).await
    }

    /// Asserts, with a sentinel, that `sockets` (all of `user`) received nothing more than
    /// what the test already took.
    pub async fn nothing_else(&mut self, user: &str, sockets: &[&str], why: &str) {
        let left = self.settle(user, sockets).await;
        for (id, left) in sockets.iter().zip(left) {
            assert!(left.is_empty(), "{why}: socket {id} also received {left:?}");
        }
    }

    /// Stops the clients, the instances, then the broker.
    pub async fn stop(self) {
        drop(self.stop_instances().await);
    }

    /// Stops the clients and the instances and hands back the broker, for a test whose own
    /// Kafka consumers must close while it is still up (librdkafka waits long for a gone one).
    pub async fn stop_instances(self) -> Kafka {
        self.c.stop().await;
        for h in self.heralds {
            h.shutdown().await;
        }
        self.kafka
    }
}

/// Proves that nothing else is on its way to `sockets` (all of `user`): a sentinel record for
/// `user`, produced into partition 0 after every record before it there, reaches each of them;
/// what arrived before it arrived first, on the same socket. Returns, per socket, the
/// notifications not yet taken with [`Clients::expect`] (the sentinel itself is taken).
pub async fn settle(kafka: &Kafka, c: &mut Clients, user: &str, sockets: &[&str]) -> Vec<Vec<Value>> {
    let record = |marker: &str| json!({"userId": user, "sentinel": marker});
    settle_with(kafka, c, Sentinel { topic: TOPIC, partition: Some(0), key: Some(user) }, record, sockets).await
}

/// Where a sentinel record goes: the partition (or the key that picks it) of the records it
/// comes after.
pub struct Sentinel<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a str>,
}

/// [`settle`] for any route: `record` builds the sentinel's value around a unique marker,
/// which the notification must carry (anywhere in its payload).
pub async fn settle_with(
    kafka: &Kafka,
    c: &mut Clients,
    at: Sentinel<'_>,
    record: impl Fn(&str) -> Value,
    sockets: &[&str],
) -> Vec<Vec<Value>> {
    static SENTINELS: AtomicU64 = AtomicU64::new(0);
    let marker = format!("sentinel-{}", SENTINELS.fetch_add(1, Ordering::Relaxed));
    kafka.produce_to(at.topic, at.partition, at.key, record(&marker).to_string().as_bytes()).await;
    let quoted = format!("\"{marker}\"");
    let mut left = Vec::new();
    for id in sockets {
        let owned = id.to_string();
        let quoted = quoted.clone();
        c.wait_for(std::time::Duration::from_secs(15), move |e| {
            e["id"] == owned.as_str() && e["type"] == "event" && e["event"] == "notification" && e["args"][0].to_string().contains(&quoted)
        })
        .await
        .unwrap_or_else(|| panic!("socket {id} did not receive {marker}"));
        left.push(c.received(id, "notification").await);
    }
    left
}
