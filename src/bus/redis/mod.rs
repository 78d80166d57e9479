//! Redis Pub/Sub bus: one channel per user and one per group, subscribed while the user (or a
//! member of the group) has a socket here, and one broadcast channel every instance subscribes.
//!
//! All of it runs on herald's own connections (no client library: docs/design/redis-client.md
//! says why, with the figures), plain or TLS: a subscriber connection (`subscriber.rs`, the only
//! writer of SUBSCRIBE/UNSUBSCRIBE, so the order of a user's joins and leaves is kept, and
//! delivering each message as it reads it), one per master on a cluster (`cluster.rs`); and
//! pipelined connections for publishing and reads (`nodes.rs`), per master on a cluster,
//! following its slot map (`topology.rs`). A watcher pings them and reports readiness.

mod address;
mod channels;
mod cluster;
mod health;
mod interest;
mod link;
mod nodes;
mod pipelined;
mod replies;
pub mod resp;
mod sessions;
mod slots;
mod store;
mod subscriber;
mod topology;

pub use topology::interpret_replies;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use address::Access;
use channels::Channels;
use cluster::{ShardedSubscriptions, ShardsUp};
use health::Health;
use interest::{Interest, Op};
use link::LinkError;
use nodes::{Lane, Nodes};
use replies::{integer, parse_entries};
use resp::Value;
use slots::slot_of;
use store::{STORE_AND_PUBLISH, STORE_AND_SPUBLISH, StoreScript};
use topology::Command;

use super::envelope;
use super::inbound::Inbound;
use super::outcome::{BusError, Published, Subscribing};
use crate::config::{ChannelPattern, RedisConfig, ReplayConfig};
use crate::metrics::Metrics;
use crate::notification::Notification;
use crate::replay::{History, NotificationId, history_after};
use crate::supervise::Supervisor;

/// How far Redis's clock (stream ids) may be behind ours, for the retry search of the store
/// script: entries stored by a failed attempt are looked for from its start minus this.
const CLOCK_SKEW_MS: i64 = 60_000;
/// How often the watcher pings Redis (every master of a cluster) for readiness.
const PING_EVERY: Duration = Duration::from_secs(1);

/// After Redis comes back, every instance must re-subscribe its users before their channels
/// have listeners again. Until this much time has passed since our own reconnection, "no
/// subscriber" is taken as "not re-subscribed yet": those notifications are published again,
/// not dropped.
const RESUBSCRIBE_SETTLE: Duration = Duration::from_secs(5);

/// Whether the subscriptions' connections are up.
enum Subscriber {
    /// One connection: the server, or the Sentinels' master.
    One(Arc<AtomicBool>),
    /// One per cluster master.
    Shards(ShardsUp),
}

impl Subscriber {
    fn is_connected(&self) -> bool {
        match self {
            Subscriber::One(up) => up.load(Ordering::Acquire),
            Subscriber::Shards(up) => up.all(),
        }
    }
}

pub struct RedisBus {
    nodes: Arc<Nodes>,
    /// The last command or ping through `nodes` went through.
    nodes_up: Arc<AtomicBool>,
    subscriber: Arc<Subscriber>,
    health: Arc<Health>,
    /// SSUBSCRIBE/SPUBLISH, with hash-tagged channel and stream names.
    sharded: bool,
    /// The store script for this mode, called by its SHA1 (EVALSHA) rather than sending its
    /// kilobyte of text, for Redis to hash, with every retained notification.
    store: StoreScript,
    channels: Arc<Channels>,
    stream: ChannelPattern,
    /// Key of a user's token revocation (hash-tagged like the stream on a sharded cluster).
    revoked_key: ChannelPattern,
    replay: ReplayConfig,
    ops: mpsc::UnboundedSender<Op>,
    command_timeout: Duration,
    tasks: Vec<AbortHandle>,
}

