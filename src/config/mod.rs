//! herald's configuration: the typed settings, their defaults, and the validation that reports
//! every problem at once, each with its path. Reading the file lives here; using it does not.

mod env;
mod redis_url;
mod walk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use env::OVERRIDES as ENV_OVERRIDES;
pub use redis_url::{RedisAddress, RedisTarget};
pub use walk::{ConfigError, ConfigErrors};
use walk::{Section, Walk, kind};

/// The whole configuration. See the annotated `config.yaml` for every key and its default.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub kafka: KafkaConfig,
    /// `None` when `redis.url` is absent: a single instance with the in-process bus.
    pub redis: Option<RedisConfig>,
    pub auth: AuthConfig,
    pub routes: RoutesConfig,
    pub replay: ReplayConfig,
    pub api: ApiConfig,
    pub demo: DemoConfig,
    pub log: LogConfig,
    /// The directory of the config file; relative paths in the config resolve against it.
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address for Socket.IO and HTTP. Default `0.0.0.0:3000`.
    pub listen: SocketAddr,
    /// Socket.IO event name notifications are emitted under. Default `notification`.
    pub event: String,
    /// Engine.IO heartbeat interval. Default 25 s.
    pub ping_interval: Duration,
    /// How long a silent client is kept after a missed heartbeat. Default 20 s.
    pub ping_timeout: Duration,
    /// Packets buffered per socket before emits to it fail (counted). Default 1024: the buffer
    /// grows only as it fills, so a large bound costs idle sockets nothing, and a burst of
    /// notifications to one user must fit in it.
    pub max_buffer_size: usize,
    /// What happens to a socket whose buffer is full. Default `drop`.
    pub slow_client: SlowClient,
    /// Largest incoming Engine.IO payload a client may send, in bytes, over long-polling and
    /// as one WebSocket message or frame. Default 100000.
    pub max_payload_bytes: u64,
    /// Time a new connection has to send its HTTP request headers, and a new Engine.IO session
    /// to join the Socket.IO namespace, before it is closed; also the longest a request body
    /// may pause. Default 10000 ms.
    pub connect_timeout: Duration,
    /// A connection on which herald could write nothing for this long (the client stopped
    /// reading and the buffers are full) is closed. Default 30000 ms.
    pub write_timeout: Duration,
    /// Deadline for a graceful shutdown. Default 10 s.
    pub shutdown_grace: Duration,
    /// Event clients emit to acknowledge a notification (`{id, state}`). Default `receipt`.
    pub receipt_event: String,
    /// Receipts one socket may send per second (bursts of as many). Default 10.
    pub receipts_per_sec: u32,
}

/// The demo page at `/demo/`.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// `None`: no demo page. Default: on in the embedded mode only.
    pub enabled: Option<DemoMode>,
    /// The socket.io-client browser bundle the page loads, relative to the config file.
    pub client_bundle: PathBuf,
}

impl DemoConfig {
    /// Where `npm ci --prefix demo` puts the bundle.
    pub const DEFAULT_BUNDLE: &str = "demo/node_modules/socket.io-client/dist/socket.io.min.js";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoMode {
    /// Enabled by config: a missing bundle is a config error.
    Required,
    /// On by default (embedded mode): a missing bundle is a warning, and the page says how to
    /// install it.
    IfBundled,
}

/// What herald does with a socket whose send buffer (`max_buffer_size`) is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowClient {
    /// The notification is not sent to that socket (counted); the socket stays.
    Drop,
    /// The socket leaves its user's room at once and is disconnected (counted).
    Disconnect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Brokers {
    /// The in-process Kafka-protocol broker (librdkafka's mock cluster), for trying herald.
    Embedded,
    /// A `bootstrap.servers` list.
    List(String),
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: Brokers,
    /// Consumer group. Default `herald`.
    pub group_id: String,
    /// Topics to consume. Default `[user-notifications]`.
    pub topics: Vec<TopicConfig>,
    /// Extra librdkafka settings, passed through as given.
    pub options: BTreeMap<String, String>,
    /// Most records routed and published to the bus as one batch. Default 512.
    pub max_batch: usize,
    /// Where records that fail permanently are produced; `None` only counts and logs them.
    pub dead_letter_topic: Option<String>,
    /// Where notifications for users with no socket on any instance are produced (for a push,
    /// e-mail or SMS worker); `None` only counts them as dropped (`offline`).
    pub offline_topic: Option<String>,
    /// Where clients' receipts (delivered, read) are produced; `None`: receipts are refused.
    pub receipts_topic: Option<String>,
    pub embedded: EmbeddedKafkaConfig,
}

impl KafkaConfig {
    /// Where the offline notifications of consumed `topic` go: its own, else the global one.
    pub fn offline_topic_for(&self, topic: &str) -> Option<&str> {
        self.topics.iter().find(|t| t.name == topic).and_then(|t| t.offline_topic.as_deref()).or(self.offline_topic.as_deref())
    }

