//! The demo page: served only when enabled, and working end to end in headless Chromium with
//! the real socket.io-client browser bundle.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const DEMO_ON: &str = "demo: {enabled: true}";

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_exists_only_when_enabled() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;

    let off = Herald::start(&config_yaml(&kafka, None, "")).await;
    assert_eq!(get(&format!("{}/demo/", off.url())).await.0, 404, "a broker list means production: no demo by default");
    off.shutdown().await;

    let on = Herald::start(&merge(&config_yaml(&kafka, None, DEMO_ON), "server: {event: alert}")).await;
    let (status, content_type, page) = get(&format!("{}/demo/", on.url())).await;
    assert_eq!((status, content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(page.contains(r#""event":"alert""#), "the page is told the configured event name: {page}");
    let (status, content_type, bundle) = get(&format!("{}/demo/socket.io.min.js", on.url())).await;
    assert_eq!((status, content_type.as_str()), (200, "text/javascript; charset=utf-8"));
    let installed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(herald::config::DemoConfig::DEFAULT_BUNDLE)).unwrap();
    assert_eq!(bundle, installed, "the bundle is served as npm installed it");
    on.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_a_notification_live_in_headless_chromium() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let h = Herald::start(&config_yaml(&kafka, None, DEMO_ON)).await;
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let screenshot = artefacts.join("demo-page.png");
    let _ = std::fs::remove_file(&screenshot);

    // The token travels in the URL fragment, as the embedded mode's banner prints it.
    let page_url = format!("{}/demo/#token={}", h.url(), token("u42"));
    let mut browser = Command::new("node")
        .arg(client_dir().join("browser.mjs"))
        .arg(&page_url)
        .arg(&screenshot)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    let mut steps = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next_step = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(40), steps.next_line()).await.expect("the browser script went silent");
        let line = line.unwrap().expect("the browser script ended early (is chromium installed? the README's test command installs it)");
        let step: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(step["step"], "error", "{step}");
        step
    };

    assert_eq!(next_step().await["step"], "connected");
    // The page upgraded to a WebSocket, on which Chromium offered permessage-deflate.
    eventually(Duration::from_secs(10), "the page's upgrade", async || h.metric("herald_gateway_upgrades_total").await == 1.0).await;
    // Another user's notification first: the page must never show it.
    let record = |user: &str, text: &str| json!({"userId": user, "type": "hello", "body": {"text": text}}).to_string();
    kafka.produce(TOPIC, Some("u7"), record("u7", "not for u42").as_bytes()).await;
    // Long enough to go compressed (over server.compression.threshold_bytes).
    let long = format!("Hello from the demo test{}", " and more".repeat(150));
    kafka.produce(TOPIC, Some("u42"), record("u42", &long).as_bytes()).await;
    let shown = next_step().await;
    assert_eq!(shown["step"], "notification");
    let text = shown["text"].as_str().unwrap();
    assert!(text.contains("Hello from the demo test") && text.contains("notification"), "the page shows: {text}");
    assert!(!text.contains("not for u42"), "another user's notification reached the page: {text}");
    assert!(text.contains(" and more and more"), "the whole text, inflated by Chromium");
    assert_eq!(h.metric("herald_gateway_compression_total{op=\"compressed\"}").await, 1.0, "it went compressed (RSV1)");

    assert_eq!(next_step().await["step"], "screenshot");
    assert!(browser.wait().await.unwrap().success());
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "the screenshot is a real PNG ({} bytes)", png.len());
    eprintln!("demo page screenshot: {}", screenshot.display());
    h.shutdown().await;
}
