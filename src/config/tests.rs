//! Tests of config validation: defaults, every error path, env substitution and overrides.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(yaml: &str) -> Result<Config, ConfigErrors> {
    Config::from_yaml(yaml, PathBuf::from("."), &no_env)
}

fn error_paths(yaml: &str) -> Vec<String> {
    parse(yaml).unwrap_err().0.into_iter().map(|e| e.path).collect()
}

const MINIMAL: &str = "auth: {jwt: {secret: s3cret}}\n";

#[test]
fn defaults_fill_a_minimal_config() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:3000");
    assert_eq!(c.server.event, "notification");
    assert_eq!(c.server.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.server.write_timeout, Duration::from_secs(30));
    assert_eq!(c.kafka.brokers, Brokers::Embedded);
    assert_eq!(c.kafka.group_id, "herald");
    assert_eq!(c.kafka.topics.len(), 1);
    assert_eq!(c.kafka.topics[0].name, "user-notifications");
    assert!(c.redis.is_none());
    assert_eq!(c.auth.jwt.user_id_claim, "sub");
    assert_eq!(c.routes.user_id, UserIdSource::Pointer("/userId".into()));
}

#[test]
fn shipped_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::from_yaml(&text, path.parent().unwrap().into(), &no_env).unwrap();
    assert!(c.is_embedded(), "the shipped config runs on the embedded broker");
    assert!(c.redis.is_none(), "the shipped config needs no Redis");
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let yaml = r#"
server:
  listen: "not an address"
  event: connect
  max_buffer_size: "lots"
  colour: blue
kafka:
  brokers: 42
  topics: ["ok", "bad topic!", {script: x.rhai}]
  options: {group.id: x, fetch.wait.max.ms: 10, nested: {a: 1}}
redis:
  url: http://nope
  channel: "herald:{user}"
auth:
  jwt:
    algorithms: [HS256, XX999]
routes:
  user_id: userId
log:
  format: xml
extra: 1
"#;
    let paths = error_paths(yaml);
    for expected in [
        "extra",
        "server.colour",
        "server.listen",
        "server.event",
        "server.max_buffer_size",
        "kafka.brokers",
        "kafka.topics[1]",
        "kafka.topics[2].name",
        "kafka.options.nested",
        "kafka.options.group.id",
        "redis.url",
        "redis.channel",
        "auth.jwt.algorithms[1]",
        "auth.jwt.secret",
        "routes.user_id",
        "log.format",
    ] {
        assert!(paths.iter().any(|p| p == expected), "missing {expected} in {paths:?}");
    }
}

#[test]
fn invalid_yaml_is_reported() {
    let errs = parse("server: [unclosed").unwrap_err();
    assert!(errs.0[0].message.starts_with("invalid YAML"), "{errs}");
}

#[test]
fn out_of_range_values_are_refused() {
    assert_eq!(error_paths("server: {ping_interval_secs: 0}\nauth: {jwt: {secret: s}}"), ["server.ping_interval_secs"]);
    assert_eq!(error_paths("server: {connect_timeout_ms: 5}\nauth: {jwt: {secret: s}}"), ["server.connect_timeout_ms"]);
    assert_eq!(error_paths("server: {write_timeout_ms: 0}\nauth: {jwt: {secret: s}}"), ["server.write_timeout_ms"]);
    assert_eq!(error_paths("server: {max_payload_bytes: 10}\nauth: {jwt: {secret: s}}"), ["server.max_payload_bytes"]);
    assert_eq!(error_paths("kafka: {max_batch: 0}\nauth: {jwt: {secret: s}}"), ["kafka.max_batch"]);
}