    /// Every topic herald produces to (dead letters, offline hand-offs, receipts).
    pub fn output_topics(&self) -> Vec<String> {
        let mut out: Vec<String> =
            [&self.dead_letter_topic, &self.offline_topic, &self.receipts_topic].into_iter().flatten().cloned().collect();
        out.extend(self.topics.iter().filter_map(|t| t.offline_topic.clone()));
        out.sort();
        out.dedup();
        out
    }
}

#[derive(Debug, Clone)]
pub struct EmbeddedKafkaConfig {
    /// Stable address the embedded broker is reachable on. Default `127.0.0.1:9092`.
    pub listen: SocketAddr,
    /// Partitions of each configured topic. Default 4.
    pub partitions: i32,
}

#[derive(Debug, Clone)]
pub struct TopicConfig {
    pub name: String,
    /// Route script, relative to the config file; `None` uses the default rule.
    pub script: Option<PathBuf>,
    /// Where the user id comes from for this topic; `None` uses `routes.user_id`.
    pub user_id: Option<UserIdSource>,
    /// Event name for this topic; `None` uses `server.event`.
    pub event: Option<String>,
    /// Keep this topic's notifications for replay (see `replay`). Default false.
    pub retain: bool,
    /// Where this topic's notifications for offline users go; `None` uses `kafka.offline_topic`.
    pub offline_topic: Option<String>,
    /// Default rule: address the group(s) named here (a string or an array of strings at a
    /// JSON pointer, or the key) instead of a user.
    pub group: Option<UserIdSource>,
    /// Default rule: address every socket on every instance. Default false.
    pub broadcast: bool,
}

impl TopicConfig {
    /// A topic consumed with every setting at its default.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            script: None,
            user_id: None,
            event: None,
            retain: false,
            offline_topic: None,
            group: None,
            broadcast: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub channel: ChannelPattern,
    /// Channel of one group's notifications; must contain {group}. Default `herald:group:{group}`.
    pub group_channel: ChannelPattern,
    /// The one channel of broadcasts, subscribed by every instance. Default `herald:broadcast`.
    pub broadcast_channel: String,
    /// Deadline for one Redis command, so an outage fails fast instead of hanging. Default 2000 ms.
    pub command_timeout: Duration,
    /// Pub/Sub messages buffered between fred and herald before some are lost. Default 65536.
    pub pubsub_buffer: usize,
    /// SSUBSCRIBE/SPUBLISH instead of SUBSCRIBE/PUBLISH, with the user id as the hash tag of
    /// its channel and stream, so a message only touches the shard that owns the user. Default:
    /// on for a `redis-cluster://` URL, off otherwise.
    pub sharded_pubsub: bool,
    /// Where herald's own subscriber connects: the URL read, unless it is a cluster's.
    pub address: Option<RedisAddress>,
}

impl RedisConfig {
    /// A `redis-cluster://` URL.
    pub fn is_cluster(&self) -> bool {
        is_cluster_url(&self.url)
    }
}

fn is_cluster_url(url: &str) -> bool {
    url.starts_with("redis-cluster://")
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt: JwtConfig,
    /// The optional user-check endpoint, asked whether a token's user may connect.
    pub check: Option<CheckConfig>,
    /// Event told to a socket whose token expired, just before it is disconnected. Default `auth_expired`.
    pub expired_event: String,
    /// Event a client emits with a fresh token to stay connected. Default `auth_refresh`.
    pub refresh_event: String,
    /// Sockets one user may hold on one instance; 0 is unlimited. Default 0.
    pub max_sockets_per_user: u32,
    /// What happens to the socket over `max_sockets_per_user`. Default `refuse_new`.
    pub per_user_limit: PerUserLimit,
    /// Sockets one instance accepts; 0 is unlimited. Default 0.
    pub max_sockets: u32,
    /// Origins allowed to connect (CORS for polling, the Origin header for WebSocket); empty
    /// allows any. Default empty.
    pub allowed_origins: Vec<String>,
    /// Groups one socket may belong to; a token naming more is refused. Default 100.
    pub max_groups_per_socket: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerUserLimit {
    /// The new connection gets `connect_error` `too many connections`.
    RefuseNew,
    /// The user's oldest socket is disconnected to make room.
    DisconnectOldest,
}

#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub url: String,
    /// `GET` (default) or `POST`.
    pub method: String,
    /// Header carrying the token. Default `Authorization`.
    pub header: String,
    /// Prefix of the header value; empty sends the bare token. Default `Bearer`.
    pub scheme: String,
    /// Default 2000 ms.
    pub timeout: Duration,
    /// How long an answer is reused for the same token. Default 60 s; 0 disables the cache.
    pub cache_ttl: Duration,
    /// JSON pointer to the user id in the response body; required without JWT verification.
    pub user_id_pointer: Option<String>,
    /// JSON pointer to the user's groups (an array of strings) in the response body.
    pub groups_pointer: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Shared secret for the HS algorithms.
    pub secret: Option<String>,
    /// PEM public key for the RS, PS, ES and EdDSA algorithms.
    pub public_key_file: Option<PathBuf>,
    /// JWKS endpoint for the RS, PS, ES and EdDSA algorithms.
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again. Default 300 s.
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by unknown `kid`s. Default 10 s.
    pub jwks_min_refetch: Duration,
    /// Deadline of one JWKS fetch. Default 2000 ms.
    pub jwks_timeout: Duration,
    /// Accepted algorithms. Default `[HS256]`.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Claim that holds the user id (string or number). Default `sub`.
    pub user_id_claim: String,
    /// Claim that holds the user's groups (an array of strings); `None`: tokens name no groups.
    pub groups_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`. Default 5 s.
    pub leeway_secs: u64,
    /// Accepted issuers; empty accepts any.
    pub issuers: Vec<String>,
    /// Accepted audiences; empty accepts any.
    pub audiences: Vec<String>,
}

/// The HTTP publish API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The API key; `None` disables the API. Default unset.
    pub key: Option<String>,
    /// Requests per second allowed (bursts up to the same number). Default 100.
    pub rate_limit_per_sec: u32,
    /// Users (or groups) one request may address. Default 1000.
    pub max_users_per_request: usize,
}

/// Missed-notification replay, for topics with `retain: true`.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Notifications kept per user. Default 100.
    pub history: usize,
    /// Age after which a retained notification is dropped. Default 24 h.
    pub max_age: Duration,
    /// Retained notifications sent to a client that connects without `since`. Default 0.
    pub last_without_since: usize,
    /// Event told to a client whose `since` is older than the history. Default `replay_gap`.
    pub gap_event: String,
    /// Redis stream key per user; must contain {user_id} once. Default `herald:history:{user_id}`.
    pub stream: ChannelPattern,
}

#[derive(Debug, Clone)]
pub struct RoutesConfig {
    /// Default rule: where the user id comes from. Default `/userId`.
    pub user_id: UserIdSource,
    /// Wall-clock budget of one script call. Default 50 ms.
    pub script_timeout: Duration,
    /// Operations one script call may perform. Default 1000000.
    pub script_max_operations: u64,
    /// Quiet time after a change to a script before it is reloaded. Default 200 ms.
    pub reload_debounce: Duration,
    /// Threads that route a large batch in parallel; 0 = one per core, 1 = route on the
    /// consumer's own task. Default 0.
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserIdSource {
    /// A JSON pointer into the record value, e.g. `/userId`.
    Pointer(String),
    /// The Kafka record key.
    Key,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `herald=debug,info`. Default `info`.
    pub level: String,
}

/// A Redis channel (or key) name pattern with exactly one placeholder: `{user_id}` for users'
/// channels and streams, `{group}` for groups' channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    prefix: String,
    suffix: String,
}

impl ChannelPattern {
    pub const PLACEHOLDER: &str = "{user_id}";
    pub const GROUP_PLACEHOLDER: &str = "{group}";

    pub fn parse(pattern: &str) -> Result<Self, String> {
        Self::parse_with(pattern, Self::PLACEHOLDER)
    }

    pub fn parse_with(pattern: &str, placeholder: &str) -> Result<Self, String> {
        match pattern.split_once(placeholder) {
            Some((prefix, suffix)) if !suffix.contains(placeholder) => {
                if prefix.contains(['*', '?', '[']) || suffix.contains(['*', '?', '[']) {
                    return Err("must not contain the glob characters * ? [".into());
                }
                Ok(Self { prefix: prefix.into(), suffix: suffix.into() })
            }
            Some(_) => Err(format!("must contain {placeholder} exactly once")),
            None => Err(format!("must contain {placeholder}")),
        }
    }

    /// The same pattern with the user id as the Redis Cluster hash tag (`herald:user:{u42}`),
    /// so a user's channel and stream live in the same slot.
    pub fn hash_tagged(&self) -> Self {
        Self { prefix: format!("{}{{", self.prefix), suffix: format!("}}{}", self.suffix) }
    }

    /// Braces outside the placeholder, which would change the hash tag.
    pub fn has_braces(&self) -> bool {
        self.prefix.contains(['{', '}']) || self.suffix.contains(['{', '}'])
    }

    /// The channel carrying one user's notifications.
    pub fn channel(&self, user_id: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + user_id.len() + self.suffix.len());
        s.push_str(&self.prefix);
        s.push_str(user_id);
        s.push_str(&self.suffix);
        s
    }

    /// The user id (or group) a channel belongs to, if it matches the pattern.
    pub fn user_id<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let id = channel.strip_prefix(self.prefix.as_str())?.strip_suffix(self.suffix.as_str())?;
        (!id.is_empty()).then_some(id)
    }
}

impl Config {
    /// Reads, substitutes, overrides and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| single("", format!("cannot read {}: {e}", path.display())))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_yaml(&text, base_dir, &|name| std::env::var(name).ok())
    }

    /// Parses a YAML document; `env` looks up environment variables (a parameter so tests can
    /// pass their own).
    pub fn from_yaml(text: &str, base_dir: PathBuf, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut root: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| single("", format!("invalid YAML: {e}")))?
        };
        let mut walk = Walk::default();
        env::substitute(&mut root, "", env, &mut walk);
        env::apply_overrides(&mut root, env);
        let config = Self::read(&root, base_dir, &mut walk);
        walk.into_result(config)
    }

    fn read(root: &Value, base_dir: PathBuf, walk: &mut Walk) -> Self {
        let top = walk.section(Some(root), "", &["server", "kafka", "redis", "auth", "routes", "replay", "api", "demo", "log"]);
        let server = read_server(walk, top.raw("server"));
        let kafka = read_kafka(walk, top.raw("kafka"));
        let redis = read_redis(walk, top.raw("redis"));
        let auth = read_auth(walk, top.raw("auth"));
        let routes = read_routes(walk, top.raw("routes"));
        let replay = read_replay(walk, top.raw("replay"));
        let api = read_api(walk, top.raw("api"));
        let demo = read_demo(walk, top.raw("demo"), kafka.brokers == Brokers::Embedded);
        let log = read_log(walk, top.raw("log"));
        let config = Config { server, kafka, redis, auth, routes, replay, api, demo, log, base_dir };
        config.check_cross_references(walk);
        config
    }

    fn check_cross_references(&self, walk: &mut Walk) {
        if let Some(redis) = self.redis.as_ref().filter(|r| r.sharded_pubsub) {
            for (path, pattern) in [("redis.channel", &redis.channel), ("replay.stream", &self.replay.stream)] {
                if pattern.has_braces() {
                    walk.error(path, "must not contain { or } besides {user_id} with redis.sharded_pubsub: the user id is the hash tag");
                }
            }
            if redis.group_channel.has_braces() {
                walk.error(
                    "redis.group_channel",
                    "must not contain { or } besides {group} with redis.sharded_pubsub: the group is the hash tag",
                );
            }
        }
        if self.demo.enabled == Some(DemoMode::Required) && !self.resolve(&self.demo.client_bundle).is_file() {
            walk.error(
                "demo.client_bundle",
                format!(
                    "{} is not a readable file: install it with `npm ci --prefix demo`, or point this at socket.io.min.js",
                    self.resolve(&self.demo.client_bundle).display()
                ),
            );
        }
        let jwt = &self.auth.jwt;
        if !jwt.is_enabled() {
            match &self.auth.check {
                None => walk.error(
                    "auth.jwt.secret",
                    "required: set auth.jwt.secret (or HERALD_JWT_SECRET), public_key_file or jwks_url, or configure auth.check",
                ),
                Some(c) if c.user_id_pointer.is_none() => walk.error(
                    "auth.check.user_id_pointer",
                    "required when no JWT verification is configured (the user id must come from somewhere)",
                ),
                Some(_) => {}
            }
            return;
        }
        if jwt.algorithms.iter().any(|a| is_hmac(*a)) && jwt.secret.as_deref().is_none_or(str::is_empty) {
            walk.error("auth.jwt.secret", "required for the HS algorithms (set it, or HERALD_JWT_SECRET)");
        }
        if jwt.algorithms.iter().any(|a| !is_hmac(*a)) && jwt.public_key_file.is_none() && jwt.jwks_url.is_none() {
            walk.error("auth.jwt.algorithms", "the RS, PS, ES and EdDSA algorithms need auth.jwt.public_key_file or auth.jwt.jwks_url");
        }
        if let Some(file) = &jwt.public_key_file
            && !self.resolve(file).is_file()
        {
            walk.error("auth.jwt.public_key_file", format!("{} is not a readable file", self.resolve(file).display()));
        }
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { self.base_dir.join(path) }
    }

    pub fn is_embedded(&self) -> bool {
        self.kafka.brokers == Brokers::Embedded
    }
}

fn is_hmac(alg: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm::*;
    matches!(alg, HS256 | HS384 | HS512)
}

fn single(path: &str, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError { path: path.into(), message }])
}

fn read_server(walk: &mut Walk, v: Option<&Value>) -> ServerConfig {
    let s = walk.section(
        v,
        "server",
        &[
            "listen",
            "event",
            "ping_interval_secs",
            "ping_timeout_secs",
            "max_buffer_size",
            "max_payload_bytes",
            "connect_timeout_ms",
            "write_timeout_ms",
            "shutdown_grace_secs",
            "slow_client",
            "receipt_event",
            "receipts_per_sec",
        ],
    );
    let listen = read_addr(walk, &s, "listen", "0.0.0.0:3000");
    let event: String = walk.get(&s, "event", "notification".into());
    check_event_name(walk, &s.path("event"), &event);
    let ping_interval = secs(walk, &s, "ping_interval_secs", 25, 1..=3600);
    let ping_timeout = secs(walk, &s, "ping_timeout_secs", 20, 1..=3600);
    let max_buffer_size = ranged(walk, &s, "max_buffer_size", 1024usize, 1..=1_000_000);
    let max_payload_bytes = ranged(walk, &s, "max_payload_bytes", 100_000u64, 64..=100_000_000);
    let connect_timeout = Duration::from_millis(ranged(walk, &s, "connect_timeout_ms", 10_000u64, 100..=600_000));
    let write_timeout = Duration::from_millis(ranged(walk, &s, "write_timeout_ms", 30_000u64, 100..=3_600_000));
    let shutdown_grace = secs(walk, &s, "shutdown_grace_secs", 10, 0..=3600);
    let slow_client = one_of(walk, &s, "slow_client", &[("drop", SlowClient::Drop), ("disconnect", SlowClient::Disconnect)]);
    let receipt_event: String = walk.get(&s, "receipt_event", "receipt".into());
    check_event_name(walk, &s.path("receipt_event"), &receipt_event);
    let receipts_per_sec = ranged(walk, &s, "receipts_per_sec", 10u32, 1..=10_000);
    ServerConfig {
        receipt_event,
        receipts_per_sec,
        listen,
        event,
        ping_interval,
        ping_timeout,
        max_buffer_size,
        slow_client,
        max_payload_bytes,
        connect_timeout,
        write_timeout,
        shutdown_grace,
    }
}

/// Socket.IO reserves these names on the client; a notification emitted under one never arrives.
const RESERVED_EVENTS: &[&str] = &["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

fn check_event_name(walk: &mut Walk, path: &str, event: &str) {
    if event.is_empty() {
        walk.error(path, "must not be empty");
    } else if RESERVED_EVENTS.contains(&event) {
        walk.error(path, format!("`{event}` is reserved by Socket.IO"));
    }
}

fn read_kafka(walk: &mut Walk, v: Option<&Value>) -> KafkaConfig {
    let s = walk.section(
        v,
        "kafka",
        &["brokers", "group_id", "topics", "options", "max_batch", "dead_letter_topic", "offline_topic", "receipts_topic", "embedded"],
    );
    let brokers = match s.raw("brokers") {
        None => Brokers::Embedded,
        Some(Value::String(b)) if b.trim() == "embedded" => Brokers::Embedded,
        Some(Value::String(b)) if b.trim().is_empty() => {
            walk.error(s.path("brokers"), "must not be empty");
            Brokers::Embedded
        }
        Some(Value::String(b)) => Brokers::List(b.trim().to_owned()),
        Some(Value::Array(items)) => {
            let mut list = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(b) if !b.trim().is_empty() => list.push(b.trim().to_owned()),
                    _ => walk.error(format!("{}[{i}]", s.path("brokers")), "expected a host:port string"),
                }
            }
            if list.is_empty() {
                walk.error(s.path("brokers"), "must list at least one broker");
            }
            Brokers::List(list.join(","))
        }
        Some(other) => {
            walk.error(s.path("brokers"), format!("expected `embedded`, a host:port list or a list of them, found {}", kind(other)));
            Brokers::Embedded
        }
    };
    let group_id: String = walk.get(&s, "group_id", "herald".into());
    if group_id.trim().is_empty() {
        walk.error(s.path("group_id"), "must not be empty");
    }
    let topics = match s.raw("topics") {
        None => vec![TopicConfig::named("user-notifications")],
        Some(Value::Array(items)) => {
            let topics: Vec<_> =
                items.iter().enumerate().filter_map(|(i, item)| read_topic(walk, item, &format!("kafka.topics[{i}]"))).collect();
            if items.is_empty() {
                walk.error(s.path("topics"), "must list at least one topic");
            }
            let mut seen = std::collections::HashSet::new();
            for (i, t) in topics.iter().enumerate() {
                if !seen.insert(t.name.as_str()) {
                    walk.error(format!("kafka.topics[{i}]"), format!("topic `{}` is listed twice", t.name));
                }
                if t.offline_topic.as_ref().is_some_and(|o| topics.iter().any(|c| &c.name == o)) {
                    walk.error(format!("kafka.topics[{i}].offline_topic"), "must not be one of the consumed topics");
                }
            }
            topics
        }
        Some(other) => {
            walk.error(s.path("topics"), format!("expected a list of topics, found {}", kind(other)));
            Vec::new()
        }
    };
    let options = match s.raw("options") {
        None => BTreeMap::new(),
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k.clone(), s.clone())),
                Value::Number(n) => Some((k.clone(), n.to_string())),
                Value::Bool(b) => Some((k.clone(), b.to_string())),
                other => {
                    walk.error(format!("kafka.options.{k}"), format!("expected a string, number or boolean, found {}", kind(other)));
                    None
                }
            })
            .collect(),
        Some(other) => {
            walk.error(s.path("options"), format!("expected a mapping of librdkafka settings, found {}", kind(other)));
            BTreeMap::new()
        }
    };
    for managed in ["group.id", "bootstrap.servers", "enable.auto.offset.store"] {
        if options.contains_key(managed) {
            walk.error(
                format!("kafka.options.{managed}"),
                "is set by herald (use the dedicated key, or leave it: herald stores offsets only after delivery to the bus)",
            );
        }
    }
    let max_batch = ranged(walk, &s, "max_batch", 512usize, 1..=100_000);
    let e = walk.section(s.raw("embedded"), "kafka.embedded", &["listen", "partitions"]);
    let embedded = EmbeddedKafkaConfig {
        listen: read_addr(walk, &e, "listen", "127.0.0.1:9092"),
        partitions: ranged(walk, &e, "partitions", 4i32, 1..=1000),
    };
    let dead_letter_topic = output_topic(walk, &s, "dead_letter_topic", &topics);
    let offline_topic = output_topic(walk, &s, "offline_topic", &topics);
    let receipts_topic = output_topic(walk, &s, "receipts_topic", &topics);
    KafkaConfig { brokers, group_id, topics, options, max_batch, dead_letter_topic, offline_topic, receipts_topic, embedded }
}

fn read_topic(walk: &mut Walk, item: &Value, path: &str) -> Option<TopicConfig> {
    let topic = match item {
        Value::String(name) => TopicConfig::named(name),
        Value::Object(_) => {
            let s =
                walk.section(Some(item), path, &["name", "script", "user_id", "group", "broadcast", "event", "retain", "offline_topic"]);
            let Some(name) = walk.opt::<String>(&s, "name") else {
                if s.raw("name").is_none() {
                    walk.error(s.path("name"), "is required");
                }
                return None;
            };
            let script = walk.opt::<String>(&s, "script").map(PathBuf::from);
            let user_id = walk.opt::<String>(&s, "user_id").and_then(|u| parse_user_id(walk, &s.path("user_id"), &u));
            let event = walk.opt::<String>(&s, "event");
            if let Some(e) = &event {
                check_event_name(walk, &s.path("event"), e);
            }
            let retain = walk.get(&s, "retain", false);
            let offline_topic = walk.opt::<String>(&s, "offline_topic").filter(|t| !t.is_empty());
            if let Some(Err(why)) = offline_topic.as_deref().map(check_topic_name) {
                walk.error(s.path("offline_topic"), why);
            }
            let group = walk.opt::<String>(&s, "group").and_then(|g| parse_user_id(walk, &s.path("group"), &g));
            let broadcast = walk.get(&s, "broadcast", false);
            if [user_id.is_some(), group.is_some(), broadcast].iter().filter(|b| **b).count() > 1 {
                walk.error(path, "give at most one of `user_id`, `group` and `broadcast: true`");
            }
            if script.is_some() && (group.is_some() || broadcast) {
                walk.error(
                    path,
                    "`group` and `broadcast` are for the default rule: a script returns `group`, `groups` or `broadcast` itself",
                );
            }
            TopicConfig { name, script, user_id, event, retain, offline_topic, group, broadcast }
        }
        other => {
            walk.error(path, format!("expected a topic name or a mapping with `name`, found {}", kind(other)));
            return None;
        }
    };
    if let Err(why) = check_topic_name(&topic.name) {
        walk.error(path, why);
    }
    Some(topic)
}

fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!("topic name `{name}` must be 1 to 249 characters long"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("topic name `{name}` may only contain ASCII letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

fn parse_user_id(walk: &mut Walk, path: &str, value: &str) -> Option<UserIdSource> {
    if value == "key" {
        Some(UserIdSource::Key)
    } else if value.is_empty() || value.starts_with('/') {
        Some(UserIdSource::Pointer(value.to_owned()))
    } else {
        walk.error(path, format!("expected `key` or a JSON pointer such as `/userId`, found `{value}`"));
        None
    }
}

/// A topic herald produces to: a valid name, and not one it consumes.
fn output_topic(walk: &mut Walk, s: &Section, key: &str, consumed: &[TopicConfig]) -> Option<String> {
    let topic = walk.opt::<String>(s, key).filter(|t| !t.is_empty())?;
    if let Err(why) = check_topic_name(&topic) {
        walk.error(s.path(key), why);
    }
    if consumed.iter().any(|c| c.name == topic) {
        walk.error(s.path(key), "must not be one of the consumed topics");
    }
    Some(topic)
}

fn read_redis(walk: &mut Walk, v: Option<&Value>) -> Option<RedisConfig> {
    let s = walk.section(
        v,
        "redis",
        &["url", "channel", "group_channel", "broadcast_channel", "command_timeout_ms", "pubsub_buffer", "sharded_pubsub"],
    );
    let url = walk.opt::<String>(&s, "url").filter(|u| !u.trim().is_empty());
    if let Some(u) = &url
        && !(u.starts_with("redis://") || u.starts_with("redis-sentinel://") || is_cluster_url(u))
    {
        walk.error(s.path("url"), "must start with redis://, redis-sentinel:// or redis-cluster:// (TLS is not supported yet)");
    }
    let address = match &url {
        Some(u) if u.starts_with("redis://") || u.starts_with("redis-sentinel://") => match RedisAddress::parse(u) {
            Ok(a) => Some(a),
            Err(why) => {
                walk.error(s.path("url"), why);
                None
            }
        },
        _ => None,
    };
    let pattern: String = walk.get(&s, "channel", "herald:user:{user_id}".into());
    let channel = ChannelPattern::parse(&pattern).unwrap_or_else(|why| {
        walk.error(s.path("channel"), why);
        ChannelPattern::parse("herald:user:{user_id}").expect("default pattern is valid")
    });
    let group_pattern: String = walk.get(&s, "group_channel", "herald:group:{group}".into());
    let group_channel = ChannelPattern::parse_with(&group_pattern, ChannelPattern::GROUP_PLACEHOLDER).unwrap_or_else(|why| {
        walk.error(s.path("group_channel"), why);
        ChannelPattern::parse_with("herald:group:{group}", ChannelPattern::GROUP_PLACEHOLDER).expect("default pattern is valid")
    });
    let broadcast_channel: String = walk.get(&s, "broadcast_channel", "herald:broadcast".into());
    if broadcast_channel.is_empty() || broadcast_channel.contains(['*', '?', '[']) {
        walk.error(s.path("broadcast_channel"), "must be a non-empty channel name without the glob characters * ? [");
    }
    // A message's channel tells whose it is: no channel may match two of the three.
    let probe = group_channel.channel("x");
    if channel.user_id(&probe).is_some() || group_channel.user_id(&channel.channel("x")).is_some() {
        walk.error(s.path("group_channel"), "must not overlap redis.channel: a group's channel would read as a user's");
    }
    if channel.user_id(&broadcast_channel).is_some() || group_channel.user_id(&broadcast_channel).is_some() {
        walk.error(s.path("broadcast_channel"), "must not match redis.channel or redis.group_channel");
    }
    let command_timeout = Duration::from_millis(ranged(walk, &s, "command_timeout_ms", 2000u64, 10..=600_000));
    let pubsub_buffer = ranged(walk, &s, "pubsub_buffer", 65_536usize, 16..=16_777_216);
    let sharded_pubsub = walk.get(&s, "sharded_pubsub", url.as_deref().is_some_and(is_cluster_url));
    url.map(|url| RedisConfig { url, channel, group_channel, broadcast_channel, command_timeout, pubsub_buffer, sharded_pubsub, address })
}

fn read_auth(walk: &mut Walk, v: Option<&Value>) -> AuthConfig {
    let s = walk.section(
        v,
        "auth",
        &[
            "jwt",
            "check",
            "expired_event",
            "refresh_event",
            "max_sockets_per_user",
            "per_user_limit",
            "max_sockets",
            "allowed_origins",
            "max_groups_per_socket",
        ],
    );
    let jwt = read_jwt(walk, s.raw("jwt"));
    let check = s.raw("check").map(|c| read_check(walk, c));
    let expired_event: String = walk.get(&s, "expired_event", "auth_expired".into());
    check_event_name(walk, &s.path("expired_event"), &expired_event);
    let refresh_event: String = walk.get(&s, "refresh_event", "auth_refresh".into());
    check_event_name(walk, &s.path("refresh_event"), &refresh_event);
    let max_sockets_per_user = walk.get(&s, "max_sockets_per_user", 0u32);
    let per_user_limit = one_of(
        walk,
        &s,
        "per_user_limit",
        &[("refuse_new", PerUserLimit::RefuseNew), ("disconnect_oldest", PerUserLimit::DisconnectOldest)],
    );
    let max_sockets = walk.get(&s, "max_sockets", 0u32);
    let allowed_origins: Vec<String> = walk.get(&s, "allowed_origins", Vec::new());
    for (i, origin) in allowed_origins.iter().enumerate() {
        if origin.parse::<http::HeaderValue>().is_err() || !(origin.starts_with("http://") || origin.starts_with("https://")) {
            walk.error(
                format!("auth.allowed_origins[{i}]"),
                format!("expected an origin such as https://app.example.com, found `{origin}`"),
            );
        }
    }
    let max_groups_per_socket = ranged(walk, &s, "max_groups_per_socket", 100usize, 1..=10_000);
    AuthConfig {
        jwt,
        check,
        expired_event,
        refresh_event,
        max_sockets_per_user,
        per_user_limit,
        max_sockets,
        allowed_origins,
        max_groups_per_socket,
    }
}

fn read_check(walk: &mut Walk, v: &Value) -> CheckConfig {
    let s = walk.section(
        Some(v),
        "auth.check",
        &["url", "method", "header", "scheme", "timeout_ms", "cache_ttl_secs", "user_id_pointer", "groups_pointer"],
    );
    let url: String = walk.get(&s, "url", String::new());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        walk.error(s.path("url"), "required: an http:// or https:// URL");
    }
    let method = walk.get::<String>(&s, "method", "GET".into()).to_ascii_uppercase();
    if method != "GET" && method != "POST" {
        walk.error(s.path("method"), format!("expected GET or POST, found `{method}`"));
    }
    let header: String = walk.get(&s, "header", "Authorization".into());
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        walk.error(s.path("header"), format!("`{header}` is not a valid header name"));
    }
    let scheme: String = walk.get(&s, "scheme", "Bearer".into());
    let timeout = Duration::from_millis(ranged(walk, &s, "timeout_ms", 2000u64, 10..=60_000));
    let cache_ttl = Duration::from_secs(ranged(walk, &s, "cache_ttl_secs", 60u64, 0..=86_400));
    let user_id_pointer = walk.opt::<String>(&s, "user_id_pointer");
    if let Some(p) = &user_id_pointer
        && !p.starts_with('/')
    {
        walk.error(s.path("user_id_pointer"), format!("expected a JSON pointer such as /userId, found `{p}`"));
    }
    let groups_pointer = walk.opt::<String>(&s, "groups_pointer");
    if let Some(p) = &groups_pointer
        && !p.starts_with('/')
    {
        walk.error(s.path("groups_pointer"), format!("expected a JSON pointer such as /groups, found `{p}`"));
    }
    CheckConfig { url, method, header, scheme, timeout, cache_ttl, user_id_pointer, groups_pointer }
}

fn read_jwt(walk: &mut Walk, v: Option<&Value>) -> JwtConfig {
    let j = walk.section(
        v,
        "auth.jwt",
        &[
            "secret",
            "public_key_file",
            "jwks_url",
            "jwks_refresh_secs",
            "jwks_min_refetch_secs",
            "jwks_timeout_ms",
            "algorithms",
            "user_id_claim",
            "groups_claim",
            "leeway_secs",
            "issuers",
            "audiences",
        ],
    );
    let secret = walk.opt::<String>(&j, "secret").filter(|s| !s.is_empty());
    let public_key_file = walk.opt::<String>(&j, "public_key_file").filter(|s| !s.is_empty()).map(PathBuf::from);
    let jwks_url = walk.opt::<String>(&j, "jwks_url").filter(|s| !s.is_empty());
    if let Some(u) = &jwks_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        walk.error(j.path("jwks_url"), "expected an http:// or https:// URL");
    }
    let jwks_refresh = secs(walk, &j, "jwks_refresh_secs", 300, 1..=86_400);
    let jwks_min_refetch = secs(walk, &j, "jwks_min_refetch_secs", 10, 0..=3600);
    let jwks_timeout = Duration::from_millis(ranged(walk, &j, "jwks_timeout_ms", 2000u64, 10..=60_000));
    let names: Vec<String> = walk.get(&j, "algorithms", vec!["HS256".into()]);
    let mut algorithms = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match name.parse::<jsonwebtoken::Algorithm>() {
            Ok(a) => algorithms.push(a),
            Err(_) => walk.error(format!("auth.jwt.algorithms[{i}]"), format!("unknown algorithm `{name}`")),
        }
    }
    if names.is_empty() {
        walk.error(j.path("algorithms"), "must list at least one algorithm");
    }
    let user_id_claim: String = walk.get(&j, "user_id_claim", "sub".into());
    if user_id_claim.is_empty() {
        walk.error(j.path("user_id_claim"), "must not be empty");
    }
    let groups_claim = walk.opt::<String>(&j, "groups_claim").filter(|c| !c.is_empty());
    let leeway_secs = ranged(walk, &j, "leeway_secs", 5u64, 0..=3600);
    let issuers = walk.get(&j, "issuers", Vec::new());
    let audiences = walk.get(&j, "audiences", Vec::new());
    JwtConfig {
        secret,
        public_key_file,
        jwks_url,
        jwks_refresh,
        jwks_min_refetch,
        jwks_timeout,
        algorithms,
        user_id_claim,
        groups_claim,
        leeway_secs,
        issuers,
        audiences,
    }
}

impl JwtConfig {
    /// Whether tokens are verified locally: some key source is configured.
    pub fn is_enabled(&self) -> bool {
        self.secret.is_some() || self.public_key_file.is_some() || self.jwks_url.is_some()
    }
}

fn read_routes(walk: &mut Walk, v: Option<&Value>) -> RoutesConfig {
    let s = walk.section(v, "routes", &["user_id", "script_timeout_ms", "script_max_operations", "reload_debounce_ms", "threads"]);
    let raw: String = walk.get(&s, "user_id", "/userId".into());
    let user_id = parse_user_id(walk, &s.path("user_id"), &raw).unwrap_or(UserIdSource::Pointer("/userId".into()));
    let script_timeout = Duration::from_millis(ranged(walk, &s, "script_timeout_ms", 50u64, 1..=60_000));
    let script_max_operations = ranged(walk, &s, "script_max_operations", 1_000_000u64, 1_000..=1_000_000_000);
    let reload_debounce = Duration::from_millis(ranged(walk, &s, "reload_debounce_ms", 200u64, 10..=60_000));
    let threads = ranged(walk, &s, "threads", 0usize, 0..=256);
    RoutesConfig { user_id, script_timeout, script_max_operations, reload_debounce, threads }
}

fn read_replay(walk: &mut Walk, v: Option<&Value>) -> ReplayConfig {
    let s = walk.section(v, "replay", &["history", "max_age_secs", "last_without_since", "gap_event", "stream"]);
    let history = ranged(walk, &s, "history", 100usize, 1..=100_000);
    let max_age = secs(walk, &s, "max_age_secs", 86_400, 1..=30 * 86_400);
    let last_without_since = ranged(walk, &s, "last_without_since", 0usize, 0..=100_000);
    let gap_event: String = walk.get(&s, "gap_event", "replay_gap".into());
    check_event_name(walk, &s.path("gap_event"), &gap_event);
    let pattern: String = walk.get(&s, "stream", "herald:history:{user_id}".into());
    let stream = ChannelPattern::parse(&pattern).unwrap_or_else(|why| {
        walk.error(s.path("stream"), why);
        ChannelPattern::parse("herald:history:{user_id}").expect("default pattern is valid")
    });
    ReplayConfig { history, max_age, last_without_since, gap_event, stream }
}

fn read_api(walk: &mut Walk, v: Option<&Value>) -> ApiConfig {
    let s = walk.section(v, "api", &["key", "rate_limit_per_sec", "max_users_per_request"]);
    let key = walk.opt::<String>(&s, "key").filter(|k| !k.is_empty());
    if key.as_ref().is_some_and(|k| k.len() < 16) {
        walk.error(s.path("key"), "must be at least 16 characters long");
    }
    let rate_limit_per_sec = ranged(walk, &s, "rate_limit_per_sec", 100u32, 1..=1_000_000);
    let max_users_per_request = ranged(walk, &s, "max_users_per_request", 1000usize, 1..=100_000);
    ApiConfig { key, rate_limit_per_sec, max_users_per_request }
}

fn read_demo(walk: &mut Walk, v: Option<&Value>, embedded: bool) -> DemoConfig {
    let s = walk.section(v, "demo", &["enabled", "client_bundle"]);
    let enabled = match walk.opt::<bool>(&s, "enabled") {
        Some(true) => Some(DemoMode::Required),
        Some(false) => None,
        None => embedded.then_some(DemoMode::IfBundled),
    };
    let client_bundle = walk.get::<String>(&s, "client_bundle", DemoConfig::DEFAULT_BUNDLE.into()).into();
    DemoConfig { enabled, client_bundle }
}

fn read_log(walk: &mut Walk, v: Option<&Value>) -> LogConfig {
    let s = walk.section(v, "log", &["format", "level"]);
    let format = match walk.get::<String>(&s, "format", "text".into()).as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            walk.error(s.path("format"), format!("expected `text` or `json`, found `{other}`"));
            LogFormat::Text
        }
    };
    let level: String = walk.get(&s, "level", "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        walk.error(s.path("level"), format!("not a valid log filter: {e}"));
    }
    LogConfig { format, level }
}

fn read_addr(walk: &mut Walk, s: &Section<'_>, key: &str, default: &str) -> SocketAddr {
    let fallback = default.parse().expect("default address is valid");
    match walk.opt::<String>(s, key) {
        None => fallback,
        Some(text) => text.parse().unwrap_or_else(|_| {
            walk.error(s.path(key), format!("expected an ip:port address such as {default}, found `{text}`"));
            fallback
        }),
    }
}

fn ranged<T>(walk: &mut Walk, s: &Section<'_>, key: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
where
    T: serde::de::DeserializeOwned + PartialOrd + Copy + std::fmt::Display,
{
    let value = walk.get(s, key, default);
    if range.contains(&value) {
        value
    } else {
        walk.error(s.path(key), format!("must be between {} and {}, found {value}", range.start(), range.end()));
        default
    }
}

/// Reads a key whose value is one of a few words; the first choice is the default.
fn one_of<T: Copy>(walk: &mut Walk, s: &Section<'_>, key: &str, choices: &[(&str, T)]) -> T {
    let found: String = walk.get(s, key, choices[0].0.into());
    if let Some((_, value)) = choices.iter().find(|(word, _)| *word == found) {
        return *value;
    }
    let expected: Vec<String> = choices.iter().map(|(word, _)| format!("`{word}`")).collect();
    walk.error(s.path(key), format!("expected {}, found `{found}`", expected.join(" or ")));
    choices[0].1
}

fn secs(walk: &mut Walk, s: &Section<'_>, key: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_secs(ranged(walk, s, key, default, range))
}

#[cfg(test)]
mod tests;
