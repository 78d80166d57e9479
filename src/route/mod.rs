//! Routing: turns one Kafka record into the notifications it causes (who, which event, what
//! payload), by the topic's default rule or its Rhai script. It owns the per-topic rules and
//! their hot reload; it does not read Kafka or talk to the bus.

mod dropped;
mod json;

mod pointer;
mod record;
mod returned;
pub mod script;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use rayon::prelude::*;
use rhai::Engine;
use serde_json::value::RawValue;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, ConfigErrors, UserIdSource};
use crate::metrics::Metrics;
use crate::notification::{Audience, Notification};
use script::{Limits, Script};

pub use dropped::DropReason;

use record::parse_value;
pub use record::{Record, RouteError};

/// How one topic's records become notifications.
#[derive(Clone)]
enum Rule {
    /// Audience from the topic's config (a user id or groups from a JSON pointer or the key,
    /// or everyone); payload = the whole value.
    Default { to: DefaultAudience, event: Arc<str> },
    /// A Rhai script decides; `event` is the default for maps that name none.
    Script { script: Arc<Script>, event: Arc<str> },
}

/// Whom the default rule addresses.
#[derive(Clone)]
enum DefaultAudience {
    User(UserIdSource),
    Groups(UserIdSource),
    Broadcast,
}

/// Every topic's rule, swapped as a whole on reload.
struct Table {
    rules: HashMap<String, Rule>,
}

impl Table {
    /// Each scripted topic with its running script and default event: what a reload rereads.
    fn scripts(&self) -> impl Iterator<Item = (&String, &Arc<Script>, &Arc<str>)> {
        self.rules.iter().filter_map(|(topic, rule)| match rule {
            Rule::Script { script, event } => Some((topic, script, event)),
            Rule::Default { .. } => None,
        })
    }
}

impl crate::watch::Reloadable for Router {
    fn watched_files(&self) -> Vec<PathBuf> {
        self.script_files()
    }

    fn reload(&self) {
        Router::reload(self);
    }
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Nothing changed on disk.
    Unchanged,
    /// These scripts were recompiled and swapped in.
    Applied(Vec<String>),
    /// At least one script failed to compile and kept its previous version (others may have
    /// been applied).
    Rejected { applied: Vec<String>, errors: Vec<String> },
}

/// The records of a batch that produced no notification: their index in the batch, and why.
pub type Failures = Vec<(usize, RouteError)>;

/// A batch is split across threads only in parts of at least this many records: smaller parts
/// would spend more on hand-offs than they save.
const MIN_RECORDS_PER_THREAD: usize = 64;

pub struct Router {
    table: ArcSwap<Table>,
    /// Topics whose notifications are retained for replay.
    retained: std::collections::HashSet<String>,
    /// Every notification carries its origin (the offline hand-off's headers, the id receipts
    /// name), not only retained ones.
    all_origins: bool,
    engine: Engine,
    limits: Limits,
    default_event: Arc<str>,
    fallback_user_id: UserIdSource,
    metrics: Arc<Metrics>,
    /// How many threads route a large batch (`routes.threads`, 0 resolved to the core count).
    threads: usize,
    /// Their pool, started by the first batch large enough to split (never for a dry run).
    pool: OnceLock<Option<rayon::ThreadPool>>,
    /// Scripts whose last reload failed, and how: reported once, until the file changes.
    failed: Mutex<HashMap<PathBuf, Failure>>,
}

/// Why a script's file could not replace its running version.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Missing or unreadable (a ConfigMap key removed, a file deleted).
    Unreadable,
    /// This text did not compile.
    Rejected(String),
}

