//! No sticky sessions: herald instances with Redis behind a proxy that sends each TCP
//! connection to the next instance in turn (a Kubernetes Service without affinity). The
//! default socket.io-client (long-polling first, then the upgrade), a long-polling-only client
//! and python-socketio each connect, receive every notification in order and disconnect
//! cleanly: requests that reach an instance other than their session's are forwarded to it.

mod common;

use std::time::Duration;

use common::proxy::{Balance, RoundRobin};
use common::*;
use serde_json::json;

/// `n` instances sharing one Redis (only the first consumes), behind a round-robin proxy.
async fn behind_a_proxy(kafka: &Kafka, redis: &Redis, n: usize) -> (Vec<Herald>, RoundRobin) {
    behind_a_proxy_with(kafka, redis, n, "").await
}

async fn behind_a_proxy_with(kafka: &Kafka, redis: &Redis, n: usize, overlay: impl Overlay) -> (Vec<Herald>, RoundRobin) {
    behind_a_balancer(kafka, redis, n, overlay, Balance::PerConnection).await
}

async fn behind_a_balancer(kafka: &Kafka, redis: &Redis, n: usize, overlay: impl Overlay, balance: Balance) -> (Vec<Herald>, RoundRobin) {
    let yaml = config_yaml(kafka, Some(redis), overlay);
    let mut heralds = vec![Herald::start(&with_kafka(&yaml, "topics: [user-notifications]")).await];
    for _ in 1..n {
        heralds.push(Herald::start(&with_kafka(&yaml, "topics: [elsewhere]")).await);
    }
    // The group settled (every instance holds its topic's partitions): no rebalance later
    // delivers a record twice.
    heralds[0].wait_assigned(4).await;
    eventually(Duration::from_secs(20), "the others to share `elsewhere`", async || {
        let mut assigned = 0.0;
        for h in &heralds[1..] {
            assigned += h.metric("herald_source_assigned_partitions").await;
        }
        assigned == 4.0
    })
    .await;
    let proxy = RoundRobin::start_with(heralds.iter().map(|h| h.addr).collect(), balance).await;
    (heralds, proxy)
}

async fn forwarded(heralds: &[Herald], direction: &str) -> f64 {
    let mut total = 0.0;
    for h in heralds {
        total += h.metric(&format!("herald_gateway_forwarded_requests_total{{direction=\"{direction}\"}}")).await;
    }
    total
}

async fn sockets(heralds: &[Herald]) -> f64 {
    let mut total = 0.0;
    for h in heralds {
        total += h.metric("herald_gateway_sockets").await;
    }
    total
}

/// Closes the clients' sockets, checks that every instance let them go, and stops all.
async fn leave_cleanly(mut c: Clients, ids: &[&str], heralds: Vec<Herald>) {
    for id in ids {
        c.close(id).await;
    }
    eventually(Duration::from_secs(10), "every socket to leave cleanly", async || sockets(&heralds).await == 0.0).await;
    c.stop().await;
    for h in heralds {
        h.shutdown().await;
    }
}