impl RedisBus {
    pub async fn start(
        config: &RedisConfig,
        replay_config: &ReplayConfig,
        instance: Option<&str>,
        deliverer: Arc<dyn Inbound>,
        metrics: Arc<Metrics>,
        supervisor: &Supervisor,
    ) -> anyhow::Result<Self> {
        let cancel = supervisor.stop_token();
        let timeout = config.command_timeout;
        let access = Access { address: config.address.clone(), tls: config.tls.as_ref().map(|t| t.client.clone()), timeout };
        let nodes = Arc::new(Nodes::new(access.clone(), config.is_cluster()));
        let health = Arc::new(Health::default());
        let store = StoreScript::new(if config.sharded_pubsub { STORE_AND_SPUBLISH } else { STORE_AND_PUBLISH });

        // The first contact: settings that cannot work stop here, with the key to change.
        let nodes_up = Arc::new(AtomicBool::new(false));
        match nodes.everywhere(&[b"PING"]).await {
            Ok(()) => {
                nodes_up.store(true, Ordering::Release);
                store.load_or_warn(&nodes).await;
            }
            Err(LinkError::Untrusted(e)) => {
                anyhow::bail!(
                    "redis.tls.ca_file: Redis's certificate is not trusted (by that CA bundle, or the system roots if unset): {e}"
                )
            }
            Err(LinkError::Refused(e)) => anyhow::bail!("redis.url: {e}"),
            Err(LinkError::Unreachable(e)) => {
                health.failed("commands", &LinkError::Unreachable(e.clone()));
                warn!(url = %redact(&config.url), error = %e, "Redis is not reachable yet; herald keeps retrying and stays unready until it is.");
            }
        }

        let sharded = config.sharded_pubsub;
        let stream = if sharded { replay_config.stream.hash_tagged() } else { replay_config.stream.clone() };
        let channels = Arc::new(Channels::new(config));
        let (ops, ops_rx) = mpsc::unbounded_channel();
        // Every instance hears broadcasts, for as long as it runs.
        let _ = ops.send(Op::Acquire(channels.broadcast().to_owned(), oneshot::channel().0));
        // And its own channel, for the requests other instances forward to it.
        if let Some(tag) = instance {
            let _ = ops.send(Op::Acquire(channels.instance(tag), oneshot::channel().0));
        }
        let mut tasks = Vec::new();
        let subscriber = match &*nodes {
            Nodes::Single { .. } => {
                let up = Arc::new(AtomicBool::new(false));
                let subscriptions = subscriber::Subscriptions {
                    access,
                    node: None,
                    topology: None,
                    health: health.clone(),
                    sharded,
                    channels: channels.clone(),
                    timeout,
                    metrics: metrics.clone(),
                    deliverer: deliverer.clone(),
                    connected: up.clone(),
                    interest: Interest::default(),
                    hold_until: None,
                    reported: 0,
                };
                tasks.push(supervisor.spawn("redis subscriber", subscriptions.run(ops_rx, cancel.clone())));
                Subscriber::One(up)
            }
            Nodes::Cluster(cluster) => {
                let up = ShardsUp::default();
                let shards = ShardedSubscriptions {
                    cluster: cluster.clone(),
                    sharded,
                    channels: channels.clone(),
                    timeout,
                    metrics: metrics.clone(),
                    deliverer: deliverer.clone(),
                    health: health.clone(),
                    up: up.clone(),
                };
                tasks.push(supervisor.spawn("redis cluster subscribers", shards.run(ops_rx, cancel.clone())));
                Subscriber::Shards(up)
            }
        };
        let subscriber = Arc::new(subscriber);
        let deadline = Instant::now() + timeout;
        while !subscriber.is_connected() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tasks.push(supervisor.spawn(
            "redis connection watcher",
            watch_connection(nodes.clone(), nodes_up.clone(), subscriber.clone(), store.clone(), health.clone(), metrics, cancel),
        ));
        Ok(Self {
            nodes,
            nodes_up,
            subscriber,
            health,
            sharded,
            store,
            channels,
            stream,
            revoked_key: if sharded { config.revoked_key.hash_tagged() } else { config.revoked_key.clone() },
            replay: replay_config.clone(),
            ops,
            command_timeout: timeout,
            tasks,
        })
    }

    pub async fn publish(&self, batch: &[Notification]) -> Result<Vec<Published>, BusError> {
        self.publish_batch(batch, None).await
    }

    /// [`Self::publish`] for a batch an attempt begun at `first_attempt_ms` may have partly
    /// done: retained notifications it stored are found in the history, not stored again.
    pub async fn publish_again(&self, batch: &[Notification], first_attempt_ms: i64) -> Result<Vec<Published>, BusError> {
        self.publish_batch(batch, Some(first_attempt_ms)).await
    }

    async fn publish_batch(&self, batch: &[Notification], retry_since_ms: Option<i64>) -> Result<Vec<Published>, BusError> {
        self.publish_each(batch, retry_since_ms).await?.into_iter().map(|r| r.map_err(BusError)).collect()
    }

