//! Redis Pub/Sub bus: one channel per user and one per group, subscribed while the user (or a
//! member of the group) has a socket here, and one broadcast channel every instance subscribes.
//!
//! Subscribing: on one server or a Sentinel-watched master, herald's own subscriber connection
//! (`subscriber.rs`, the only writer of SUBSCRIBE/UNSUBSCRIBE, so the order of a user's joins
//! and leaves is kept); on a cluster, fred's subscriber client, with a subscription manager and
//! a receiver here that hands messages to delivery workers (one user always to the same one,
//! which keeps a user's notifications in order); herald's own subscriber delivers as it reads.
//! Publishing pipelines a whole batch, over herald's own connection (`publisher.rs`) or, on a
//! cluster, through fred; a connection watcher reports readiness.

mod address;
mod channels;
mod cluster;
mod interest;
mod publisher;
mod replies;
pub mod resp;
mod sessions;
mod store;
mod subscriber;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, LuaInterface, PubsubInterface, StreamsInterface};
use fred::prelude::{Builder, Config as FredConfig, ReconnectPolicy};
use fred::types::{ClusterHash, CustomCommand};
use futures::StreamExt as _;
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use channels::{Channels, Owner};
use cluster::{SubscriptionManager, delivery_workers, receive};
use interest::{Interest, Op};
use replies::{frame_of, integer, parse_entries};
use resp::Frame;
use store::{STORE_AND_PUBLISH, STORE_AND_SPUBLISH, StoreScript};

use super::envelope;
use super::{Addressee, Inbound};
use super::{BusError, Published, Subscribing};
use crate::config::{ChannelPattern, RedisAddress, RedisConfig, RedisTarget, ReplayConfig};
use crate::metrics::Metrics;
use crate::replay::{History, NotificationId, Retained, history_after};
use crate::route::Notification;
use crate::supervise::Supervisor;
use serde_json::value::RawValue;

/// How far Redis's clock (stream ids) may be behind ours, for the retry search of the store
/// script: entries stored by a failed attempt are looked for from its start minus this.
const CLOCK_SKEW_MS: i64 = 60_000;
/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;
/// Event buffer of the publishing client, which subscribes to nothing.
const PUBLISHER_EVENT_BUFFER: usize = 32;
/// Sharded subscriptions go one slot per command; this many commands are in flight at once.
const SLOTS_IN_FLIGHT: usize = 256;

/// After Redis comes back, every instance must re-subscribe its users before their channels
/// have listeners again. Until this much time has passed since our own reconnection, "no
/// subscriber" is taken as "not re-subscribed yet": those notifications are published again,
/// not dropped.
const RESUBSCRIBE_SETTLE: Duration = Duration::from_secs(5);

/// Who holds the subscriptions.
enum Subscriber {
    /// herald's own connection: whether it is up.
    Own(Arc<AtomicBool>),
    /// fred's subscriber client (Redis Cluster).
    Fred(SubscriberClient),
}

impl Subscriber {
    fn is_connected(&self) -> bool {
        match self {
            Subscriber::Own(up) => up.load(Ordering::Acquire),
            Subscriber::Fred(client) => client.is_connected(),
        }
    }
}

pub struct RedisBus {
    /// fred: history reads, the store script's loading, and on a cluster all publishing.
    publisher: Client,
    /// herald's own publishing connection, on one server or a Sentinel-watched master.
    own_publisher: Option<publisher::Publisher>,
    subscriber: Arc<Subscriber>,
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
    /// When the publisher last reconnected; see [`RESUBSCRIBE_SETTLE`]. A connection made during
    /// start-up does not count: Redis did not just lose the other instances' subscriptions.
    reconnected_at: Arc<std::sync::Mutex<Option<Instant>>>,
    tasks: Vec<AbortHandle>,
}

