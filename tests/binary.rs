//! The built `herald` binary as a user runs it: embedded mode end to end with the npm
//! socket.io-client, the `token` and `produce` subcommands, SIGTERM, and bad configs.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Embedded mode, as the README runs it; the secret comes from the environment.
fn embedded_config(kafka_port: u16) -> String {
    json!({
        "server": {"shutdown_grace_secs": 5},
        "kafka": {
            "brokers": "embedded",
            "embedded": {"listen": format!("127.0.0.1:{kafka_port}")},
            "options": {"auto.offset.reset": "earliest"},
        },
        "auth": {"jwt": {"secret": "${TEST_SECRET}"}},
    })
    .to_string()
}

async fn herald_output(args: &[&str], config: &std::path::Path) -> std::process::Output {
    herald(args).arg("--config").arg(config).output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_end_to_end_then_sigterm() {
    let kafka_port = free_port();
    // Started with a low soft limit on open files, as many systems set by default.
    let launch = Launch { stdout: true, open_files: Some(256), ..Launch::default() };
    let mut process = HeraldProcess::launch(&embedded_config(kafka_port), launch).await;
    let (url, config) = (process.url.clone(), process.config().to_path_buf());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", process.pid())).unwrap();
    let open_files: Vec<&str> = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().collect();
    assert_eq!(open_files[3], open_files[4], "herald raised its soft open-file limit to the hard one: {open_files:?}");
    assert_ne!(open_files[3], "256");

    let token = herald_output(&["token", "--user", "u42"], &config).await;
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let mut c = Clients::start().await;
    c.connect("u42", &url, json!({"auth": {"token": token}})).await.unwrap();

    let record = r#"{"userId":"u42","type":"order.shipped","body":{"orderId":7}}"#;
    let produced = herald_output(&["produce", record], &config).await;
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));
    assert_eq!(c.expect("u42", "notification").await, serde_json::from_str::<serde_json::Value>(record).unwrap());

    // SIGTERM: offsets committed, sockets closed, exit 0 within the grace period.
    let mut stdout = process.child.stdout.take().unwrap();
    let status = process.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(c.disconnected("u42", Duration::from_secs(5)).await.is_some(), "the socket was closed");

    let mut banner = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut banner).await.unwrap();
    assert!(banner.contains("EMBEDDED MODE") && banner.contains("NOT for production"), "{banner}");
    assert!(banner.contains(&format!("127.0.0.1:{kafka_port}")), "the banner names the broker address: {banner}");
    c.stop().await;
}

#[tokio::test]
async fn bad_config_lists_every_problem_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        format!("server: {{listen: \"127.0.0.1:{port}\", event: connect, typo: 1}}\nkafka: {{topics: []}}\nredis: {{url: \"http://x\"}}\n"),
    )
    .unwrap();
    for args in [&["check-config"][..], &[][..]] {
        let out = herald_output(args, &path).await;
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        for path in ["server.event", "server.typo", "kafka.topics", "redis.url", "auth.jwt.secret"] {
            assert!(stderr.contains(&format!("{path}: ")), "{path} missing from:\n{stderr}");
        }
    }
    // Nothing was bound: the port is still free.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, embedded_config(free_port())).unwrap();
    let out = herald_output(&["check-config"], &good).await;
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().contains("OK"));
}

#[tokio::test]
async fn version_and_help_name_every_subcommand() {
    let out = herald(&["--version"]).output().await.unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("herald "));
    let help = String::from_utf8(herald(&["--help"]).output().await.unwrap().stdout).unwrap();
    for sub in ["run", "check-config", "token", "route", "produce"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(&format!("{sub} "))), "{sub} missing from --help:\n{help}");
    }
    for code in ["0 success", "1 a runtime failure", "2 a command-line usage error", "78 an invalid configuration"] {
        assert!(help.contains(code), "exit code `{code}` missing from --help:\n{help}");
    }
}