    /// Each notification's outcome: on a cluster, those whose master was down fail alone, and
    /// only they are published again (the others reached their users already). `Err`: nothing
    /// could be sent.
    pub async fn publish_each(
        &self,
        batch: &[Notification],
        retry_since_ms: Option<i64>,
    ) -> Result<Vec<Result<Published, String>>, BusError> {
        // What an earlier attempt stored has an id from Redis's clock: allow for the two clocks
        // to differ (here, so that every retry path does).
        let retry_since_ms = retry_since_ms.map(|ms| (ms - CLOCK_SKEW_MS).max(0));
        let mut replies = self.send(batch, retry_since_ms).await?;
        // A restarted (or failed-over) Redis has an empty script cache. The reconnect usually
        // reloads it first; these commands got there before, never ran, and are sent once more.
        let missing: Vec<usize> =
            replies.iter().enumerate().filter(|(_, r)| matches!(r, Err(e) if e.starts_with("NOSCRIPT"))).map(|(i, _)| i).collect();
        if !missing.is_empty() {
            self.store.load(&self.nodes).await.map_err(|e| BusError(format!("Redis lost the store script and cannot load it: {e}")))?;
            let again: Vec<Notification> = missing.iter().map(|&i| batch[i].clone()).collect();
            for (i, reply) in missing.into_iter().zip(self.send(&again, retry_since_ms).await?) {
                replies[i] = reply;
            }
        }
        Ok(batch.iter().zip(replies).map(|(n, reply)| published(n, reply?)).collect())
    }

    /// One pipeline for the batch: each notification's reply, in order (error replies as `Err`).
    async fn send(&self, batch: &[Notification], retry_since_ms: Option<i64>) -> Result<Vec<Result<Value, String>>, BusError> {
        let now = crate::clock::unix_ms().max(0) as u64;
        let oldest_kept = now.saturating_sub(self.replay.max_age.as_millis() as u64);
        let commands = batch.iter().map(|n| {
            let channel = self.channels.of(n);
            if let Some(user) = stored_for(n) {
                let args: Vec<Vec<u8>> = vec![
                    b"EVALSHA".to_vec(),
                    self.store.sha.clone().into_bytes(),
                    b"2".to_vec(),
                    self.stream.channel(user).into_bytes(),
                    channel.into_bytes(),
                    n.event.as_bytes().to_vec(),
                    n.timestamp_ms.to_string().into_bytes(),
                    n.payload.get().as_bytes().to_vec(),
                    self.replay.history.to_string().into_bytes(),
                    oldest_kept.to_string().into_bytes(),
                    self.replay.max_age.as_millis().to_string().into_bytes(),
                    n.consumed_us.to_string().into_bytes(),
                    n.origin.as_deref().unwrap_or_default().as_bytes().to_vec(),
                    retry_since_ms.map(|ms| ms.to_string()).unwrap_or_default().into_bytes(),
                ];
                args
            } else {
                vec![self.publish_verb().to_vec(), channel.into_bytes(), envelope::encode(n).into_bytes()]
            }
        });
        self.pipeline(commands.collect(), batch.len()).await
    }