impl Router {
    /// Builds every topic's rule, compiling every script; all compile errors are returned, each
    /// with the config path of the topic that names the script.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, ConfigErrors> {
        let limits = Limits { max_operations: config.routes.script_max_operations, timeout: config.routes.script_timeout };
        let engine = script::engine(&limits);
        let default_event: Arc<str> = config.server.event.as_str().into();
        let mut rules = HashMap::new();
        let mut errors = Vec::new();
        for (i, topic) in config.kafka.topics.iter().enumerate() {
            let event = topic.event.as_deref().map(Arc::from).unwrap_or_else(|| default_event.clone());
            let rule = match &topic.script {
                None => {
                    let to = match (&topic.group, topic.broadcast) {
                        (_, true) => DefaultAudience::Broadcast,
                        (Some(group), false) => DefaultAudience::Groups(group.clone()),
                        (None, false) => DefaultAudience::User(topic.user_id.clone().unwrap_or_else(|| config.routes.user_id.clone())),
                    };
                    Rule::Default { to, event }
                }
                Some(relative) => {
                    let path = config.resolve(relative);
                    match Script::load(&engine, &path) {
                        Ok(s) => Rule::Script { script: Arc::new(s), event },
                        Err(e) => {
                            errors.push(ConfigError { path: format!("kafka.topics[{i}].script"), message: e });
                            continue;
                        }
                    }
                }
            };
            rules.insert(topic.name.clone(), rule);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Self {
            table: ArcSwap::from_pointee(Table { rules }),
            retained: config.kafka.topics.iter().filter(|t| t.retain).map(|t| t.name.clone()).collect(),
            all_origins: config.kafka.topics.iter().any(|t| config.kafka.offline_topic_for(&t.name).is_some())
                || config.kafka.receipts_topic.is_some(),
            engine,
            limits,
            default_event,
            fallback_user_id: config.routes.user_id.clone(),
            metrics,
            threads: match config.routes.threads {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => n,
            },
            pool: OnceLock::new(),
            failed: Mutex::new(HashMap::new()),
        })
    }

    /// The files of every script in use, for the watcher: as the config names them (a
    /// ConfigMap's `name.rhai` symlink, not what it points to today).
    pub fn script_files(&self) -> Vec<PathBuf> {
        let table = self.table.load();
        let mut files: Vec<PathBuf> = table.scripts().map(|(_, s, _)| s.path.clone()).collect();
        files.sort();
        files.dedup();
        files
    }

    /// Recompiles scripts whose source changed. Each one that compiles is swapped in; one that
    /// does not keeps its running version. The new table replaces the old atomically, between
    /// two records: no record is lost or routed twice because of a reload. A script that
    /// cannot be read (deleted) or does not compile is reported once, not again at every
    /// later event, until its file changes.
    pub fn reload(&self) -> ReloadOutcome {
        let current = self.table.load();
        let mut rules = current.rules.clone();
        let (mut applied, mut errors) = (Vec::new(), Vec::new());
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        // In topic order, so the outcome lists scripts the same way on every reload.
        let mut scripted: Vec<_> = current.scripts().collect();
        scripted.sort_by_key(|(topic, ..)| *topic);
        for (topic, running, event) in scripted {
            let text = match std::fs::read_to_string(&running.path) {
                Ok(t) => t,
                Err(e) => {
                    if failed.insert(running.path.clone(), Failure::Unreadable) != Some(Failure::Unreadable) {
                        errors.push(format!("{}: cannot read: {e}", running.path.display()));
                    }
                    continue;
                }
            };
            if running.source == text {
                if failed.remove(&running.path).is_some() {
                    info!(script = %running.name, "Route script readable again, unchanged: its running version stays.");
                }
                continue;
            }
            if failed.get(&running.path).is_some_and(|f| *f == Failure::Rejected(text.clone())) {
                continue;
            }
            match Script::compile(&self.engine, &running.path, text.clone()) {
                Ok(s) => {
                    failed.remove(&running.path);
                    applied.push(s.name.clone());
                    rules.insert(topic.clone(), Rule::Script { script: Arc::new(s), event: event.clone() });
                }
                Err(e) => {
                    failed.insert(running.path.clone(), Failure::Rejected(text));
                    errors.push(e);
                }
            }
        }
        drop(failed);
        if !applied.is_empty() {
            self.table.store(Arc::new(Table { rules }));
            info!(scripts = ?applied, "Route scripts reloaded.");
            self.metrics.route_reloads.applied();
        }
        for e in &errors {
            warn!(error = %e, "Route script rejected; its previous version keeps running.");
        }
        if !errors.is_empty() {
            self.metrics.route_reloads.rejected();
        }
        match (applied.is_empty(), errors.is_empty()) {
            (true, true) => ReloadOutcome::Unchanged,
            (_, true) => ReloadOutcome::Applied(applied),
            (_, false) => ReloadOutcome::Rejected { applied, errors },
        }
    }

    /// What routes `topic`'s records: its script's name, or `default`.
    pub fn rule_name(&self, topic: &str) -> String {
        match self.table.load().rules.get(topic) {
            Some(Rule::Script { script, .. }) => script.name.clone(),
            _ => "default".to_owned(),
        }
    }

    /// Routes one record. Appends its notifications to `out` (so a batch reuses one buffer); a
    /// record that fails appends nothing, even if its script returned some good items first.
    pub fn route(&self, record: &Record<'_>, out: &mut Vec<Notification>) -> Result<(), RouteError> {
        self.route_with(&self.table.load(), record, out)
    }

    /// Routes a batch, appending its notifications to `out` in record order, and returns the
    /// records that produced none, by index. A batch large enough with a scripted record in it
    /// is split into contiguous parts routed on several threads (`routes.threads`), so scripts
    /// are not limited to one core; the result is the same as routing one record after another. The whole batch is
    /// routed by one version of the rules: a reload that lands meanwhile applies from the next.
    pub fn route_batch(&self, records: &[Record<'_>], out: &mut Vec<Notification>) -> Failures {
        let table = self.table.load_full();
        // The default rule costs about a microsecond a record: splitting it would cost the
        // routing threads' wake-ups and spinning more than it saves. Scripts are worth it.
        let scripted = records.iter().any(|r| matches!(table.rules.get(r.topic), Some(Rule::Script { .. })));
        let parts = if scripted { self.threads.min(records.len() / MIN_RECORDS_PER_THREAD) } else { 1 };
        let pool = if parts > 1 { self.pool.get_or_init(|| self.start_pool()).as_ref() } else { None };
        let Some(pool) = pool else {
            return self.route_each(&table, records, 0, out);
        };
        self.metrics.route_split_batches.increment(1);
        // Even parts: the first `extra` ones take one record more, so none is under the minimum.
        let (base, extra) = (records.len() / parts, records.len() % parts);
        let start = |part: usize| part * base + part.min(extra);
        let route_parts = || {
            pool.install(|| {
                (0..parts)
                    .into_par_iter()
                    .map(|part| {
                        let (first, end) = (start(part), start(part + 1));
                        let mut notifications = Vec::with_capacity(end - first);
                        let failed = self.route_each(&table, &records[first..end], first, &mut notifications);
                        (notifications, failed)
                    })
                    .collect::<Vec<(Vec<Notification>, Failures)>>()
            })
        };
        // The routing threads do the work while this thread waits: on the async runtime, its
        // other tasks move to other workers meanwhile instead of waiting behind the batch.
        let on_runtime_worker =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let routed = if on_runtime_worker { tokio::task::block_in_place(route_parts) } else { route_parts() };
        let mut failed = Vec::new();
        for (notifications, part_failed) in routed {
            out.extend(notifications);
            failed.extend(part_failed);
        }
        failed
    }

    fn route_each(&self, table: &Table, records: &[Record<'_>], first_index: usize, out: &mut Vec<Notification>) -> Failures {
        let mut failed = Vec::new();
        for (i, record) in records.iter().enumerate() {
            if let Err(e) = self.route_with(table, record, out) {
                failed.push((first_index + i, e));
            }
        }
        failed
    }

    fn route_with(&self, table: &Table, record: &Record<'_>, out: &mut Vec<Notification>) -> Result<(), RouteError> {
        let first = out.len();
        if let Err(e) = self.route_by_rule(table, record, out) {
            out.truncate(first);
            return Err(e);
        }
        if let Some(trace) = record.trace {
            for n in &mut out[first..] {
                n.trace = Some(trace.clone());
            }
        }
        let retain = self.retained.contains(record.topic);
        if retain || self.all_origins {
            for (i, n) in out[first..].iter_mut().enumerate() {
                // Groups and broadcasts are live only: a history is per user.
                n.retain = retain && n.to.user().is_some();
                n.origin = Some(format!("{}/{}/{}/{i}", record.topic, record.partition, record.offset).into());
            }
        }
        Ok(())
    }

    fn start_pool(&self) -> Option<rayon::ThreadPool> {
        let built = rayon::ThreadPoolBuilder::new().num_threads(self.threads).thread_name(|i| format!("herald-route-{i}")).build();
        built.inspect_err(|e| warn!(error = %e, "Could not start the routing threads; routing on the consumer's task.")).ok()
    }

    fn route_by_rule(&self, table: &Table, record: &Record<'_>, out: &mut Vec<Notification>) -> Result<(), RouteError> {
        let fallback;
        let rule = match table.rules.get(record.topic) {
            Some(rule) => rule,
            None => {
                fallback = Rule::Default { to: DefaultAudience::User(self.fallback_user_id.clone()), event: self.default_event.clone() };
                &fallback
            }
        };
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(crate::clock::unix_ms);
        match rule {
            Rule::Default { to, event } => route_by_default(record, to, event, timestamp_ms, out),
            Rule::Script { script, event } => {
                let result = script.call(&self.engine, &self.limits, record).map_err(|e| script_error(script, e))?;
                let before = out.len();
                returned::collect(result, event, record, timestamp_ms, out)
                    .map_err(|e| script_error(script, format!("{}: {e}", script.path.display())))?;
                if out.len() == before {
                    return Err(RouteError {
                        reason: DropReason::Filtered,
                        detail: "the route script returned no notification".into(),
                        script: Some(script.name.clone()),
                    });
                }
                Ok(())
            }
        }
    }
}

fn script_error(script: &Script, detail: String) -> RouteError {
    RouteError { reason: DropReason::ScriptError, detail, script: Some(script.name.clone()) }
}

fn route_by_default(
    record: &Record<'_>,
    to: &DefaultAudience,
    event: &Arc<str>,
    timestamp_ms: i64,
    out: &mut Vec<Notification>,
) -> Result<(), RouteError> {
    let raw = parse_value(record)?;
    let notify = |to| Notification::new(to, event.clone(), raw.to_owned(), timestamp_ms);
    match to {
        DefaultAudience::Broadcast => out.push(notify(Audience::Broadcast)),
        DefaultAudience::User(source) => {
            let user = match source {
                UserIdSource::Key => record_key(record, "user id")?,
                UserIdSource::Pointer(pointer) => {
                    let leaf = leaf_at(raw, pointer, "user id")?;
                    pointer::user_id(leaf).ok_or_else(|| {
                        RouteError::new(DropReason::BadUserId, format!("user id at {pointer} is not a non-empty string or an integer"))
                    })?
                }
            };
            out.push(notify(Audience::User(user)));
        }
        DefaultAudience::Groups(source) => {
            let groups = match source {
                UserIdSource::Key => vec![record_key(record, "group")?],
                UserIdSource::Pointer(pointer) => pointer::groups(leaf_at(raw, pointer, "group")?).ok_or_else(|| {
                    RouteError::new(
                        DropReason::BadUserId,
                        format!("group at {pointer} is not a non-empty string, an integer, or a non-empty array of them"),
                    )
                })?,
            };
            out.extend(Audience::groups(groups).into_iter().map(notify));
        }
    }
    Ok(())
}

/// The record key as a user id or group name.
fn record_key(record: &Record<'_>, what: &str) -> Result<String, RouteError> {
    let key = record.key.ok_or_else(|| RouteError::new(DropReason::NoUserId, format!("record has no key (the {what})")))?;
    match std::str::from_utf8(key) {
        Ok(k) if !k.is_empty() => Ok(k.to_owned()),
        _ => Err(RouteError::new(DropReason::BadUserId, "key is empty or not UTF-8")),
    }
}

fn leaf_at<'a>(raw: &'a RawValue, pointer: &str, what: &str) -> Result<&'a RawValue, RouteError> {
    pointer::lookup(raw, pointer)
        .map_err(|e| RouteError::new(DropReason::BadJson, format!("value is not JSON: {e}")))?
        .ok_or_else(|| RouteError::new(DropReason::NoUserId, format!("no {what} at {pointer}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(yaml: &str) -> Router {
        let config = Config::from_yaml(&format!("auth: {{jwt: {{secret: s}}}}\n{yaml}"), ".".into(), &|_| None).unwrap();
        Router::new(&config, Metrics::detached()).unwrap()
    }

    fn record<'a>(topic: &'a str, key: Option<&'a [u8]>, value: &'a [u8]) -> Record<'a> {
        Record { topic, partition: 0, offset: 7, key, value: Some(value), timestamp_ms: Some(1000), headers: &[], trace: None }
    }

    fn route(r: &Router, rec: Record<'_>) -> Result<Vec<Notification>, RouteError> {
        let mut out = Vec::new();
        r.route(&rec, &mut out).map(|()| out)
    }

    #[test]
    fn default_rule_takes_user_id_from_pointer_and_keeps_the_whole_value() {
        let r = router("");
        let value = br#"{"userId":"u42","type":"order.shipped","body":{"id":1}}"#;
        let n = route(&r, record("user-notifications", None, value)).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].to, Audience::User("u42".into()));
        assert_eq!(&*n[0].event, "notification");
        assert_eq!(n[0].payload.get(), std::str::from_utf8(value).unwrap());
        assert_eq!(n[0].timestamp_ms, 1000);
    }

    #[test]
    fn numeric_user_ids_and_nested_pointers_work() {
        let r = router("routes: {user_id: /to/id}");
        let n = route(&r, record("user-notifications", None, br#"{"to":{"id":42}}"#)).unwrap();
        assert_eq!(n[0].to, Audience::User("42".into()));
    }

    #[test]
    fn key_rule_and_per_topic_event() {
        let r = router("kafka: {topics: [{name: t, user_id: key, event: alert}]}");
        let n = route(&r, record("t", Some(b"u7"), br#"{"x":1}"#)).unwrap();
        assert_eq!((n[0].to.user(), &*n[0].event), (Some("u7"), "alert"));
        let e = route(&r, record("t", None, br#"{"x":1}"#)).unwrap_err();
        assert_eq!(e.reason, DropReason::NoUserId);
        let e = route(&r, record("t", Some(&[0xff, 0xfe]), br#"{"x":1}"#)).unwrap_err();
        assert_eq!(e.reason, DropReason::BadUserId);
    }

    #[test]
    fn retained_notifications_carry_their_origin() {
        let r = router("kafka: {topics: [{name: t, retain: true}, u]}");
        let n = route(&r, record("t", None, br#"{"userId":"a"}"#)).unwrap();
        assert!(n[0].retain);
        assert_eq!(n[0].origin.as_deref(), Some("t/0/7/0"), "topic/partition/offset/index");
        let n = route(&r, record("u", None, br#"{"userId":"a"}"#)).unwrap();
        assert!(!n[0].retain && n[0].origin.is_none());
    }

    #[test]
    fn bad_records_are_classified() {
        let r = router("");
        let reason = |v: &[u8]| route(&r, record("user-notifications", None, v)).unwrap_err().reason;
        assert_eq!(reason(b""), DropReason::Empty);
        assert_eq!(reason(b"not json"), DropReason::BadJson);
        assert_eq!(reason(&[0xff, 0x00]), DropReason::BadJson);
        assert_eq!(reason(br#"{"userId":"u1""#), DropReason::BadJson);
        assert_eq!(reason(br#"{"other":1}"#), DropReason::NoUserId);
        assert_eq!(reason(br#"{"userId":null}"#), DropReason::BadUserId);
        assert_eq!(reason(br#"{"userId":""}"#), DropReason::BadUserId);
        assert_eq!(reason(br#"{"userId":{"a":1}}"#), DropReason::BadUserId);
        assert_eq!(reason(br#"[1,2]"#), DropReason::NoUserId);
        assert_eq!(reason(br#"{"userId":"u","junk":[1,}"#), DropReason::BadJson, "the whole value is validated");
    }
}

#[cfg(test)]
mod script_tests {
    use super::*;
    use std::path::Path;

    /// A router whose topic `t` runs `source` (written to a temp dir that lives as long as it).
    fn scripted(source: &str) -> (Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.rhai"), source).unwrap();
        // A time budget no test script reaches: a runaway is stopped by the operations limit.
        let yaml = "auth: {jwt: {secret: s}}\nkafka: {topics: [{name: t, script: t.rhai}]}\nroutes: {script_timeout_ms: 60000}";
        let config = Config::from_yaml(yaml, dir.path().into(), &|_| None).unwrap();
        (Router::new(&config, Metrics::detached()).unwrap(), dir)
    }

    fn route(r: &Router, value: &str) -> Result<Vec<Notification>, RouteError> {
        let record = Record {
            topic: "t",
            partition: 0,
            offset: 1,
            key: Some(b"k1"),
            value: Some(value.as_bytes()),
            timestamp_ms: Some(5),
            headers: &[("h", b"v")],
            trace: None,
        };
        let mut out = Vec::new();
        r.route(&record, &mut out).map(|()| out)
    }

    fn summary(n: &[Notification]) -> Vec<(String, String, String)> {
        n.iter().map(|n| (returned::tests::label(&n.to), n.event.to_string(), n.payload.get().to_owned())).collect()
    }

    #[test]
    fn each_return_shape() {
        let (r, _d) = scripted("fn route(r) { #{ user_id: r.value.u, payload: #{ x: r.value.x, h: r.headers.h, k: r.key } } }");
        assert_eq!(
            summary(&route(&r, r#"{"u":"a","x":1}"#).unwrap()),
            [("a".into(), "notification".into(), r#"{"h":"v","k":"k1","x":1}"#.into())]
        );

        let (r, _d) = scripted("fn route(r) { #{ user_id: 42, event: \"ping\" } }");
        assert_eq!(
            summary(&route(&r, r#"{"raw":true}"#).unwrap()),
            [("42".into(), "ping".into(), r#"{"raw":true}"#.into())],
            "no payload: the value passes through"
        );

        let (r, _d) = scripted("fn route(r) { [#{ user_id: \"a\", payload: 1 }, (), #{ user_id: \"b\", payload: [2] }] }");
        assert_eq!(
            summary(&route(&r, "{}").unwrap()),
            [("a".into(), "notification".into(), "1".into()), ("b".into(), "notification".into(), "[2]".into())]
        );

        let (r, _d) = scripted("fn route(r) { () }");
        assert_eq!(route(&r, "{}").unwrap_err().reason, DropReason::Filtered);
        let (r, _d) = scripted("fn route(r) { [] }");
        assert_eq!(route(&r, "{}").unwrap_err().reason, DropReason::Filtered);
    }

    #[test]
    fn each_contract_violation_is_a_script_error_with_a_message() {
        for (source, expected) in [
            ("fn route(r) { 42 }", "not i64"),
            ("fn route(r) { #{ payload: 1 } }", "no `user_id`"),
            ("fn route(r) { #{ user_id: \"\" } }", "non-empty string"),
            ("fn route(r) { #{ user_id: 1.5 } }", "non-empty string"),
            ("fn route(r) { #{ user_id: \"a\", event: 3 } }", "`event` must be a string"),
            ("fn route(r) { #{ user_id: \"a\", userId: \"b\" } }", "unexpected key `userId`"),
            ("fn route(r) { [#{ user_id: \"a\" }, 7] }", "item 1 of the returned array"),
            ("fn route(r) { throw \"nope\" }", "t.rhai:1:"),
            ("fn route(r) { loop {} }", "exceeded 1000000 operations"),
        ] {
            let (r, _d) = scripted(source);
            let e = route(&r, "{}").unwrap_err();
            assert_eq!(e.reason, DropReason::ScriptError, "{source}");
            assert!(e.detail.contains(expected), "{source}: {}", e.detail);
            assert_eq!(e.script.as_deref(), Some("t.rhai"));
        }
        // A failing record adds nothing, not even the good items before the bad one.
        let (r, _d) = scripted("fn route(r) { [#{ user_id: \"a\" }, 7] }");
        let mut out = Vec::new();
        let record =
            Record { topic: "t", partition: 0, offset: 1, key: None, value: Some(b"{}"), timestamp_ms: None, headers: &[], trace: None };
        assert!(r.route(&record, &mut out).is_err());
        assert!(out.is_empty(), "{:?}", summary(&out));
    }

    #[test]
    fn each_notification_of_a_retained_record_has_its_own_origin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.rhai"), r#"fn route(r) { [#{ user_id: "a" }, #{ user_id: "b" }] }"#).unwrap();
        let yaml = "auth: {jwt: {secret: s}}\nkafka: {topics: [{name: t, script: t.rhai, retain: true}]}";
        let r = Router::new(&Config::from_yaml(yaml, dir.path().into(), &|_| None).unwrap(), Metrics::detached()).unwrap();
        let n = route(&r, "{}").unwrap();
        let origins: Vec<_> = n.iter().map(|n| n.origin.as_deref()).collect();
        assert_eq!(origins, [Some("t/0/1/0"), Some("t/0/1/1")]);
    }

    #[test]
    fn a_batch_routed_on_several_threads_equals_routing_one_by_one() {
        // Records that notify one user, two users, nobody (filtered), or fail (a throw, or a
        // value that is not JSON and so reaches the script as a string without `kind`), so
        // both the notifications and the failures must stay in order.
        let source = r#"fn route(r) {
            let v = r.value;
            if v.kind == "skip" { return (); }
            if v.kind == "fail" { throw "failing on purpose"; }
            if v.kind == "two" { return [#{ user_id: v.u, payload: r.offset }, #{ user_id: v.u + "-b", payload: r.offset }]; }
            #{ user_id: v.u, payload: r.offset }
        }"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.rhai"), source).unwrap();
        let router_with = |threads: usize| {
            let yaml =
                format!("auth: {{jwt: {{secret: s}}}}\nkafka: {{topics: [{{name: t, script: t.rhai}}]}}\nroutes: {{threads: {threads}}}");
            Router::new(&Config::from_yaml(&yaml, dir.path().into(), &|_| None).unwrap(), Metrics::detached()).unwrap()
        };
        // Not a multiple of the thread count: the parts are uneven (251, 250, 250, 250).
        const RECORDS: usize = 1001;
        let values: Vec<String> = (0..RECORDS)
            .map(|i| match i % 7 {
                0 => r#"{"kind":"skip"}"#.to_owned(),
                3 => r#"{"kind":"fail"}"#.to_owned(),
                5 => "not json".to_owned(),
                6 => format!(r#"{{"kind":"two","u":"u{i}"}}"#),
                _ => format!(r#"{{"kind":"one","u":"u{i}"}}"#),
            })
            .collect();
        let records: Vec<Record<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                topic: "t",
                partition: 0,
                offset: i as i64,
                key: None,
                value: Some(v.as_bytes()),
                timestamp_ms: Some(1),
                headers: &[],
                trace: None,
            })
            .collect();
        let failures = |failed: Failures| failed.into_iter().map(|(i, e)| (i, e.reason)).collect::<Vec<_>>();

        let (one, many) = (router_with(1), router_with(4));
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        let expected_failed = failures(one.route_batch(&records, &mut expected));
        let got_failed = failures(many.route_batch(&records, &mut got));
        assert!(many.pool.get().is_some_and(Option::is_some), "{RECORDS} records on 4 threads are split");
        assert!(one.pool.get().is_none(), "one thread never starts a pool");
        assert_eq!(summary(&got), summary(&expected));
        assert_eq!(got_failed, expected_failed);
        // And both agree with what the script says, record by record.
        assert_eq!(expected.len(), (0..RECORDS).map(|i| [0, 1, 1, 0, 1, 0, 2][i % 7]).sum::<usize>());
        assert_eq!(expected[0].to.user(), Some("u1"));
        assert_eq!(expected_failed.len(), (0..RECORDS).filter(|i| [0, 3, 5].contains(&(i % 7))).count());
        assert_eq!(expected_failed[..3], [(0, DropReason::Filtered), (3, DropReason::ScriptError), (5, DropReason::ScriptError)]);

        // On the async runtime the same, with the runtime's worker handing its other tasks on
        // while the routing threads work (a current-thread runtime just waits).
        for multi in [true, false] {
            let mut builder =
                if multi { tokio::runtime::Builder::new_multi_thread() } else { tokio::runtime::Builder::new_current_thread() };
            let runtime = builder.worker_threads(2).build().unwrap();
            let (mut on_runtime, failed) = (Vec::new(), runtime.block_on(async { failures(many.route_batch(&records, &mut Vec::new())) }));
            runtime.block_on(async { many.route_batch(&records, &mut on_runtime) });
            assert_eq!((summary(&on_runtime), failed), (summary(&expected), expected_failed.clone()), "multi-thread: {multi}");
        }

        // A small batch is routed on the calling thread.
        let small = router_with(4);
        let mut out = Vec::new();
        small.route_batch(&records[..100], &mut out);
        assert!(small.pool.get().is_none(), "100 records are below two parts of {MIN_RECORDS_PER_THREAD}");
    }

    #[test]
    fn compile_errors_are_reported_with_the_topic_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.rhai"), "fn route(r) {\n  let x = ;\n}").unwrap();
        let yaml = "auth: {jwt: {secret: s}}\nkafka: {topics: [a, {name: b, script: bad.rhai}, {name: c, script: missing.rhai}]}";
        let config = Config::from_yaml(yaml, dir.path().into(), &|_| None).unwrap();
        let errors = Router::new(&config, Metrics::detached()).err().unwrap().0;
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].path, "kafka.topics[1].script");
        assert!(errors[0].message.contains("bad.rhai:2:"), "{}", errors[0].message);
        assert_eq!(errors[1].path, "kafka.topics[2].script");
        assert!(errors[1].message.contains("cannot read"), "{}", errors[1].message);
    }

    #[test]
    fn reload_swaps_good_scripts_and_keeps_the_old_one_on_errors() {
        let (r, dir) = scripted("fn route(r) { #{ user_id: \"old\" } }");
        assert_eq!(r.reload(), ReloadOutcome::Unchanged);
        std::fs::write(dir.path().join("t.rhai"), "fn route(r) { #{ user_id: \"new\" } }").unwrap();
        assert_eq!(r.reload(), ReloadOutcome::Applied(vec!["t.rhai".into()]));
        assert_eq!(route(&r, "{}").unwrap()[0].to.user(), Some("new"));
        std::fs::write(dir.path().join("t.rhai"), "fn route(r) { #{ user_id: ").unwrap();
        assert!(matches!(r.reload(), ReloadOutcome::Rejected { ref applied, .. } if applied.is_empty()));
        assert_eq!(route(&r, "{}").unwrap()[0].to.user(), Some("new"), "the running version stays");
    }

    #[test]
    fn shipped_scripts_compile_and_route_their_examples() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = Config::load(&root.join("config.yaml")).unwrap();
        let r = Router::new(&config, Metrics::detached()).unwrap();
        let mut shipped: Vec<_> =
            std::fs::read_dir(root.join("routes")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        shipped.retain(|name| name.ends_with(".rhai")); // not the kustomization beside them
        shipped.sort();
        assert_eq!(shipped, ["team-notifications.rhai", "user-notifications.rhai"], "every shipped script is covered here");

        let run = |topic: &str, value: &str| {
            let record = Record {
                topic,
                partition: 0,
                offset: 0,
                key: None,
                value: Some(value.as_bytes()),
                timestamp_ms: Some(1),
                headers: &[],
                trace: None,
            };
            let mut out = Vec::new();
            r.route(&record, &mut out).map(|()| summary(&out))
        };
        assert_eq!(
            run("user-notifications", r#"{"userId":"u42","type":"t","_trace":"x","internal":{"a":1},"body":{"b":2}}"#).unwrap(),
            [("u42".into(), "notification".into(), r#"{"body":{"b":2},"type":"t","userId":"u42"}"#.into())]
        );
        assert_eq!(run("user-notifications", r#"{"other":1}"#).unwrap_err().reason, DropReason::Filtered);
        let team = run("team-notifications", r#"{"team":"core","members":["u1","u2"],"author":"u1","type":"c","body":{}}"#).unwrap();
        assert_eq!(team.iter().map(|n| (n.0.as_str(), n.1.as_str())).collect::<Vec<_>>(), [("u2", "team_notification")]);
    }
}