/// Every notification produced for `user`, received once and in order by each of `ids`.
async fn every_notification(kafka: &Kafka, c: &mut Clients, user: &str, ids: &[&str]) {
    const N: i64 = 30;
    for n in 0..N {
        kafka.produce_to(TOPIC, Some(0), Some(user), json!({"userId": user, "n": n}).to_string().as_bytes()).await;
    }
    for id in ids {
        let (_, duplicated, lost) = report(c, id, N, &format!("{id} behind a round-robin proxy")).await;
        assert_eq!((lost, duplicated), (0, 0), "{id}");
        assert_first_seen_in_order(c, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_polling_only_clients_need_no_affinity() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let redis = Redis::start().await;
    for n in [2, 3] {
        let (heralds, proxy) = behind_a_proxy(&kafka, &redis, n).await;
        let mut c = Clients::start().await;
        let user = format!("nia{n}");
        let token = json!({"token": token(&user)});
        let (polling, default) = (format!("polling-{n}"), format!("default-{n}"));
        c.connect(&polling, &proxy.url(), json!({"auth": token, "transports": ["polling"]})).await.unwrap();
        c.connect(&default, &proxy.url(), json!({"auth": token, "transports": ["polling", "websocket"]})).await.unwrap();
        assert_eq!(c.upgraded(&default).await.as_deref(), Some("websocket"), "the default client upgraded, wherever that reached");
        every_notification(&kafka, &mut c, &user, &[&polling, &default]).await;
        for id in [&polling, &default] {
            let fresh = jsonwebtoken::get_current_timestamp() + 7200;
            c.emit_with_ack(id, "auth_refresh", json!({"token": token_with(json!({"sub": user, "exp": fresh}))})).await;
            assert_eq!(c.expect_ack(id, "auth_refresh").await, json!({"ok": true, "expires_at": fresh}), "{id}: refreshed");
        }
        assert!(forwarded(&heralds, "sent").await > 0.0, "some requests reached another instance than their session's");
        assert_eq!(forwarded(&heralds, "sent").await, forwarded(&heralds, "answered").await, "each forwarded request was answered");
        assert!(proxy.counts().iter().all(|c| *c > 0), "the proxy used every instance: {:?}", proxy.counts());
        // A session id no instance holds (made up, or its instance gone) is refused with the
        // protocol's error, at once, for a poll and for a POST alike.
        let made_up = format!("{}/socket.io/?EIO=4&transport=polling&sid=zZ9_0123456789abcdef", proxy.url());
        let started = std::time::Instant::now();
        let poll = reqwest::get(&made_up).await.unwrap();
        assert_eq!(poll.status(), 400);
        assert_eq!(poll.text().await.unwrap(), r#"{"code":1,"message":"Session ID unknown"}"#);
        let post = reqwest::Client::new().post(&made_up).body("40").send().await.unwrap();
        assert_eq!(post.status(), 400);
        assert!(started.elapsed() < Duration::from_secs(5), "refused without waiting for an answer");
        leave_cleanly(c, &[&polling, &default], heralds).await;
    }
}

async fn moved(heralds: &[Herald], direction: &str) -> f64 {
    let mut total = 0.0;
    for h in heralds {
        total += h.metric(&format!("herald_gateway_moved_sessions_total{{direction=\"{direction}\"}}")).await;
    }
    total
}

/// Default clients connect while notifications stream to their users, their group and
/// everyone, behind a balancer that sends each WebSocket upgrade to an instance other than its
/// session's: each upgrade moves its session there, and every
/// socket gets each stream from its first notification on, once, in order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_with_their_upgrade_and_miss_nothing() {
    const KEY: &str = "test-api-key-0123456789";
    const CLIENTS: usize = 6;
    const ROUNDS: i64 = 120;
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let redis = Redis::start().await;
    let overlay = json!({"auth": {"jwt": {"groups_claim": "groups"}}, "api": {"key": KEY, "rate_limit_per_sec": 1000}});
    let (heralds, proxy) = behind_a_balancer(&kafka, &redis, 3, overlay, Balance::UpgradesElsewhere).await;
    let users: Vec<String> = (0..CLIENTS).map(|i| format!("mover-{i}")).collect();
    let publish_url = format!("{}/api/publish", heralds[0].url());
    let audiences =
        [("user", json!({"user_ids": users})), ("group", json!({"groups": ["crew"]})), ("everyone", json!({"broadcast": true}))];
    // Straight to one instance (not through the proxy), a round every 10 ms for the whole test.
    let streaming = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for n in 0..ROUNDS {
            for (kind, audience) in &audiences {
                let mut body = audience.clone();
                body["payload"] = json!({"k": kind, "n": n});
                let response = http.post(&publish_url).bearer_auth(KEY).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut c = Clients::start().await;
    for user in &users {
        let token = token_with(json!({"sub": user, "groups": ["crew"], "exp": jsonwebtoken::get_current_timestamp() + 600}));
        c.connect(user, &proxy.url(), json!({"auth": {"token": token}, "transports": ["polling", "websocket"]})).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    streaming.await.unwrap();
    for user in &users {
        assert_eq!(c.upgraded(user).await.as_deref(), Some("websocket"), "{user} upgraded");
        for kind in ["user", "group", "everyone"] {
            eventually(Duration::from_secs(15), &format!("{user}'s {kind} stream to end"), async || {
                c.received(user, "notification").await.iter().any(|p| p["k"] == kind && p["n"] == ROUNDS - 1)
            })
            .await;
            let got: Vec<i64> =
                c.received(user, "notification").await.iter().filter(|p| p["k"] == kind).map(|p| p["n"].as_i64().unwrap()).collect();
            let first = got[0];
            assert_eq!(got, (first..ROUNDS).collect::<Vec<_>>(), "{user}: the {kind} stream from its first on, once, in order");
        }
    }
    let (moved_in, moved_out, failed) = (moved(&heralds, "in").await, moved(&heralds, "out").await, moved(&heralds, "failed").await);
    eprintln!("sessions moved with their upgrade: {moved_in} of {CLIENTS}");
    assert_eq!((moved_in, moved_out, failed), (CLIENTS as f64, CLIENTS as f64, 0.0), "each upgrade moved its session, none failed");
    leave_cleanly(c, &users.iter().map(String::as_str).collect::<Vec<_>>(), heralds).await;
}

/// A raw client: a session opened over long-polling on one instance, upgraded on the other.
/// The upgrade packet and the client's next packets come in one write (python-socketio does
/// that): they are read after the move, by the instance the session moved to. A second probe of
/// the moved session and one for a session no instance holds are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_and_what_follows_it_in_one_write_reach_the_moved_session() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let redis = Redis::start().await;
    let (heralds, _proxy) = behind_a_proxy(&kafka, &redis, 2).await;
    let (a, b) = (&heralds[0], &heralds[1]);
    let http = reqwest::Client::new();
    let open = http.get(format!("{}/socket.io/?EIO=4&transport=polling", a.url())).send().await.unwrap().text().await.unwrap();
    let open: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    let polling = format!("{}/socket.io/?EIO=4&transport=polling&sid={sid}", a.url());
    let connect = format!("40{}", json!({"token": token("raw")}));
    assert_eq!(http.post(&polling).body(connect).send().await.unwrap().text().await.unwrap(), "ok");
    let connected = http.get(&polling).send().await.unwrap().text().await.unwrap();
    assert!(connected.starts_with("40{\"sid\":"), "{connected}");

    let ws_url = |h: &Herald, sid: &str| format!("{}/socket.io/?EIO=4&transport=websocket&sid={sid}", h.url().replace("http", "ws"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(b, &sid)).await.unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("3probe"));
    let fresh = jsonwebtoken::get_current_timestamp() + 7200;
    let refresh = format!("421{}", json!(["auth_refresh", {"token": token_with(json!({"sub": "raw", "exp": fresh}))}]));
    ws.feed(Message::text("5")).await.unwrap();
    ws.feed(Message::text(refresh)).await.unwrap();
    ws.flush().await.unwrap();
    let ack = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await.unwrap(),
            Message::Text(t) => break t.to_string(),
            _ => {}
        }
    };
    assert_eq!(ack, format!("431{}", json!([{"ok": true, "expires_at": fresh}])), "the event after the upgrade, answered by B");
    assert_eq!(
        (b.metric("herald_gateway_moved_sessions_total{direction=\"in\"}").await, b.metric("herald_gateway_sockets").await),
        (1.0, 1.0)
    );
    assert_eq!(
        (a.metric("herald_gateway_moved_sessions_total{direction=\"out\"}").await, a.metric("herald_gateway_sockets").await),
        (1.0, 0.0)
    );
    kafka.notify("raw", json!({"n": 1})).await;
    let notification = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await.unwrap(),
            Message::Text(t) => break t.to_string(),
            _ => {}
        }
    };
    assert!(notification.starts_with(r#"42["notification",{"#) && notification.contains(r#""n":1"#), "{notification}");

    // The session lives on B now, upgraded: another upgrade of it is refused, through A (which
    // no longer knows it) or B; a made-up session id's upgrade is accepted by an instance its
    // tag does not name, but its probe is refused.
    for (via, sid) in [(a, sid.as_str()), (b, sid.as_str()), (b, "zZ9_0123456789abcdef")] {
        match tokio_tungstenite::connect_async(ws_url(via, sid)).await {
            Ok((mut other, _)) => {
                other.send(Message::text("2probe")).await.unwrap();
                let answer = other.next().await;
                assert!(matches!(answer, Some(Ok(Message::Close(_))) | None), "a probe of {sid} through {}: {answer:?}", via.url());
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400, "{sid} through {}", via.url()),
            Err(e) => panic!("{sid} through {}: {e}", via.url()),
        }
    }
    assert_eq!(b.metric("herald_gateway_sockets").await, 1.0, "the moved socket is untouched");
    drop(ws);
    eventually(Duration::from_secs(10), "the socket to leave", async || sockets(&heralds).await == 0.0).await;
    for h in heralds {
        h.shutdown().await;
    }
}

/// python-socketio, over long-polling and with its default transports, behind a balancer that
/// picks an instance per request (its kept-alive connections would often stay on one) and sends
/// the upgrade to an instance other than its session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_needs_no_affinity() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let redis = Redis::start().await;
    let (heralds, proxy) = behind_a_balancer(&kafka, &redis, 2, "", Balance::UpgradesElsewhere).await;
    let mut c = Clients::start_python().await;
    let clients =
        [("py-polling-1", json!(["polling"])), ("py-polling-2", json!(["polling"])), ("py-default", json!(["polling", "websocket"]))];
    for (id, transports) in &clients {
        let first = token_with(json!({"sub": id, "exp": jsonwebtoken::get_current_timestamp() + 600}));
        let transport = c.connect(id, &proxy.url(), json!({"auth": {"token": first}, "transports": transports})).await.unwrap();
        // python-socketio connects once its upgrade is done, on whichever instance it reached.
        assert_eq!(transport, transports.as_array().unwrap().last().unwrap().as_str().unwrap(), "{id}");
    }
    for (id, _) in &clients {
        for n in 0..3 {
            kafka.notify(id, json!({"n": n})).await;
            assert_eq!(c.expect(id, "notification").await["body"]["n"], n, "{id}");
        }
        // An emit with an ack: a POST, and the ack in a later poll, both possibly forwarded.
        let fresh = jsonwebtoken::get_current_timestamp() + 7200;
        c.emit_with_ack(id, "auth_refresh", json!({"token": token_with(json!({"sub": id, "exp": fresh}))})).await;
        assert_eq!(c.expect_ack(id, "auth_refresh").await, json!({"ok": true, "expires_at": fresh}), "{id}: refreshed");
    }
    assert!(forwarded(&heralds, "sent").await > 0.0, "some requests reached another instance than their session's");
    assert_eq!((moved(&heralds, "in").await, moved(&heralds, "failed").await), (1.0, 0.0), "py-default's session moved with its upgrade");
    // A burst to one of them: every notification, once, in order.
    let user = clients[0].0;
    const N: i64 = 30;
    for n in 0..N {
        kafka.notify(user, json!({"n": n})).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.received(user, "notification").await.len() < N as usize && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Vec<i64> = c.received(user, "notification").await.iter().map(|p| p["body"]["n"].as_i64().unwrap()).collect();
    if got.len() < N as usize {
        eprintln!("{user} disconnected: {:?}", c.disconnected(user, Duration::ZERO).await);
        for h in &heralds {
            let m = reqwest::get(format!("{}/metrics", h.url())).await.unwrap().text().await.unwrap();
            eprintln!(
                "{}",
                m.lines().filter(|l| l.starts_with("herald_gateway") || l.starts_with("herald_bus")).collect::<Vec<_>>().join("\n")
            );
        }
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "{user}: the burst once and in order");
    leave_cleanly(c, &clients.map(|(id, _)| id), heralds).await;
}

/// The demo page's socket.io-client browser bundle, with its defaults (long-polling first), in
/// headless Chromium: the page and every request of its session go through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_needs_no_affinity() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere"]).await;
    let redis = Redis::start().await;
    let (heralds, proxy) = behind_a_proxy_with(&kafka, &redis, 2, "demo: {enabled: true}").await;
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-sticky-demo.png");
    let mut browser = tokio::process::Command::new("node")
        .arg(client_dir().join("browser.mjs"))
        .arg(format!("{}/demo/#token={}", proxy.url(), token("u42")))
        .arg(&screenshot)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    let mut steps = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next_step = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(40), steps.next_line()).await.expect("the browser script went silent");
        let line = line.unwrap().expect("the browser script ended early (is chromium installed?)");
        let step: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_ne!(step["step"], "error", "{step}");
        step
    };
    assert_eq!(next_step().await["step"], "connected");
    let record = json!({"userId": "u42", "type": "hello", "body": {"text": "through any instance"}}).to_string();
    kafka.produce(TOPIC, Some("u42"), record.as_bytes()).await;
    let shown = next_step().await;
    assert!(shown["text"].as_str().unwrap().contains("through any instance"), "{shown}");
    assert_eq!(next_step().await["step"], "screenshot");
    assert!(browser.wait().await.unwrap().success());
    assert!(proxy.counts().iter().all(|c| *c > 0), "the proxy used every instance: {:?}", proxy.counts());
    // Whether one of the page's requests met another instance than its session's depends on
    // how Chromium pools its connections: shown, not asserted (the tests above assert it).
    eprintln!(
        "requests of the page's session forwarded: {}, sessions moved with their upgrade: {}",
        forwarded(&heralds, "sent").await,
        moved(&heralds, "in").await
    );
    for h in heralds {
        h.shutdown().await;
    }
}