#[test]
fn topics_accept_names_and_mappings() {
    let c = parse("kafka: {topics: [a, {name: b, user_id: key, event: ping, script: b.rhai}]}\nauth: {jwt: {secret: s}}").unwrap();
    assert_eq!(c.kafka.topics[0].name, "a");
    let b = &c.kafka.topics[1];
    assert_eq!(b.user_id, Some(UserIdSource::Key));
    assert_eq!(b.event.as_deref(), Some("ping"));
    assert_eq!(b.script.as_deref(), Some(Path::new("b.rhai")));
    assert_eq!(error_paths("kafka: {topics: [a, a]}\nauth: {jwt: {secret: s}}"), ["kafka.topics[1]"]);
}

#[test]
fn brokers_accept_a_string_or_a_list() {
    let c = parse("kafka: {brokers: [\"k1:9092\", \"k2:9092\"]}\nauth: {jwt: {secret: s}}").unwrap();
    assert_eq!(c.kafka.brokers, Brokers::List("k1:9092,k2:9092".into()));
    let c = parse("kafka: {brokers: \"k1:9092\"}\nauth: {jwt: {secret: s}}").unwrap();
    assert_eq!(c.kafka.brokers, Brokers::List("k1:9092".into()));
}

#[test]
fn env_substitution_and_overrides_apply() {
    let env = |name: &str| match name {
        "SECRET" => Some("from-env".to_owned()),
        "HERALD_KAFKA_BROKERS" => Some("k:9092".to_owned()),
        "HERALD_LISTEN" => Some("127.0.0.1:4000".to_owned()),
        "HERALD_REDIS_URL" => Some("redis://127.0.0.1:6379".to_owned()),
        _ => None,
    };
    let c = Config::from_yaml("auth: {jwt: {secret: \"${SECRET}\"}}\nserver: {ping_timeout_secs: \"${T:-7}\"}", ".".into(), &env).unwrap();
    assert_eq!(c.auth.jwt.secret.as_deref(), Some("from-env"));
    assert_eq!(c.server.ping_timeout, Duration::from_secs(7));
    assert_eq!(c.kafka.brokers, Brokers::List("k:9092".into()));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(c.redis.unwrap().url, "redis://127.0.0.1:6379");
}

#[test]
fn a_missing_secret_is_refused() {
    assert_eq!(error_paths(""), ["auth.jwt.secret"]);
}

#[test]
fn channel_pattern_renders_and_parses_user_ids() {
    let p = ChannelPattern::parse("app:{user_id}:n").unwrap();
    assert_eq!(p.channel("u42"), "app:u42:n");
    assert_eq!(p.user_id("app:u42:n"), Some("u42"));
    assert_eq!(p.user_id("app::n"), None);
    assert_eq!(p.user_id("other:u42:n"), None);
    assert!(ChannelPattern::parse("no-placeholder").is_err());
    assert!(ChannelPattern::parse("{user_id}{user_id}").is_err());
    assert!(ChannelPattern::parse("a*:{user_id}").is_err());
}

#[test]
fn the_demo_page_defaults_to_the_embedded_mode_only() {
    assert_eq!(parse(MINIMAL).unwrap().demo.enabled, Some(DemoMode::IfBundled), "embedded: on, a missing bundle only warns");
    let production = format!("{MINIMAL}kafka: {{brokers: \"kafka:9092\"}}\n");
    assert_eq!(parse(&production).unwrap().demo.enabled, None);
    let opted_out = format!("{MINIMAL}demo: {{enabled: false}}\n");
    assert_eq!(parse(&opted_out).unwrap().demo.enabled, None);
}

#[test]
fn an_enabled_demo_needs_its_client_bundle() {
    let missing = format!("{MINIMAL}demo: {{enabled: true, client_bundle: /nonexistent/socket.io.min.js}}\n");
    assert_eq!(error_paths(&missing), ["demo.client_bundle"]);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("socket.io.min.js");
    std::fs::write(&bundle, "/* bundle */").unwrap();
    let present = format!("{MINIMAL}demo: {{enabled: true, client_bundle: {}}}\n", bundle.display());
    assert_eq!(parse(&present).unwrap().demo.enabled, Some(DemoMode::Required));
}