/// SIGHUP reloads scripts at once, even with a file-watch debounce far in the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_route_scripts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.rhai"), r#"fn route(r) { #{ user_id: "u1", payload: "v1" } }"#).unwrap();
    let yaml = merge(&embedded_config(free_port()), "kafka: {topics: [{name: t, script: r.rhai}]}\nroutes: {reload_debounce_ms: 60000}");
    let process = HeraldProcess::launch(&yaml, Launch { dir: Some(dir.path().into()), ..Launch::default() }).await;
    let url = process.url.clone();

    std::fs::write(dir.path().join("r.rhai"), r#"fn route(r) { #{ user_id: "u1", payload: "v2" } }"#).unwrap();
    process.signal("-HUP");
    eventually(Duration::from_secs(5), "the SIGHUP reload", async || {
        scrape(&url, "herald_route_reloads_total{result=\"applied\"}").await == 1.0
    })
    .await;

    let mut c = Clients::start().await;
    c.connect_as("u1", &url, "u1").await;
    let out = process.run(&["produce", "--topic", "t", "{}"]).await;
    assert!(out.status.success());
    assert_eq!(c.expect("u1", "notification").await, json!("v2"));
    c.stop().await;
    assert!(process.terminate().await.success());
}

#[tokio::test]
async fn route_dry_run_prints_what_a_record_becomes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("config.yaml");
    let dry_run = |topic: &'static str, record: &'static str| {
        let config = config.clone();
        async move {
            let mut child = herald(&["route", "--topic", topic, "--config"])
                .arg(&config)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(child.stdin.as_mut().unwrap(), record.as_bytes()).await.unwrap();
            drop(child.stdin.take());
            child.wait_with_output().await.unwrap()
        }
    };
    let out = dry_run("team-notifications", r#"{"team":"core","members":["a","b"],"author":"a","type":"t","body":{}}"#).await;
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, [json!({"user_id": "b", "event": "team_notification", "payload": {"team": "core", "type": "t", "body": {}}})]);

    let out = dry_run("user-notifications", "[1]").await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("script_error") && stderr.contains("user-notifications.rhai:"), "{stderr}");
}

/// `log.format: json`: one JSON object per line; the line about a skipped record names its
/// topic, partition and offset; no token and no payload content appear at info level or above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_records_and_show_no_token_or_payload() {
    let kafka = Kafka::start(&[TOPIC]).await;
    let (herald, logs) = HeraldProcess::start_capturing_logs(&config_yaml(&kafka, None, "log: {format: json, level: info}")).await;
    let url = herald.url.clone();

    let mut c = Clients::start().await;
    c.connect_as("ann", &url, "ann").await;
    kafka.produce(TOPIC, None, b"not json, payload-marker-1").await;
    kafka.notify("ann", json!({"secret": "payload-marker-2"})).await;
    assert_eq!(c.expect("ann", "notification").await["body"]["secret"], "payload-marker-2");
    eventually(Duration::from_secs(10), "the bad record counted", async || {
        scrape(&url, "herald_records_dropped_total{reason=\"bad_json\"}").await == 1.0
    })
    .await;
    c.stop().await;
    assert!(herald.terminate().await.success());
    let logs = logs.await.unwrap();

    let lines: Vec<serde_json::Value> =
        logs.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
    assert!(lines.len() >= 3, "start-up, the skipped record and shutdown are logged:\n{logs}");
    let skipped = lines.iter().find(|l| l["message"] == "Skipped a record.").unwrap_or_else(|| panic!("no skipped record in:\n{logs}"));
    assert_eq!(skipped["level"], "WARN");
    assert_eq!(skipped["topic"], TOPIC);
    assert!(skipped["partition"].is_i64() && skipped["offset"].is_i64(), "{skipped}");
    assert_eq!(skipped["reason"], "bad_json");
    let token = token("ann");
    for secret in ["payload-marker-1", "payload-marker-2", token.as_str(), SECRET] {
        assert!(!logs.contains(secret), "`{secret}` appears in the logs:\n{logs}");
    }
}
