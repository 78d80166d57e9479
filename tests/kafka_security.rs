//! Kafka as managed services run it: security settings reach the consumer, and a broker that
//! refuses herald's credentials or shows a certificate herald does not trust makes `/readyz`
//! say so, instead of herald hanging or looping silently. (librdkafka's mock cluster speaks
//! neither SASL nor TLS: against it a SASL client fails authentication, and `openssl s_server`
//! stands in for a broker with an untrusted certificate.)

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::tls::TestCa;
use common::*;
use serde_json::json;

async fn problem_shows(h: &Herald, what: &str) -> String {
    let mut seen = String::new();
    eventually(Duration::from_secs(30), &format!("/readyz to say `{what}`"), async || {
        let (status, body) = h.readyz().await;
        seen = body.to_string();
        status == 503
            && body["kafka"] == false
            && body["problems"].as_array().is_some_and(|p| p.iter().any(|p| p.as_str().unwrap().contains(what)))
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sasl_login_shows_in_readiness() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let sasl =
        "kafka: {options: {security.protocol: SASL_PLAINTEXT, sasl.mechanism: SCRAM-SHA-512, sasl.username: herald, sasl.password: wrong}}";
    let h = Herald::start_unready(&config_yaml(&kafka, None, sasl), std::path::Path::new(".")).await;
    let body = problem_shows(&h, "kafka authentication failed").await;
    eprintln!("{body}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_shows_in_readiness() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let (broker_ca, trusted) = (TestCa::new("broker"), TestCa::new("trusted"));
    let (pem, key) = broker_ca.sign("broker");
    let port = free_port();
    let _broker = Killed(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-accept", &format!("127.0.0.1:{port}"), "-cert", &pem, "-key", &key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the openssl CLI must be installed"),
    );
    eventually(Duration::from_secs(10), "the TLS listener", async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok())
        .await;
    let yaml = config_yaml(
        &kafka,
        None,
        json!({"kafka": {"brokers": format!("127.0.0.1:{port}"), "options": {"security.protocol": "SSL", "ssl.ca.location": trusted.ca()}}}),
    );
    let h = Herald::start_unready(&yaml, std::path::Path::new(".")).await;
    let body = problem_shows(&h, "kafka TLS failed").await;
    assert!(body.contains("certificate"), "{body}");
    h.shutdown().await;
}