impl RedisBus {
    pub async fn start(
        config: &RedisConfig,
        replay_config: &ReplayConfig,
        deliverer: Arc<dyn Inbound>,
        metrics: Arc<Metrics>,
        supervisor: &Supervisor,
    ) -> anyhow::Result<Self> {
        let cancel = supervisor.stop_token();
        // herald's own subscriber for one server or a Sentinel set; fred's on a cluster.
        let own = config.address.clone();
        let fred_config = match &own {
            Some(RedisAddress { target: RedisTarget::Sentinel { sentinels, master }, username, password, database }) => FredConfig {
                server: fred::types::config::ServerConfig::Sentinel {
                    hosts: sentinels.iter().map(|(h, p)| fred::types::config::Server::new(h.as_str(), *p)).collect(),
                    service_name: master.clone(),
                },
                username: username.clone(),
                password: password.clone(),
                database: *database,
                ..FredConfig::default()
            },
            _ => FredConfig::from_url(&config.url).map_err(|e| anyhow::anyhow!("redis.url: {e}"))?,
        };
        let mut builder = Builder::from_config(fred_config);
        let timeout = config.command_timeout;
        builder
            .with_performance_config(|p| {
                // Without a deadline a command issued during an outage waits forever.
                p.default_command_timeout = timeout;
                // The publisher receives no messages: fred's small default for its event
                // channels (each channel preallocates every slot) is plenty.
                p.broadcast_channel_capacity = PUBLISHER_EVENT_BUFFER;
            })
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        // No resending by fred after a dropped connection: a store script that ran but lost its
        // reply would run again and store twice. herald retries itself, with `publish_again`.
        builder.with_connection_config(|c| c.max_command_attempts = 1);
        let publisher = builder.build()?;
        publisher.connect();

        let sharded = config.sharded_pubsub;
        let stream = if sharded { replay_config.stream.hash_tagged() } else { replay_config.stream.clone() };
        let channels = Arc::new(Channels::new(config));
        let (ops, ops_rx) = mpsc::unbounded_channel();
        // Every instance hears broadcasts, for as long as it runs.
        let _ = ops.send(Op::Acquire(channels.broadcast().to_owned(), oneshot::channel().0));
        let mut tasks = Vec::new();
        let subscriber = match own {
            Some(address) => {
                let up = Arc::new(AtomicBool::new(false));
                let subscriptions = subscriber::Subscriptions {
                    address,
                    sharded,
                    channels: channels.clone(),
                    timeout,
                    metrics: metrics.clone(),
                    deliverer: deliverer.clone(),
                    connected: up.clone(),
                    interest: Interest::default(),
                };
                tasks.push(supervisor.spawn("redis subscriber", subscriptions.run(ops_rx, cancel.clone())));
                Subscriber::Own(up)
            }
            None => {
                let default_attempts = fred::types::config::ConnectionConfig::default().max_command_attempts;
                builder.with_connection_config(|c| c.max_command_attempts = default_attempts);
                // fred's default of 32 silently drops Pub/Sub messages under load.
                builder.with_performance_config(|p| p.broadcast_channel_capacity = config.pubsub_buffer);
                let client = builder.build_subscriber_client()?;
                client.connect();
                let manager =
                    SubscriptionManager { subscriber: client.clone(), sharded, metrics: metrics.clone(), interest: Interest::default() };
                tasks.push(supervisor.spawn("redis subscription manager", manager.run(ops_rx, cancel.clone())));
                let workers = delivery_workers(config.pubsub_buffer, &channels, &deliverer, &metrics);
                tasks.push(
                    supervisor.spawn("redis receiver", receive(client.clone(), channels.clone(), workers, metrics.clone(), cancel.clone())),
                );
                Subscriber::Fred(client)
            }
        };
        let subscriber = Arc::new(subscriber);
        let own_publisher = config.address.clone().map(|a| publisher::Publisher::new(a, timeout));
        let connected = async {
            let publisher_up = tokio::time::timeout(timeout, publisher.wait_for_connect()).await;
            let deadline = Instant::now() + timeout;
            while !subscriber.is_connected() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            matches!(publisher_up, Ok(Ok(()))) && subscriber.is_connected()
        };
        if !connected.await {
            warn!(url = %redact(&config.url), "Redis is not reachable yet; herald keeps retrying and stays unready until it is.");
        }

        let store = StoreScript::new(if sharded { STORE_AND_SPUBLISH } else { STORE_AND_PUBLISH });
        if publisher.is_connected() {
            store.load_or_warn(&publisher).await;
        }
        let reconnected_at = Arc::new(std::sync::Mutex::new(None));
        tasks.push(supervisor.spawn(
            "redis connection watcher",
            watch_connection(publisher.clone(), subscriber.clone(), store.clone(), reconnected_at.clone(), metrics, cancel),
        ));
        Ok(Self {
            publisher,
            own_publisher,
            subscriber,
            sharded,
            store,
            channels,
            stream,
            revoked_key: if sharded { config.revoked_key.hash_tagged() } else { config.revoked_key.clone() },
            replay: replay_config.clone(),
            ops,
            command_timeout: timeout,
            reconnected_at,
            tasks,
        })
    }