    fn publish_verb(&self) -> &'static [u8] {
        if self.sharded { b"SPUBLISH" } else { b"PUBLISH" }
    }

    /// Sends commands (each its arguments, the command name first) in one pipeline (one per
    /// master on a cluster, each command to the master of its key's or channel's slot).
    async fn pipeline(&self, commands: Vec<Vec<Vec<u8>>>, expected: usize) -> Result<Vec<Result<Value, String>>, BusError> {
        // Slots matter on a cluster only.
        let cluster = matches!(*self.nodes, Nodes::Cluster(_));
        let commands: Vec<Command> =
            commands.into_iter().map(|args| if cluster { routed(args) } else { Command { args, slot: 0 } }).collect();
        let replies = self.run(&commands, Lane::Write).await?;
        // Callers match results to notifications by position.
        if replies.len() != expected {
            return Err(BusError(format!("{} replies to {} commands", replies.len(), expected)));
        }
        Ok(replies)
    }

    /// Sends commands, noting whether the connections work.
    async fn run(&self, commands: &[Command], lane: Lane) -> Result<Vec<Result<Value, String>>, BusError> {
        let result = self.nodes.send(commands, lane).await;
        // Down at once on a failure; up again when the watcher's PING reaches every master.
        if result.is_err() {
            self.nodes_up.store(false, Ordering::Release);
        }
        match result {
            Ok(replies) => {
                self.health.recovered("commands");
                Ok(replies)
            }
            Err(e) => {
                self.health.failed("commands", &e);
                Err(BusError(e.to_string()))
            }
        }
    }

    /// Publishes a message on instance `tag`'s own channel; how many instances heard it.
    pub async fn relay(&self, tag: &str, message: &envelope::Relayed) -> Result<usize, BusError> {
        let command = vec![self.publish_verb().to_vec(), self.channels.instance(tag).into_bytes(), message.encode().into_bytes()];
        // On the read connection: a client's poll never waits behind a batch of notifications.
        let reply = self.run(&[routed(command)], Lane::Read).await?.pop().unwrap_or_else(|| Err("no reply".into()));
        reply.map(|f| integer(Some(&f))).map_err(BusError)
    }

    /// The live message of stored notifications again, with their ids, without storing them again.
    pub async fn publish_live(&self, stored: &[(Notification, NotificationId)]) -> Result<Vec<usize>, BusError> {
        let commands = stored
            .iter()
            .map(|(n, id)| {
                vec![self.publish_verb().to_vec(), self.channels.of(n).into_bytes(), envelope::encode_stored(n, *id).into_bytes()]
            })
            .collect();
        let replies = self.pipeline(commands, stored.len()).await?;
        replies.into_iter().map(|r| r.map(|f| integer(Some(&f))).map_err(BusError)).collect()
    }

    /// Subscribers per user (then group) channel: each instance holding a user's (or a member's)
    /// sockets subscribes once. `PUBSUB NUMSUB` (or `SHARDNUMSUB`) names every channel in one
    /// command; on a cluster one command per slot, each to the shard owning it, all in one pipeline.
    pub async fn presence(&self, users: &[String], groups: &[String]) -> Result<(Vec<usize>, Vec<usize>), BusError> {
        let channels = users.iter().map(|u| self.channels.user(u)).chain(groups.iter().map(|g| self.channels.group(g)));
        let mut counts = self.subscribers(channels).await?;
        let groups = counts.split_off(users.len());
        Ok((counts, groups))
    }

    async fn subscribers(&self, channels: impl Iterator<Item = String>) -> Result<Vec<usize>, BusError> {
        let sub: &[u8] = if self.sharded { b"SHARDNUMSUB" } else { b"NUMSUB" };
        let channels: Vec<String> = channels.collect();
        // On a cluster, a channel's subscribers are counted by the master of its slot (where
        // every instance subscribes it): one command per slot. One server takes one command.
        let by_command: Vec<(u16, Vec<usize>)> = match &*self.nodes {
            Nodes::Single { .. } => vec![(0, (0..channels.len()).collect())],
            Nodes::Cluster(_) => {
                let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
                for (i, channel) in channels.iter().enumerate() {
                    by_slot.entry(slot_of(channel.as_bytes())).or_default().push(i);
                }
                by_slot.into_iter().collect()
            }
        };
        let commands: Vec<Command> = by_command
            .iter()
            .map(|(slot, members)| {
                let mut args = vec![b"PUBSUB".to_vec(), sub.to_vec()];
                args.extend(members.iter().map(|&i| channels[i].as_bytes().to_vec()));
                Command { args, slot: *slot }
            })
            .collect();
        let replies = self.run(&commands, Lane::Read).await?;
        let mut counts = vec![0usize; channels.len()];
        for ((_, members), reply) in by_command.iter().zip(replies) {
            // [channel, count, channel, count, ...], in the order asked.
            let Value::Array(Some(items)) = reply.map_err(BusError)? else {
                return Err(BusError("unexpected PUBSUB reply".into()));
            };
            for (&i, pair) in members.iter().zip(items.chunks(2)) {
                counts[i] = integer(pair.get(1));
            }
        }
        Ok(counts)
    }

    /// True for a while after reconnecting to Redis: other instances may not have re-subscribed
    /// their users yet, so "no subscriber" may not mean "offline".
    pub fn settling(&self) -> bool {
        self.nodes.reconnected_at().is_some_and(|t| t.elapsed() < RESUBSCRIBE_SETTLE)
    }

    pub async fn history(&self, user_id: &str, since: Option<NotificationId>, last_n: usize) -> Result<History, BusError> {
        let key = self.stream.channel(user_id).into_bytes();
        let count = (self.replay.history as u64 + 1).to_string().into_bytes();
        let args: Vec<Vec<u8>> = match since {
            Some(since) => vec![b"XRANGE".to_vec(), key, since.to_string().into_bytes(), b"+".to_vec(), b"COUNT".to_vec(), count],
            None if last_n > 0 => {
                vec![b"XREVRANGE".to_vec(), key, b"+".to_vec(), b"-".to_vec(), b"COUNT".to_vec(), last_n.to_string().into_bytes()]
            }
            None => return Ok(History::default()),
        };
        let command = [routed(args)];
        // Reads are safe to send again after a dropped connection, unlike the publisher's writes.
        let mut attempt = 0;
        let entries = loop {
            attempt += 1;
            match self.run(&command, Lane::Read).await {
                Ok(mut replies) => break replies.pop().unwrap_or_else(|| Err("no reply".into())).map_err(BusError)?,
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => {}
            }
        };
        let mut items = parse_entries(entries);
        if since.is_none() {
            items.reverse();
        }
        Ok(history_after(since, items))
    }

    pub fn subscribe(&self, user: Option<&str>, groups: &[Arc<str>]) -> Subscribing {
        let channels = user.map(|u| self.channels.user(u)).into_iter().chain(groups.iter().map(|g| self.channels.group(g)));
        let mut pending = Vec::new();
        for channel in channels {
            let (tx, rx) = oneshot::channel();
            if self.ops.send(Op::Acquire(channel, tx)).is_ok() {
                pending.push(rx);
            }
        }
        Subscribing::new(pending, self.command_timeout)
    }

    pub fn unsubscribe(&self, user: Option<&str>, groups: &[Arc<str>]) {
        let channels = user.map(|u| self.channels.user(u)).into_iter().chain(groups.iter().map(|g| self.channels.group(g)));
        for channel in channels {
            let _ = self.ops.send(Op::Release(channel));
        }
    }

    pub fn is_connected(&self) -> bool {
        self.nodes_up.load(Ordering::Acquire) && self.subscriber.is_connected()
    }

    /// Why Redis is not usable now, one line per connection with a problem.
    pub fn problems(&self) -> Vec<String> {
        self.health.problems()
    }

    pub async fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A command with the slot whose master runs it: a script's first key (the stream), or the