#[test]
fn a_cluster_url_selects_sharded_pubsub_with_hash_tagged_names() {
    let cluster = parse(&format!("{MINIMAL}redis: {{url: \"redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001\"}}\n")).unwrap();
    let redis = cluster.redis.unwrap();
    assert!(redis.is_cluster() && redis.sharded_pubsub);
    assert_eq!(redis.channel.hash_tagged().channel("u42"), "herald:user:{u42}");
    assert_eq!(redis.channel.hash_tagged().user_id("herald:user:{u42}"), Some("u42"));
    let single = parse(&format!("{MINIMAL}redis: {{url: \"redis://127.0.0.1\"}}\n")).unwrap();
    assert!(!single.redis.unwrap().sharded_pubsub, "classic Pub/Sub unless asked for");
    let braces = format!("{MINIMAL}redis: {{url: \"redis://h\", sharded_pubsub: true, channel: \"n{{x}}:{{user_id}}\"}}\n");
    assert_eq!(error_paths(&braces), ["redis.channel"], "braces would change the hash tag");
    assert_eq!(error_paths(&format!("{MINIMAL}redis: {{url: \"http://h\"}}\n")), ["redis.url"]);
}

#[test]
fn a_sentinel_url_is_read_and_a_broken_url_or_tls_section_is_refused_by_path() {
    let c = parse(&format!("{MINIMAL}redis: {{url: \"redis-sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster\"}}\n")).unwrap();
    let redis = c.redis.unwrap();
    assert!(!redis.is_cluster() && !redis.sharded_pubsub && redis.tls.is_none());
    match redis.address.target {
        RedisTarget::Sentinel { sentinels, master, .. } => assert_eq!((sentinels.len(), master.as_str()), (2, "mymaster")),
        other => panic!("{other:?}"),
    }
    let cluster = parse(&format!("{MINIMAL}redis: {{url: \"redis-cluster://h:1\"}}\n")).unwrap().redis.unwrap();
    assert!(cluster.is_cluster() && cluster.sharded_pubsub);
    for url in ["redis-sentinel://h:1,h:2", "redis://h:port", "redis-cluster://h:1/3", "redis://h?x=1"] {
        assert_eq!(error_paths(&format!("{MINIMAL}redis: {{url: \"{url}\"}}\n")), ["redis.url"], "{url}");
    }
    // TLS settings for a URL without TLS, a CA file that is not there, half of mutual TLS.
    assert_eq!(error_paths(&format!("{MINIMAL}redis: {{url: \"redis://h\", tls: {{ca_file: /x}}}}\n")), ["redis.tls"]);
    assert_eq!(
        error_paths(&format!("{MINIMAL}redis: {{url: \"rediss://h\", tls: {{ca_file: /nonexistent.pem}}}}\n")),
        ["redis.tls.ca_file"]
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let yaml = format!("{MINIMAL}redis: {{url: \"rediss://h\", tls: {{ca_file: {}, cert_file: {}}}}}\n", empty.display(), empty.display());
    assert_eq!(error_paths(&yaml), ["redis.tls.ca_file", "redis.tls.key_file"]);
    assert!(parse(&format!("{MINIMAL}redis: {{url: \"rediss://h\"}}\n")).unwrap().redis.unwrap().tls.is_some(), "system roots");
}

#[test]
fn slow_client_policy_defaults_to_drop_and_refuses_unknown_words() {
    assert_eq!(parse(MINIMAL).unwrap().server.slow_client, SlowClient::Drop);
    let c = parse("server: {slow_client: disconnect}\nauth: {jwt: {secret: s}}").unwrap();
    assert_eq!(c.server.slow_client, SlowClient::Disconnect);
    let errs = parse("server: {slow_client: kick}\nauth: {jwt: {secret: s}}").unwrap_err();
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "server.slow_client");
    assert!(errs.0[0].message.contains("`drop` or `disconnect`"), "{errs}");
}