    pub async fn publish(&self, batch: &[Notification]) -> Result<Vec<Published>, BusError> {
        self.publish_batch(batch, None).await
    }

    /// [`Self::publish`] for a batch an attempt begun at `first_attempt_ms` may have partly
    /// done: retained notifications it stored are found in the history, not stored again.
    pub async fn publish_again(&self, batch: &[Notification], first_attempt_ms: i64) -> Result<Vec<Published>, BusError> {
        // What that attempt stored has an id from Redis's clock: allow for the two clocks to differ.
        let since = (first_attempt_ms - CLOCK_SKEW_MS).max(0);
        self.publish_batch(batch, Some(since)).await
    }

    async fn publish_batch(&self, batch: &[Notification], retry_since_ms: Option<i64>) -> Result<Vec<Published>, BusError> {
        let mut replies = self.send(batch, retry_since_ms).await?;
        // A restarted (or failed-over) Redis has an empty script cache. The reconnect usually
        // reloads it first; these commands got there before, never ran, and are sent once more.
        let missing: Vec<usize> =
            replies.iter().enumerate().filter(|(_, r)| matches!(r, Err(e) if e.starts_with("NOSCRIPT"))).map(|(i, _)| i).collect();
        if !missing.is_empty() {
            self.store.load(&self.publisher).await.map_err(|e| BusError(format!("Redis lost the store script and cannot load it: {e}")))?;
            let again: Vec<Notification> = missing.iter().map(|&i| batch[i].clone()).collect();
            for (i, reply) in missing.into_iter().zip(self.send(&again, retry_since_ms).await?) {
                replies[i] = reply;
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for (n, reply) in batch.iter().zip(replies) {
            let value = reply.map_err(BusError)?;
            let (receivers, stored) = if stored_for(n).is_some() {
                match value {
                    Frame::Array(Some(parts)) => {
                        let id = parts.first().and_then(Frame::as_str).and_then(|id| id.parse::<NotificationId>().ok());
                        let Some(id) = id else {
                            return Err(BusError(format!("unexpected id from the store script: {:?}", parts.first())));
                        };
                        (integer(parts.get(1)), Some(id))
                    }
                    other => return Err(BusError(format!("unexpected reply from the store script: {other:?}"))),
                }
            } else {
                (integer(Some(&value)), None)
            };
            out.push(Published { receivers, stored });
        }
        Ok(out)
    }

    /// One pipeline for the batch: each notification's reply, in order (error replies as `Err`).
    async fn send(&self, batch: &[Notification], retry_since_ms: Option<i64>) -> Result<Vec<Result<Frame, String>>, BusError> {
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

    /// Sends commands (each its arguments, the command name first) in one pipeline, through
    /// herald's own connection or, on a cluster, through fred (which routes each by its slot).
    async fn pipeline(&self, commands: Vec<Vec<Vec<u8>>>, expected: usize) -> Result<Vec<Result<Frame, String>>, BusError> {
        let replies = match &self.own_publisher {
            Some(publisher) => {
                let mut pipeline = publisher::Pipeline::default();
                for args in &commands {
                    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    pipeline.push(&args);
                }
                let frames = publisher.send(&pipeline).await.map_err(BusError)?;
                frames
                    .into_iter()
                    .map(|f| match f {
                        Frame::Error(e) => Err(String::from_utf8_lossy(&e).into_owned()),
                        other => Ok(other),
                    })
                    .collect::<Vec<_>>()
            }
            None => self.fred_pipeline(commands).await?,
        };
        // Callers match results to notifications by position.
        if replies.len() != expected {
            return Err(BusError(format!("{} replies to {} commands", replies.len(), expected)));
        }
        Ok(replies)
    }

    async fn fred_pipeline(&self, commands: Vec<Vec<Vec<u8>>>) -> Result<Vec<Result<Frame, String>>, BusError> {
        let pipeline = self.publisher.pipeline();
        for mut args in commands {
            let name = args.remove(0);
            let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
            let queued: Result<(), _> = match name.as_slice() {
                b"EVALSHA" => {
                    // Routed by the stream key: FirstKey would hash the script's SHA1 (EVALSHA's
                    // first argument) and every call would bounce off a MOVED redirect on a cluster.
                    let slot = fred::util::redis_keyslot(&args[2]);
                    pipeline.custom(CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false), args).await
                }
                b"SPUBLISH" => pipeline.spublish(String::from_utf8_lossy(&args[0]).into_owned(), Bytes::clone(&args[1])).await,
                _ => pipeline.publish(String::from_utf8_lossy(&args[0]).into_owned(), Bytes::clone(&args[1])).await,
            };
            queued.map_err(|e| BusError(e.to_string()))?;
        }
        let replies = pipeline.try_all::<fred::types::Value>().await;
        Ok(replies.into_iter().map(|r| r.map(frame_of).map_err(|e| e.to_string())).collect())
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
        let by_command: Vec<(u16, Vec<usize>)> = if self.own_publisher.is_some() || !self.sharded {
            vec![(0, (0..channels.len()).collect())]
        } else {
            let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
            for (i, channel) in channels.iter().enumerate() {
                by_slot.entry(fred::util::redis_keyslot(channel.as_bytes())).or_default().push(i);
            }
            by_slot.into_iter().collect()
        };
        let mut counts = vec![0usize; channels.len()];
        let replies = match &self.own_publisher {
            Some(_) => {
                let mut args = vec![b"PUBSUB".to_vec(), sub.to_vec()];
                args.extend(channels.iter().map(|c| c.as_bytes().to_vec()));
                self.pipeline(vec![args], 1).await?
            }
            None => {
                let pipeline = self.publisher.pipeline();
                for (slot, members) in &by_command {
                    let mut args: Vec<String> = vec![String::from_utf8_lossy(sub).into_owned()];
                    args.extend(members.iter().map(|&i| channels[i].clone()));
                    let hash = if self.sharded { ClusterHash::Custom(*slot) } else { ClusterHash::Random };
                    pipeline
                        .custom::<(), _>(CustomCommand::new_static("PUBSUB", hash, false), args)
                        .await
                        .map_err(|e| BusError(e.to_string()))?;
                }
                let replies = pipeline.try_all::<fred::types::Value>().await;
                replies.into_iter().map(|r| r.map(frame_of).map_err(|e| e.to_string())).collect()
            }
        };
        if replies.len() != by_command.len() {
            return Err(BusError(format!("{} replies to {} PUBSUB commands", replies.len(), by_command.len())));
        }
        for ((_, members), reply) in by_command.iter().zip(replies) {
            // [channel, count, channel, count, ...], in the order asked.
            let Frame::Array(Some(items)) = reply.map_err(BusError)? else {
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
        let fred = self.reconnected_at.lock().ok().and_then(|t| *t);
        let own = self.own_publisher.as_ref().and_then(|p| p.reconnected_at());
        [fred, own].into_iter().flatten().any(|t| t.elapsed() < RESUBSCRIBE_SETTLE)
    }

    pub async fn history(&self, user_id: &str, since: Option<NotificationId>, last_n: usize) -> Result<History, BusError> {
        let key = self.stream.channel(user_id);
        let count = self.replay.history as u64 + 1;
        // Reads are safe to resend after a dropped connection, unlike the publisher's writes.
        let reader = self.publisher.with_options(&fred::types::config::Options { max_attempts: Some(3), ..Default::default() });
        let entries: fred::types::Value = match since {
            Some(since) => reader.xrange(key, since.to_string(), "+", Some(count)).await,
            None if last_n > 0 => reader.xrevrange(key, "+", "-", Some(last_n as u64)).await,
            None => return Ok(History::default()),
        }
        .map_err(|e| BusError(e.to_string()))?;
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
        Subscribing { pending, timeout: self.command_timeout }
    }

    pub fn unsubscribe(&self, user: Option<&str>, groups: &[Arc<str>]) {
        let channels = user.map(|u| self.channels.user(u)).into_iter().chain(groups.iter().map(|g| self.channels.group(g)));
        for channel in channels {
            let _ = self.ops.send(Op::Release(channel));
        }
    }

    pub fn is_connected(&self) -> bool {
        self.publisher.is_connected() && self.subscriber.is_connected()
    }

    pub async fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if let Subscriber::Fred(client) = &*self.subscriber {
                let _ = client.quit().await;
            }
            let _ = self.publisher.quit().await;
        })
        .await;
    }
}

/// Decodes one bus message and emits it to its audience's local sockets.
fn deliver_one(channels: &Channels, deliverer: &dyn Inbound, metrics: &Metrics, channel: &[u8], payload: &[u8]) {
    let Some(owner) = std::str::from_utf8(channel).ok().and_then(|c| channels.owner(c)) else { return };
    if owner == Owner::Broadcast
        && let Some(control) = envelope::decode_control(payload)
    {
        if control.kind == "end" {
            let users: Vec<&str> = control.users.iter().map(|u| &**u).collect();
            deliverer.end_sessions(&users, control.revoked_at_ms);
        }
        return;
    }
    match envelope::decode(payload) {
        Ok(env) => {
            metrics.received.increment(1);
            let consumed_us = env.consumed_us();
            let among: Vec<&str> = env.among.iter().map(|g| &**g).collect();
            let to = match owner {
                Owner::User(user) => {
                    if let Some(Ok(id)) = env.id.as_deref().map(str::parse::<NotificationId>) {
                        deliverer.deliver_retained(user, id, &env.event, env.payload, env.timestamp_ms, consumed_us);
                        return;
                    }
                    Addressee::User(user)
                }
                Owner::Group(name) => Addressee::Group { name, among: &among },
                Owner::Broadcast => Addressee::Everyone,
            };
            deliverer.deliver(to, &env.event, env.payload, env.origin.as_deref(), env.timestamp_ms, consumed_us);
        }
        Err(e) => {
            metrics.bus_decode_failures.increment(1);
            debug!(channel = %String::from_utf8_lossy(channel), error = %e, "Ignored a bus message that is not a herald envelope.");
        }
    }
}

/// The user whose history a notification is stored in: retained ones only, which are a user's.
fn stored_for(n: &Notification) -> Option<&str> {
    n.to.user().filter(|_| n.retain)
}

async fn watch_connection(
    publisher: Client,
    subscriber: Arc<Subscriber>,
    store: StoreScript,
    reconnected_at: Arc<std::sync::Mutex<Option<Instant>>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut reconnects = publisher.reconnect_rx();
    let mut was_up = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            event = reconnects.recv() => {
                if matches!(event, Err(RecvError::Closed)) {
                    return;
                }
                if let Ok(mut t) = reconnected_at.lock() {
                    *t = Some(Instant::now());
                }
                store.load_or_warn(&publisher).await;
            }
        }
        let up = publisher.is_connected() && subscriber.is_connected();
        metrics.redis.observe(up);
        if was_up != Some(up) {
            if up {
                info!("Redis connected.");
            } else {
                warn!("Redis disconnected; publishing waits and retries.");
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
