//! Redis Cluster with sharded Pub/Sub: two instances on a local three-master cluster deliver
//! every user's notifications (retained ones too, through the store-and-SPUBLISH script), and
//! each user's channel lives only on the shard that owns its slot.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::json;

const USERS: usize = 24;
const PER_USER: i64 = 5;
const API_KEY: &str = "cluster-test-api-key-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_cluster_deliver_through_the_owning_shard_only() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC]).await;
    let cluster = RedisCluster::start();
    let yaml = config_yaml(&kafka, None, json!({"redis": {"url": cluster.url()}, "api": {"key": API_KEY}}));
    let yaml = with_kafka(&yaml, "topics: [{name: user-notifications, retain: true}]");
    let yaml = merge(&yaml, "auth: {jwt: {groups_claim: groups}}");
    let (one, two) = (Herald::start(&yaml).await, Herald::start(&yaml).await);
    // Both consume: whichever takes a record, the user's sockets may be on the other.
    one.wait_assigned(2).await;
    two.wait_assigned(2).await;

    let mut c = Clients::start().await;
    let users: Vec<String> = (0..USERS).map(|i| format!("cu{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        c.connect_as(user, &[&one, &two][i % 2].url(), user).await;
    }
    for n in 0..PER_USER {
        for user in &users {
            kafka.notify(user, json!({"n": n})).await;
        }
    }
    for user in &users {
        eventually(Duration::from_secs(20), &format!("{PER_USER} notifications for {user}"), async || {
            c.received(user, "notification").await.len() >= PER_USER as usize
        })
        .await;
    }
    for user in &users {
        // Keyed by the user, as its records were: the same partition, so it comes after them.
        let at = Sentinel { topic: TOPIC, partition: None, key: Some(user) };
        settle_with(&kafka, &mut c, at, |marker| json!({"userId": user, "body": {"n": marker}}), &[user]).await;
        let args = c.received_args(user, "notification").await;
        let got: Vec<(String, i64)> =
            args.iter().map(|a| (a[0]["userId"].as_str().unwrap().to_owned(), a[0]["body"]["n"].as_i64().unwrap())).collect();
        let expected: Vec<(String, i64)> = (0..PER_USER).map(|n| (user.clone(), n)).collect();
        assert_eq!(got, expected, "{user}: every notification once, in order, none of another user's");
        assert!(args.iter().all(|a| a[1]["id"].is_string()), "{user}: retained notifications carry their stream id");
    }

    // Sharded: each channel is subscribed on exactly one node, the one that owns its slot, and
    // nothing uses classic Pub/Sub.
    let mut node_of_channel: HashMap<String, Vec<u16>> = HashMap::new();
    for port in &cluster.ports {
        for channel in cluster.cli(*port, &["pubsub", "shardchannels"]).lines().filter(|l| !l.is_empty()) {
            node_of_channel.entry(channel.to_owned()).or_default().push(*port);
        }
        assert_eq!(cluster.cli(*port, &["pubsub", "channels"]).trim(), "", "no classic Pub/Sub channel on {port}");
    }
    for user in &users {
        let channel = format!("herald:user:{{{user}}}");
        let nodes = node_of_channel.get(&channel).unwrap_or_else(|| panic!("{channel} is subscribed nowhere: {node_of_channel:?}"));
        assert_eq!(nodes.len(), 1, "{channel} lives on one shard: {nodes:?}");
        // A keyed command answers MOVED on any node but the slot's owner.
        let owner_reply = cluster.cli(nodes[0], &["exists", &channel]);
        assert_eq!(owner_reply.trim(), "0", "{channel} is on the node that owns its slot, not {}: {owner_reply}", nodes[0]);
    }
    let shards_used: std::collections::HashSet<u16> = node_of_channel.values().flatten().copied().collect();
    assert!(shards_used.len() >= 2, "{USERS} users spread over the shards: {shards_used:?}");

    // Presence asks each shard for its users' channels (SHARDNUMSUB, one command per slot).
    let mut asked: Vec<serde_json::Value> = users.iter().map(|u| json!(u)).collect();
    asked.push(json!("nobody"));
    let presence: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/presence", one.url()))
        .bearer_auth(API_KEY)
        .json(&json!({"user_ids": asked}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(presence["online"], USERS, "{presence}");
    assert!(users.iter().all(|u| presence["users"][u]["instances"] == 1), "one instance holds each user: {presence}");
    assert_eq!(presence["users"]["nobody"]["online"], false);

    // The history lives in the same slot as the channel, so replay works on the cluster too.
    let first_id = c.received_args("cu0", "notification").await[0][1]["id"].as_str().unwrap().to_owned();
    c.close("cu0").await;
    c.connect("cu0-again", &two.url(), json!({"auth": {"token": token("cu0"), "since": first_id}})).await.unwrap();
    eventually(Duration::from_secs(10), "the replayed notifications", async || {
        c.received("cu0-again", "notification").await.len() >= (PER_USER - 1) as usize
    })
    .await;
    // The sentinel was retained too; it is the one without a number.
    let replayed: Vec<i64> = c.received("cu0-again", "notification").await.iter().filter_map(|p| p["body"]["n"].as_i64()).collect();
    assert_eq!(replayed, (1..PER_USER).collect::<Vec<_>>());

    // Groups and broadcasts over sharded channels: the group is its channel's hash tag.
    let member = |user: &str| json!({"auth": {"token": token_with(json!({"sub": user, "groups": ["ops"], "exp": jsonwebtoken::get_current_timestamp() + 600}))}});
    c.connect("ops-1", &one.url(), member("op1")).await.unwrap();
    c.connect("ops-2", &two.url(), member("op2")).await.unwrap();
    let api = async |path: &str, body: serde_json::Value| -> serde_json::Value {
        let response = reqwest::Client::new().post(format!("{}{path}", one.url())).bearer_auth(API_KEY).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    };
    let presence = api("/api/presence", json!({"groups": ["ops", "nobody"]})).await;
    assert_eq!(presence["groups"]["ops"]["instances"], 2, "{presence}");
    api("/api/publish", json!({"groups": ["ops"], "payload": {"to": "ops"}})).await;
    api("/api/publish", json!({"broadcast": true, "payload": {"to": "all"}})).await;
    for id in ["ops-1", "ops-2"] {
        eventually(Duration::from_secs(10), "the group's and the broadcast", async || c.received(id, "notification").await.len() >= 2)
            .await;
        // Two channels on (likely) two shards: no order between them.
        let mut got: Vec<String> = c.received(id, "notification").await.iter().map(|v| v["to"].to_string()).collect();
        got.sort();
        assert_eq!(got, ["\"all\"", "\"ops\""], "{id}: each once");
    }
    eventually(Duration::from_secs(10), "the broadcast on a user's socket", async || {
        c.received("cu1", "notification").await.len() > PER_USER as usize
    })
    .await;
    assert!(!c.received("cu1", "notification").await.contains(&json!({"to": "ops"})), "cu1 is in no group");

    c.stop().await;
    one.shutdown().await;
    two.shutdown().await;
}

/// Three masters with a replica each: the master holding a user's slot is killed mid-stream,
/// its replica takes over, and the user, connected throughout to the other instance, misses
/// nothing; retained notifications are all in the history afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_failover_loses_nothing() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere", "live"]).await;
    let mut cluster = RedisCluster::start_with(1, 1000);
    let (one, two, mut c) = consumer_and_socket_holder(&kafka, &cluster, "frank").await;
    let ask = cluster.ports[0];
    let victim = cluster.master_of(ask, "herald:user:{frank}").expect("the slot has a master");
    let survivor = *cluster.ports.iter().find(|p| **p != victim).unwrap();
    // A user whose slot a surviving master serves, whose records share frank's batches: the
    // batches that fail on the dead master must not publish hers twice.
    let gina = (0..).map(|i| format!("gina{i}")).find(|u| cluster.master_of(ask, &format!("herald:user:{{{u}}}")) != Some(victim)).unwrap();
    c.connect_as(&gina, &two.url(), &gina).await;

    const N: i64 = 150;
    for n in 0..N {
        // Both at once, so that one batch holds both.
        let (hers, his) = (json!({"userId": gina, "n": n}).to_string(), json!({"userId": "frank", "n": n}).to_string());
        tokio::join!(
            kafka.produce_to("live", Some(1), Some(&gina), hers.as_bytes()),
            kafka.produce_to(TOPIC, Some(1), Some("frank"), his.as_bytes())
        );
        if n == N / 5 {
            cluster.kill(victim);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.master_of(survivor, "herald:user:{frank}").is_none_or(|m| m == victim) {
        assert!(
            std::time::Instant::now() < deadline,
            "no replica took over the slot of {victim} in 30 s; the cluster as {survivor} sees it:\n{}",
            cluster.cli(survivor, &["cluster", "nodes"])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, lost) = report(&mut c, "frank", N, "cluster failover").await;
    assert_eq!(lost, 0);
    let (_, duplicated, lost) = report(&mut c, &gina, N, "cluster failover, a user on a surviving master").await;
    assert_eq!((lost, duplicated), (0, 0), "only the dead master's notifications are published again");
    c.connect("replayer", &two.url(), json!({"auth": {"token": token("frank"), "since": "0-0"}})).await.unwrap();
    let (_, _, lost) = report(&mut c, "replayer", N, "the history after the cluster failover").await;
    assert_eq!(lost, 0, "notifications missing from the history");
    c.stop().await;
    one.shutdown().await;
    two.shutdown().await;
}

/// A resharding while herald runs: the slot of a user's channel and history moves to another
/// master mid-stream. herald follows (`ASK` while the stream migrates, `MOVED` after, the
/// subscription Redis ends on the old master is made on the new one), and the user, connected
/// throughout to the other instance, misses nothing; the history moved with the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_mid_stream_loses_nothing() {
    init_logs();
    let kafka = Kafka::start(&[TOPIC, "elsewhere", "live"]).await;
    let cluster = RedisCluster::start();
    let (one, two, mut c) = consumer_and_socket_holder(&kafka, &cluster, "rita").await;
    let key = "herald:user:{rita}";
    let slot: u16 = cluster.cli(cluster.ports[0], &["cluster", "keyslot", key]).trim().parse().unwrap();
    let from = cluster.master_of(cluster.ports[0], key).unwrap();
    let to = *cluster.ports.iter().find(|p| **p != from).unwrap();

    const N: i64 = 120;
    for n in 0..N {
        kafka.produce_to(TOPIC, Some(1), Some("rita"), json!({"userId": "rita", "n": n}).to_string().as_bytes()).await;
        if n == N / 3 {
            cluster.move_slot(slot, from, to);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.master_of(from, key), Some(to), "the slot moved");
    let (_, _, lost) = report(&mut c, "rita", N, "a resharding").await;
    assert_eq!(lost, 0);
    assert_first_seen_in_order(&mut c, "rita").await;
    let on_new = cluster.cli(to, &["pubsub", "shardchannels"]);
    assert!(on_new.lines().any(|l| l == key), "the subscription is on the new master: {on_new}");
    c.connect("replayer", &one.url(), json!({"auth": {"token": token("rita"), "since": "0-0"}})).await.unwrap();
    let (_, _, lost) = report(&mut c, "replayer", N, "the history after a resharding").await;
    assert_eq!(lost, 0, "notifications missing from the history");
    c.stop().await;
    one.shutdown().await;
    two.shutdown().await;
}

/// Two instances on `cluster`: only `one` consumes the (retained) topic, `user`'s socket is on
/// `two`, so every record crosses Redis.
async fn consumer_and_socket_holder(kafka: &Kafka, cluster: &RedisCluster, user: &str) -> (Herald, Herald, Clients) {
    let yaml = config_yaml(kafka, None, json!({"redis": {"url": cluster.url(), "command_timeout_ms": 500}, "replay": {"history": 1000}}));
    // `live` (not retained) too, where copies would show: a retained copy is recognised by id.
    let one = Herald::start(&with_kafka(&yaml, "topics: [{name: user-notifications, retain: true}, live]")).await;
    let two = Herald::start(&with_kafka(&yaml, "topics: [elsewhere]")).await;
    one.wait_assigned(8).await;
    two.wait_assigned(4).await;
    let mut c = Clients::start().await;
    c.connect_as(user, &two.url(), user).await;
    (one, two, c)
}