#[test]
fn output_topics_must_be_valid_and_not_consumed() {
    let c = parse(&format!("{MINIMAL}kafka: {{offline_topic: herald-offline, dead_letter_topic: dlq}}\n")).unwrap();
    assert_eq!((c.kafka.offline_topic.as_deref(), c.kafka.dead_letter_topic.as_deref()), (Some("herald-offline"), Some("dlq")));
    assert_eq!(parse(MINIMAL).unwrap().kafka.offline_topic, None);
    let bad = format!("{MINIMAL}kafka: {{offline_topic: user-notifications, dead_letter_topic: \"no spaces\"}}\n");
    assert_eq!(error_paths(&bad), ["kafka.dead_letter_topic", "kafka.offline_topic"]);
    let per_topic =
        parse(&format!("{MINIMAL}kafka: {{offline_topic: all-off, topics: [a, {{name: b, offline_topic: b-off}}]}}\n")).unwrap();
    assert_eq!((per_topic.kafka.offline_topic_for("a"), per_topic.kafka.offline_topic_for("b")), (Some("all-off"), Some("b-off")));
    assert_eq!(per_topic.kafka.output_topics(), ["all-off", "b-off"]);
    let consumed = format!("{MINIMAL}kafka: {{topics: [a, {{name: b, offline_topic: a}}]}}\n");
    assert_eq!(error_paths(&consumed), ["kafka.topics[1].offline_topic"]);
}

#[test]
fn groups_and_broadcast_settings_are_read_and_checked() {
    let c = parse(
        "auth: {jwt: {secret: s, groups_claim: teams}, check: {url: 'http://c', groups_pointer: /g}, max_groups_per_socket: 5}\n\
         kafka: {topics: [{name: t, group: /team}, {name: all, broadcast: true}]}\nredis: {url: 'redis://h:1'}",
    )
    .unwrap();
    assert_eq!(c.auth.jwt.groups_claim.as_deref(), Some("teams"));
    assert_eq!(c.auth.check.unwrap().groups_pointer.as_deref(), Some("/g"));
    assert_eq!(c.auth.max_groups_per_socket, 5);
    assert_eq!(c.kafka.topics[0].group, Some(UserIdSource::Pointer("/team".into())));
    assert!(c.kafka.topics[1].broadcast);
    let redis = c.redis.unwrap();
    assert_eq!((redis.group_channel.channel("g"), redis.broadcast_channel.as_str()), ("herald:group:g".into(), "herald:broadcast"));

    let paths = error_paths(
        "auth: {jwt: {secret: s}, check: {url: 'http://c', groups_pointer: g}, max_groups_per_socket: 0}\n\
         kafka: {topics: [{name: a, user_id: key, group: /g}, {name: b, script: b.rhai, broadcast: true}, {name: c, group: team}]}\n\
         redis: {url: 'redis://h:1', channel: 'n:{user_id}', group_channel: 'n:g:{group}', broadcast_channel: 'n:all'}",
    );
    assert_eq!(
        paths,
        [
            "kafka.topics[0]",
            "kafka.topics[1]",
            "kafka.topics[2].group",
            "redis.group_channel",
            "redis.broadcast_channel",
            "auth.check.groups_pointer",
            "auth.max_groups_per_socket",
        ]
    );
    assert_eq!(error_paths("auth: {jwt: {secret: s}}\nredis: {url: 'redis://h:1', group_channel: 'g:{user_id}'}"), ["redis.group_channel"]);
}

/// Every key the readers look at, with every optional part present.
fn every_key() -> Vec<String> {
    let yaml = "auth: {jwt: {secret: s}, check: {url: 'http://127.0.0.1:1/'}}\nkafka: {topics: [{name: t}], embedded: {}}\nredis: {url: 'redis://127.0.0.1'}\n";
    let root: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    let mut walk = Walk::default();
    Config::read(&root, PathBuf::from("."), &mut walk);
    walk.keys().to_vec()
}

