//! Redis as clouds sell it: TLS on every connection (one server, Sentinel, cluster), mutual
//! TLS, an ACL user, a database number, the Sentinels' own password; settings that cannot work
//! stop start-up naming the key, and a certificate Redis changes later shows in `/readyz`
//! while nothing promised is dropped.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::tls::{TestCa, TlsRedis, tls_args};
use common::*;
use serde_json::{Value, json};

/// The `redis` section for a TLS URL, trusting `ca`, with its client certificate if `mutual`.
fn tls_redis(url: &str, ca: &TestCa, mutual: bool) -> Value {
    let mut tls = json!({"ca_file": ca.ca()});
    if mutual {
        let (pem, key) = ca.sign("herald");
        tls["cert_file"] = json!(pem);
        tls["key_file"] = json!(key);
    }
    json!({"redis": {"url": url, "command_timeout_ms": 1000, "tls": tls}, "replay": {"history": 100}})
}

/// Two instances (only `one` consumes; the socket is on `two`, so every record crosses Redis)
/// deliver a user's retained notifications once and in order, and a socket replaying from the
/// start gets them all from the history.
async fn deliver_and_replay(kafka: &Kafka, redis: Value, user: &str) {
    let yaml = config_yaml(kafka, None, redis);
    let one = Herald::start(&with_kafka(&yaml, "topics: [{name: user-notifications, retain: true}]")).await;
    let two = Herald::start(&with_kafka(&yaml, "topics: [elsewhere]")).await;
    one.wait_assigned(4).await;
    let mut c = Clients::start().await;
    c.connect_as(user, &two.url(), user).await;
    const N: i64 = 20;
    for n in 0..N {
        kafka.produce_to(TOPIC, Some(1), Some(user), json!({"userId": user, "n": n}).to_string().as_bytes()).await;
    }
    let (_, _, lost) = report(&mut c, user, N, "across two instances over TLS").await;
    assert_eq!(lost, 0);
    assert_first_seen_in_order(&mut c, user).await;
    let replayer = format!("{user}-replay");
    c.connect(&replayer, &one.url(), json!({"auth": {"token": token(user), "since": "0-0"}})).await.unwrap();
    let (_, _, lost) = report(&mut c, &replayer, N, "the history over TLS").await;
    assert_eq!(lost, 0);
    c.stop().await;
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_an_acl_user_and_a_database_deliver_and_replay() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let ca = TestCa::new("one");
    // Clients must show a certificate; the default user is off, herald's has a password.
    let redis = TlsRedis::start(&ca, true, &["--user", "default", "off", "--user", "herald", "on", ">s3cret", "~*", "&*", "+@all"]).await;
    let url = format!("rediss://herald:s3cret@localhost:{}/2", redis.port);
    deliver_and_replay(&kafka, tls_redis(&url, &ca, true), "tina").await;
    let exists = |db: &str| redis.cli(&ca, &["--user", "herald", "--pass", "s3cret", "-n", db, "EXISTS", "herald:history:tina"]);
    assert_eq!((exists("2"), exists("0")), ("1".into(), "0".into()), "the history is in database 2, and only there");

    // Without the client certificate Redis hangs up; with a wrong password it refuses.
    let yaml = config_yaml(&kafka, None, tls_redis(&format!("rediss://herald:wrong@localhost:{}/2", redis.port), &ca, true));
    let e = Herald::start_failure(&yaml).await;
    assert!(e.contains("redis.url") && e.contains("WRONGPASS"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_stops_start_up_and_a_changed_one_shows_in_readiness() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let (ca, other) = (TestCa::new("good"), TestCa::new("other"));
    let mut redis = TlsRedis::start(&ca, false, &[]).await;
    let url = format!("rediss://localhost:{}", redis.port);

    let e = Herald::start_failure(&config_yaml(&kafka, None, tls_redis(&url, &other, false))).await;
    assert!(e.contains("redis.tls.ca_file") && e.contains("not trusted"), "{e}");
    // A certificate from the trusted CA, but expired.
    let expiring = TestCa::new("expiring");
    expiring.sign_expired("redis");
    let expired = TlsRedis::start(&expiring, false, &[]).await;
    let e = Herald::start_failure(&config_yaml(&kafka, None, tls_redis(&format!("rediss://localhost:{}", expired.port), &expiring, false)))
        .await;
    assert!(e.contains("redis.tls.ca_file") && e.contains("certificate expired"), "{e}");
    drop(expired);

    let yaml =
        merge(&config_yaml(&kafka, None, tls_redis(&url, &ca, false)), "kafka: {topics: [{name: user-notifications, retain: true}]}");
    let h = Herald::start(&yaml).await;
    h.wait_assigned(4).await;
    let mut c = Clients::start().await;
    c.connect_as("uma", &h.url(), "uma").await;
    kafka.produce_to(TOPIC, Some(0), None, br#"{"userId":"uma","n":0}"#).await;
    assert_eq!(c.expect("uma", "notification").await["n"], 0);

    // Redis comes back with a certificate from another CA: unready, and /readyz says why.
    redis.restart_with(&other).await;
    eventually(Duration::from_secs(15), "readiness to name the certificate", async || {
        let (status, body) = h.readyz().await;
        status == 503
            && body["problems"].as_array().is_some_and(|p| p.iter().any(|p| p.as_str().unwrap().contains("certificate not trusted")))
    })
    .await;
    // Records keep coming; none is dropped while Redis cannot be used.
    for n in 1..10 {
        kafka.produce_to(TOPIC, Some(0), None, json!({"userId": "uma", "n": n}).to_string().as_bytes()).await;
    }
    // The first of them taken from Kafka and held, its publish retried against the Redis herald
    // cannot trust (the rest wait in Kafka), before Redis comes back.
    eventually(Duration::from_secs(15), "a record held and retried", async || {
        h.metric("herald_source_records_consumed_total{topic=\"user-notifications\"}").await >= 2.0
            && h.metric("herald_bus_publish_retries_total").await > 0.0
    })
    .await;
    redis.restart_with(&ca).await;
    h.wait_ready().await;
    let (status, body) = h.readyz().await;
    assert_eq!((status, body.get("problems")), (200, None), "{body}");
    // n = 0 was taken by `expect` above: the nine produced meanwhile, each once.
    eventually(Duration::from_secs(30), "the nine notifications held meanwhile", async || {
        c.received("uma", "notification").await.len() >= 9
    })
    .await;
    let got: Vec<i64> = c.received("uma", "notification").await.iter().map(|p| p["n"].as_i64().unwrap()).collect();
    assert_eq!(got, (1..10).collect::<Vec<_>>(), "every one, once, in order");
    c.stop().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinels_with_their_own_password_lead_to_the_master() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let ca = TestCa::new("sentinel");
    let master = TlsRedis::start(&ca, false, &["--requirepass", "m4ster"]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Sentinel rewrites its config file: it needs its own, writable.
    let conf = dir.path().join("sentinel.conf");
    let tls: Vec<String> = tls_args(&ca, "redis", false);
    let tls_lines: String = tls.chunks(2).map(|kv| format!("{} {}\n", kv[0].trim_start_matches("--"), kv[1])).collect();
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {port}\ntls-replication yes\n{tls_lines}bind 127.0.0.1\ndir {dir}\nrequirepass s3ntinel\n\
             sentinel monitor mymaster 127.0.0.1 {mport} 1\nsentinel auth-pass mymaster m4ster\n",
            dir = dir.path().display(),
            mport = master.port
        ),
    )
    .unwrap();
    let _sentinel = Killed(
        Command::new(sentinel_binary())
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel is installed"),
    );
    eventually(Duration::from_secs(10), "the Sentinel to listen", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;

    // The master answers with 127.0.0.1: its certificate is checked against the URL's host.
    let url = format!("rediss-sentinel://:m4ster@localhost:{port}/mymaster/3?sentinel_password=s3ntinel");
    deliver_and_replay(&kafka, tls_redis(&url, &ca, false), "sam").await;
    assert_eq!(master.cli(&ca, &["-a", "m4ster", "--no-auth-warning", "-n", "3", "EXISTS", "herald:history:sam"]), "1");

    let wrong = format!("rediss-sentinel://:m4ster@localhost:{port}/mymaster/3?sentinel_password=nope");
    let e = Herald::start_failure(&config_yaml(&kafka, None, tls_redis(&wrong, &ca, false))).await;
    assert!(e.contains("redis.url") && e.contains("Sentinel"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_delivers_across_instances_and_replays() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let ca = TestCa::new("cluster");
    let (pem, key) = ca.sign("client");
    let cli: Vec<String> = ["--tls", "--cacert", &ca.ca(), "--cert", &pem, "--key", &key].iter().map(|s| s.to_string()).collect();
    let cluster = RedisCluster::start_tls(tls_args(&ca, "redis", false), cli);
    // The nodes announce 127.0.0.1; the URL names localhost, which their certificate covers.
    let url = cluster.url().replace("127.0.0.1", "localhost");
    assert!(url.starts_with("rediss-cluster://"), "{url}");
    deliver_and_replay(&kafka, tls_redis(&url, &ca, false), "cleo").await;
}

fn sentinel_binary() -> std::path::PathBuf {
    let server = redis_server();
    let sentinel = server.with_file_name("redis-sentinel");
    if sentinel.exists() { sentinel } else { "redis-sentinel".into() }
}
