//! herald's configuration: the typed settings, their defaults, and the validation that reports
//! every problem at once, each with its path. Reading the file lives here; using it does not.

mod auth;
mod env;
mod kafka;
mod redis;
mod redis_tls;
mod redis_url;
mod server;
mod telemetry;
mod walk;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use auth::{AuthConfig, CheckConfig, JwtConfig, PerUserLimit};
use auth::{is_hmac, read_auth};
pub use env::OVERRIDES as ENV_OVERRIDES;
pub use kafka::{Brokers, EmbeddedKafkaConfig, KafkaConfig, TopicConfig, UserIdSource, kafka_features};
use kafka::{parse_user_id, read_kafka};
pub use redis::{ChannelPattern, RedisConfig};
use redis::{pattern, read_redis};
pub use redis_tls::RedisTls;
pub use redis_url::{RedisAddress, RedisTarget};
pub use server::{ServerConfig, SlowClient};
use server::{check_event_name, read_server};
pub use telemetry::TelemetryConfig;
use telemetry::read_telemetry;
pub use walk::{ConfigError, ConfigErrors};
use walk::{Walk, ranged, secs};

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
    pub telemetry: TelemetryConfig,
    /// The directory of the config file; relative paths in the config resolve against it.
    pub base_dir: PathBuf,
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
    /// Reread the scripts and the JWT public key this often, events or not, for filesystems
    /// that report no changes (`routes.reload_poll_secs`; 0, the default, is off).
    pub reload_poll: Option<Duration>,
    /// Threads that route a large batch in parallel; 0 = one per core, 1 = route on the
    /// consumer's own task. Default 0.
    pub threads: usize,
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
        let config = walk.section(Some(root), "", |walk, top| {
            let server = read_server(walk, top.raw("server"));
            let kafka = read_kafka(walk, top.raw("kafka"));
            let redis = read_redis(walk, top.raw("redis"));
            let auth = read_auth(walk, top.raw("auth"));
            let routes = read_routes(walk, top.raw("routes"));
            let replay = read_replay(walk, top.raw("replay"));
            let api = read_api(walk, top.raw("api"));
            let demo = read_demo(walk, top.raw("demo"), kafka.brokers == Brokers::Embedded);
            let log = read_log(walk, top.raw("log"));
            let telemetry = read_telemetry(walk, top.raw("telemetry"));
            Config { server, kafka, redis, auth, routes, replay, api, demo, log, telemetry, base_dir }
        });
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

fn single(path: &str, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError { path: path.into(), message }])
}

fn read_routes(walk: &mut Walk, v: Option<&Value>) -> RoutesConfig {
    walk.section(v, "routes", |walk, s| {
        let raw: String = walk.get(s, "user_id", "/userId".into());
        let user_id = parse_user_id(walk, &s.path("user_id"), &raw).unwrap_or(UserIdSource::Pointer("/userId".into()));
        let script_timeout = Duration::from_millis(ranged(walk, s, "script_timeout_ms", 50u64, 1..=60_000));
        let script_max_operations = ranged(walk, s, "script_max_operations", 1_000_000u64, 1_000..=1_000_000_000);
        let reload_debounce = Duration::from_millis(ranged(walk, s, "reload_debounce_ms", 200u64, 10..=60_000));
        let reload_poll = Some(secs(walk, s, "reload_poll_secs", 0, 0..=86_400)).filter(|p| !p.is_zero());
        let threads = ranged(walk, s, "threads", 0usize, 0..=256);
        RoutesConfig { user_id, script_timeout, script_max_operations, reload_debounce, reload_poll, threads }
    })
}

fn read_replay(walk: &mut Walk, v: Option<&Value>) -> ReplayConfig {
    walk.section(v, "replay", |walk, s| {
        let history = ranged(walk, s, "history", 100usize, 1..=100_000);
        let max_age = secs(walk, s, "max_age_secs", 86_400, 1..=30 * 86_400);
        let last_without_since = ranged(walk, s, "last_without_since", 0usize, 0..=100_000);
        let gap_event: String = walk.get(s, "gap_event", "replay_gap".into());
        check_event_name(walk, &s.path("gap_event"), &gap_event);
        let stream = pattern(walk, s, "stream", "herald:history:{user_id}", ChannelPattern::PLACEHOLDER);
        ReplayConfig { history, max_age, last_without_since, gap_event, stream }
    })
}

fn read_api(walk: &mut Walk, v: Option<&Value>) -> ApiConfig {
    walk.section(v, "api", |walk, s| {
        let key = walk.opt::<String>(s, "key").filter(|k| !k.is_empty());
        if key.as_ref().is_some_and(|k| k.len() < 16) {
            walk.error(s.path("key"), "must be at least 16 characters long");
        }
        let rate_limit_per_sec = ranged(walk, s, "rate_limit_per_sec", 100u32, 1..=1_000_000);
        let max_users_per_request = ranged(walk, s, "max_users_per_request", 1000usize, 1..=100_000);
        ApiConfig { key, rate_limit_per_sec, max_users_per_request }
    })
}

fn read_demo(walk: &mut Walk, v: Option<&Value>, embedded: bool) -> DemoConfig {
    walk.section(v, "demo", |walk, s| {
        let enabled = match walk.opt::<bool>(s, "enabled") {
            Some(true) => Some(DemoMode::Required),
            Some(false) => None,
            None => embedded.then_some(DemoMode::IfBundled),
        };
        let client_bundle = walk.get::<String>(s, "client_bundle", DemoConfig::DEFAULT_BUNDLE.into()).into();
        DemoConfig { enabled, client_bundle }
    })
}

fn read_log(walk: &mut Walk, v: Option<&Value>) -> LogConfig {
    walk.section(v, "log", |walk, s| {
        let format = match walk.get::<String>(s, "format", "text".into()).as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                walk.error(s.path("format"), format!("expected `text` or `json`, found `{other}`"));
                LogFormat::Text
            }
        };
        let level: String = walk.get(s, "level", "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
            walk.error(s.path("level"), format!("not a valid log filter: {e}"));
        }
        LogConfig { format, level }
    })
}

#[cfg(test)]
mod tests;