#[test]
fn keys_are_named_once_where_they_are_read_and_anything_else_is_unknown() {
    let yaml = "server: {listne: 1}\nkafka: {topics: [{name: t, scirpt: x.rhai}]}\nauth: {jwt: {secret: s, sceret: t}}\nnope: 1\n";
    let errors = parse(yaml).unwrap_err().0;
    let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["server.listne", "kafka.topics[0].scirpt", "auth.jwt.sceret", "nope"]);
    assert!(errors[0].message.starts_with("unknown key (known keys: listen, event, ping_interval_secs,"), "{}", errors[0].message);
    // A topic without a name is told so, and its other keys are still known.
    let errors = parse("kafka: {topics: [{script: x.rhai, retain: true}]}\nauth: {jwt: {secret: s}}\n").unwrap_err().0;
    assert_eq!(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(), ["kafka.topics[0].name: is required"]);
    assert!(every_key().len() > 80, "{:?}", every_key());
}

#[test]
fn the_annotated_config_and_the_reference_table_name_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let annotated = std::fs::read_to_string(root.join("config.yaml")).unwrap();
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    // Every word inside `code` in the reference table (the README links it): rows name keys as
    // `server.listen`, `a` / `b` or `{name, script}`.
    let documented: std::collections::HashSet<&str> =
        reference.split('`').skip(1).step_by(2).flat_map(|code| code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))).collect();
    let keys = every_key();
    let mut undocumented = Vec::new();
    for path in &keys {
        let is_section = keys.iter().any(|k| k.starts_with(&format!("{path}.")));
        let leaf = path.rsplit(['.', ']']).next().unwrap();
        if !annotated.contains(&format!("{leaf}:")) || !is_section && !documented.contains(leaf) {
            undocumented.push(path);
        }
    }
    assert!(undocumented.is_empty(), "keys missing from config.yaml or docs/configuration.md: {undocumented:?}");
}

#[test]
fn kafka_security_that_cannot_work_is_refused_by_path() {
    let with = |options: &str| -> Vec<String> {
        let yaml = format!("{MINIMAL}kafka: {{options: {{{options}}}}}\n");
        parse(&yaml).err().map(|e| e.0.into_iter().map(|e| e.path).collect()).unwrap_or_default()
    };
    assert_eq!(with("security.protocol: SASL_SSL"), ["kafka.options.sasl.mechanism"], "librdkafka would pick GSSAPI");
    assert_eq!(with("security.protocol: SASL_SSL, sasl.mechanism: GSSAPI"), ["kafka.options.sasl.mechanism"]);
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
        assert!(with(&format!("security.protocol: SASL_SSL, sasl.mechanism: {mechanism}")).is_empty(), "{mechanism} is built in");
    }
    let oidc = with("security.protocol: SASL_SSL, sasl.mechanism: OAUTHBEARER, sasl.oauthbearer.method: oidc");
    assert_eq!(oidc.is_empty(), cfg!(feature = "oidc"), "{oidc:?}");
}

#[test]
fn telemetry_is_off_by_default_and_its_bad_values_are_refused_by_path() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.telemetry, super::TelemetryConfig::default());
    assert_eq!(config.telemetry.endpoint, None);
    let yaml = format!(
        "{MINIMAL}telemetry: {{otlp: {{endpoint: 'ftp://c:21', headers: {{'bad name': x}}, timeout_ms: 0}}, sampling_ratio: 2, service_name: ''}}\n"
    );
    assert_eq!(
        error_paths(&yaml),
        [
            "telemetry.otlp.endpoint",
            "telemetry.otlp.headers.bad name",
            "telemetry.otlp.timeout_ms",
            "telemetry.sampling_ratio",
            "telemetry.service_name"
        ]
    );
    let good =
        parse(&format!("{MINIMAL}telemetry: {{otlp: {{endpoint: 'https://c:4318', headers: {{api-key: k}}}}, sampling_ratio: 0.5}}\n"))
            .unwrap();
    assert_eq!((good.telemetry.endpoint.as_deref(), good.telemetry.sampling_ratio), (Some("https://c:4318"), Some(0.5)));
}
