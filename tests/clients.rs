//! The real clients herald supports, over every transport they use, against a running herald:
//! each connects, receives notifications, and refreshes its token over the open socket.
//! npm `socket.io-client` v4 over WebSocket, over long-polling and with its default (polling,
//! then the upgrade); PyPI `python-socketio` over long-polling and over WebSocket; compression
//! with each. The browser client is in `tests/demo.rs`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Connects `id` as user `id` over `transports`, checks the transport it ends up on, and runs
/// the checks every client must pass.
async fn serves(c: &mut Clients, h: &Herald, kafka: &Kafka, id: &str, transports: serde_json::Value, ends_on: &str) {
    let first = token_with(json!({"sub": id, "exp": jsonwebtoken::get_current_timestamp() + 600}));
    let upgrades = transports.as_array().is_some_and(|t| t.len() > 1);
    let options = json!({"auth": {"token": first}, "transports": transports});
    let connected_on = c.connect(id, &h.url(), options).await.unwrap_or_else(|e| panic!("{id}: refused: {e}"));
    // With the default, the upgrade may finish before or after the socket connects.
    if upgrades && connected_on == "polling" {
        assert_eq!(c.upgraded(id).await.as_deref(), Some(ends_on), "{id}: upgraded");
    } else {
        assert_eq!(connected_on, ends_on, "{id}: the transport it connected on");
    }
    kafka.notify(id, json!({"n": 1})).await;
    assert_eq!(c.expect(id, "notification").await["body"]["n"], 1, "{id}");

    let fresh = jsonwebtoken::get_current_timestamp() + 7200;
    c.emit_with_ack(id, "auth_refresh", json!({"token": token_with(json!({"sub": id, "exp": fresh}))})).await;
    assert_eq!(c.expect_ack(id, "auth_refresh").await, json!({"ok": true, "expires_at": fresh}), "{id}: refreshed");
    c.emit_with_ack(id, "auth_refresh", json!({"token": token("someone-else")})).await;
    assert_eq!(c.expect_ack(id, "auth_refresh").await["ok"], false, "{id}: another user's token is refused");

    for n in 2..=4 {
        kafka.notify(id, json!({"n": n})).await;
    }
    for n in 2..=4 {
        assert_eq!(c.expect(id, "notification").await["body"]["n"], n, "{id}: in order after the refresh");
    }
    c.close(id).await;
    assert!(c.disconnected(id, Duration::from_secs(10)).await.is_some(), "{id}: closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_over_websocket_long_polling_and_the_upgrade() {
    let mut s = Stack::default().instance("").start().await;
    s.heralds[0].wait_assigned(4).await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);
    serves(c, h, kafka, "js-websocket", json!(["websocket"]), "websocket").await;
    serves(c, h, kafka, "js-polling", json!(["polling"]), "polling").await;
    // socket.io-client's default: long-polling first, then the upgrade.
    serves(c, h, kafka, "js-default", json!(["polling", "websocket"]), "websocket").await;
    assert_eq!(h.metric("herald_gateway_upgrades_total").await, 1.0, "the default went through the upgrade");
    assert_eq!(h.metric("herald_gateway_sessions_opened_total{transport=\"polling\"}").await, 2.0);
    assert_eq!(h.metric("herald_gateway_sessions_opened_total{transport=\"websocket\"}").await, 1.0);
    s.stop().await;
}

/// socket.io-client in Node offers permessage-deflate (through `ws`): a long notification to a
/// user with three sockets is compressed once for all three and arrives whole on each; a long
/// message from the client arrives compressed and is inflated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_notifications_are_compressed_once_for_every_socket() {
    let mut s = Stack::default().instance("").start().await;
    s.heralds[0].wait_assigned(4).await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);
    let ids = ["big-1", "big-2", "big-3"];
    for id in ids {
        c.connect(id, &h.url(), json!({"auth": {"token": token("big")}})).await.unwrap();
    }
    let text = "a notification long enough to be worth compressing, ".repeat(100);
    kafka.notify("big", json!({"text": text})).await;
    for id in ids {
        assert_eq!(c.expect(id, "notification").await["body"]["text"], text, "{id}");
    }
    let compressed = "herald_gateway_compression_total{op=\"compressed\"}";
    assert_eq!(h.metric(compressed).await, 1.0, "one compression for three sockets");
    kafka.notify("big", json!({"text": "short"})).await;
    for id in ids {
        assert_eq!(c.expect(id, "notification").await["body"]["text"], "short", "{id}");
    }
    assert_eq!(h.metric(compressed).await, 1.0, "a short one goes plain");
    let fresh = jsonwebtoken::get_current_timestamp() + 7200;
    let long_refresh = json!({"token": token_with(json!({"sub": "big", "exp": fresh})), "padding": "x".repeat(4000)});
    c.emit_with_ack(ids[0], "auth_refresh", long_refresh).await;
    assert_eq!(c.expect_ack(ids[0], "auth_refresh").await["ok"], true);
    assert_eq!(h.metric("herald_gateway_compression_total{op=\"inflated\"}").await, 1.0, "the client compressed its long message");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_over_long_polling_and_websocket() {
    let mut s = Stack::default().instance("").python().start().await;
    s.heralds[0].wait_assigned(4).await;
    let (kafka, c, h) = (&s.kafka, &mut s.c, &s.heralds[0]);
    serves(c, h, kafka, "py-polling", json!(["polling"]), "polling").await;
    // A long notification to a long-polling client that accepts gzip (requests does) goes
    // compressed, and arrives whole.
    let text = "a notification long enough to be worth compressing, ".repeat(100);
    c.connect("py-gzip", &h.url(), json!({"auth": {"token": token("py-gzip")}, "transports": ["polling"]})).await.unwrap();
    kafka.notify("py-gzip", json!({"text": text})).await;
    assert_eq!(c.expect("py-gzip", "notification").await["body"]["text"], text);
    assert_eq!(h.metric("herald_gateway_compression_total{op=\"compressed\"}").await, 1.0, "the poll went gzipped");
    serves(c, h, kafka, "py-websocket", json!(["websocket"]), "websocket").await;
    // And a refusal reaches it as socket.io's connect_error.
    assert_eq!(c.connect("py-refused", &h.url(), json!({"auth": {"token": "junk"}})).await, Err("invalid token".into()));
    s.stop().await;
}