/// key or channel right after the command's name.
fn routed(args: Vec<Vec<u8>>) -> Command {
    let key = if args[0] == b"EVALSHA" { args.get(3) } else { args.get(1) };
    let slot = key.map_or(0, |k| slot_of(k));
    Command { args, slot }
}

/// What a publish reply says of its notification: instances reached, and the history id of a
/// retained one.
fn published(n: &Notification, reply: Value) -> Result<Published, String> {
    if stored_for(n).is_none() {
        return Ok(Published { receivers: integer(Some(&reply)), stored: None });
    }
    match reply {
        Value::Array(Some(parts)) => {
            let id = parts.first().and_then(Value::as_str).and_then(|id| id.parse::<NotificationId>().ok());
            let Some(id) = id else { return Err(format!("unexpected id from the store script: {:?}", parts.first())) };
            Ok(Published { receivers: integer(parts.get(1)), stored: Some(id) })
        }
        other => Err(format!("unexpected reply from the store script: {other:?}")),
    }
}

/// The user whose history a notification is stored in: retained ones only, which are a user's.
fn stored_for(n: &Notification) -> Option<&str> {
    n.to.user().filter(|_| n.retain)
}

/// Pings Redis (every master of a cluster) for readiness, and loads the store script again
/// after a reconnection (a restarted or failed-over Redis has an empty script cache).
async fn watch_connection(
    nodes: Arc<Nodes>,
    nodes_up: Arc<AtomicBool>,
    subscriber: Arc<Subscriber>,
    store: StoreScript,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(PING_EVERY);
    let mut was_up = None;
    let mut loaded_after = nodes.reconnected_at();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match nodes.everywhere(&[b"PING"]).await {
            Ok(()) => {
                nodes_up.store(true, Ordering::Release);
                health.recovered("commands");
            }
            Err(e) => {
                nodes_up.store(false, Ordering::Release);
                health.failed("commands", &e);
            }
        }
        let reconnected = nodes.reconnected_at();
        if nodes_up.load(Ordering::Acquire) && (reconnected != loaded_after || was_up == Some(false)) {
            store.load_or_warn(&nodes).await;
            loaded_after = reconnected;
        }
        let up = nodes_up.load(Ordering::Acquire) && subscriber.is_connected();
        metrics.redis.observe(up);
        if was_up != Some(up) {
            if up {
                info!("Redis connected.");
            } else {
                warn!(problems = ?health.problems(), "Redis disconnected; publishing waits and retries.");
            }
            was_up = Some(up);
        }
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
