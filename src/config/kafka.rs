//! The `kafka` section: brokers, the consumer group, topics and their rules, output topics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;

use super::server::check_event_name;
use super::walk::{Section, Walk, kind, ranged, read_addr};

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

pub(super) fn read_kafka(walk: &mut Walk, v: Option<&Value>) -> KafkaConfig {
    walk.section(v, "kafka", |walk, s| {
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
        let group_id: String = walk.get(s, "group_id", "herald".into());
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
        check_security(walk, &options);
        let max_batch = ranged(walk, s, "max_batch", 512usize, 1..=100_000);
        let embedded = walk.section(s.raw("embedded"), "kafka.embedded", |walk, e| EmbeddedKafkaConfig {
            listen: read_addr(walk, e, "listen", "127.0.0.1:9092"),
            partitions: ranged(walk, e, "partitions", 4i32, 1..=1000),
        });
        let dead_letter_topic = output_topic(walk, s, "dead_letter_topic", &topics);
        let offline_topic = output_topic(walk, s, "offline_topic", &topics);
        let receipts_topic = output_topic(walk, s, "receipts_topic", &topics);
        KafkaConfig { brokers, group_id, topics, options, max_batch, dead_letter_topic, offline_topic, receipts_topic, embedded }
    })
}

pub(super) fn read_topic(walk: &mut Walk, item: &Value, path: &str) -> Option<TopicConfig> {
    let topic = match item {
        Value::String(name) => TopicConfig::named(name),
        Value::Object(_) => walk.section(Some(item), path, |walk, s| {
            let name = walk.opt::<String>(s, "name");
            if name.is_none() && s.raw("name").is_none() {
                walk.error(s.path("name"), "is required");
            }
            let script = walk.opt::<String>(s, "script").map(PathBuf::from);
            let user_id = walk.opt::<String>(s, "user_id").and_then(|u| parse_user_id(walk, &s.path("user_id"), &u));
            let event = walk.opt::<String>(s, "event");
            if let Some(e) = &event {
                check_event_name(walk, &s.path("event"), e);
            }
            let retain = walk.get(s, "retain", false);
            let offline_topic = walk.opt::<String>(s, "offline_topic").filter(|t| !t.is_empty());
            if let Some(Err(why)) = offline_topic.as_deref().map(check_topic_name) {
                walk.error(s.path("offline_topic"), why);
            }
            let group = walk.opt::<String>(s, "group").and_then(|g| parse_user_id(walk, &s.path("group"), &g));
            let broadcast = walk.get(s, "broadcast", false);
            if [user_id.is_some(), group.is_some(), broadcast].iter().filter(|b| **b).count() > 1 {
                walk.error(path, "give at most one of `user_id`, `group` and `broadcast: true`");
            }
            if script.is_some() && (group.is_some() || broadcast) {
                walk.error(
                    path,
                    "`group` and `broadcast` are for the default rule: a script returns `group`, `groups` or `broadcast` itself",
                );
            }
            Some(TopicConfig { name: name?, script, user_id, event, retain, offline_topic, group, broadcast })
        })?,
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

pub(super) fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err(format!("topic name `{name}` must be 1 to 249 characters long"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(format!("topic name `{name}` may only contain ASCII letters, digits, `.`, `_` and `-`"));
    }
    Ok(())
}

pub(super) fn parse_user_id(walk: &mut Walk, path: &str, value: &str) -> Option<UserIdSource> {
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
pub(super) fn output_topic(walk: &mut Walk, s: &Section, key: &str, consumed: &[TopicConfig]) -> Option<String> {
    let topic = walk.opt::<String>(s, key).filter(|t| !t.is_empty())?;
    if let Err(why) = check_topic_name(&topic) {
        walk.error(s.path(key), why);
    }
    if consumed.iter().any(|c| c.name == topic) {
        walk.error(s.path(key), "must not be one of the consumed topics");
    }
    Some(topic)
}

/// The SASL mechanisms this build of librdkafka has (`builtin.features`), and whether
/// OAUTHBEARER can fetch its tokens itself (OIDC, with libcurl: the `oidc` cargo feature).
pub fn kafka_features() -> (Vec<&'static str>, bool) {
    let features = rdkafka::config::ClientConfig::new().create_native_config().and_then(|c| c.get("builtin.features")).unwrap_or_default();
    let has = |f: &str| features.split(',').any(|x| x == f);
    let mut mechanisms = vec!["PLAIN"];
    if has("sasl_scram") {
        mechanisms.extend(["SCRAM-SHA-256", "SCRAM-SHA-512"]);
    }
    if has("sasl_oauthbearer") {
        mechanisms.push("OAUTHBEARER");
    }
    if has("sasl_gssapi") {
        mechanisms.push("GSSAPI");
    }
    (mechanisms, has("oidc"))
}

/// Security settings that cannot work with this build are refused before start, by path:
/// a SASL protocol without a mechanism (librdkafka would pick GSSAPI, which this build lacks),
/// a mechanism it lacks, OIDC without libcurl.
fn check_security(walk: &mut Walk, options: &BTreeMap<String, String>) {
    let protocol = options.get("security.protocol").map(|p| p.to_ascii_uppercase()).unwrap_or_default();
    let mechanism = options.get("sasl.mechanism").or_else(|| options.get("sasl.mechanisms"));
    let (mechanisms, oidc) = kafka_features();
    match mechanism {
        None if protocol.starts_with("SASL") => walk.error(
            "kafka.options.sasl.mechanism",
            format!("is needed with security.protocol {protocol}: one of {}", mechanisms.join(", ")),
        ),
        Some(m) if !mechanisms.contains(&m.to_ascii_uppercase().as_str()) => {
            walk.error("kafka.options.sasl.mechanism", format!("`{m}` is not built into this herald: one of {}", mechanisms.join(", ")))
        }
        _ => {}
    }
    if options.get("sasl.oauthbearer.method").is_some_and(|m| m.eq_ignore_ascii_case("oidc")) && !oidc {
        walk.error(
            "kafka.options.sasl.oauthbearer.method",
            "`oidc` needs a herald built with `--features oidc` (librdkafka with libcurl; the Docker image has it)",
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserIdSource {
    /// A JSON pointer into the record value, e.g. `/userId`.
    Pointer(String),
    /// The Kafka record key.
    Key,
}
