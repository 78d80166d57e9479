//! Redis Pub/Sub bus: one channel per user, subscribed while the user has a socket here.
//!
//! Three tasks: the subscription manager (the only writer of SUBSCRIBE/UNSUBSCRIBE, so the
//! order of a user's joins and leaves is kept), the receiver (Pub/Sub messages -> local
//! sockets), and a connection watcher for readiness. Publishing pipelines a whole batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, LuaInterface, PubsubInterface, StreamsInterface};
use fred::prelude::{Builder, Config as FredConfig, ReconnectPolicy};
use fred::types::{ClusterHash, CustomCommand, Message};
use futures::StreamExt as _;
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::envelope;
use super::{BusError, Published};
use crate::config::{ChannelPattern, RedisConfig, ReplayConfig};
use crate::gateway::Deliverer;
use crate::metrics::Metrics;
use crate::replay::{History, NotificationId, Retained, history_after};
use crate::route::Notification;
use serde_json::value::RawValue;

/// How far Redis's clock (stream ids) may be behind ours, for the retry search of the store
/// script: entries stored by a failed attempt are looked for from its start minus this.
const CLOCK_SKEW_MS: i64 = 60_000;
/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;
/// Event buffer of the publishing client, which subscribes to nothing.
const PUBLISHER_EVENT_BUFFER: usize = 32;
/// Messages queued per delivery worker: a burst waits here, in memory taken only as it fills,
/// rather than overflow the Redis client's fixed buffer.
const WORKER_QUEUE: usize = 1 << 16;
/// Sharded subscriptions go one slot per command; this many commands are in flight at once.
const SLOTS_IN_FLIGHT: usize = 256;

/// Stores a retained notification in the user's stream and publishes it, as one atomic step:
/// a notification is never in the history and missing from the live stream, or the reverse.
/// KEYS: stream, channel. ARGV: event, timestamp ms, payload JSON, max count, min id (age), ttl ms,
/// consumed us (live message only: the history keeps what a replay needs), origin (`''` for
/// none), and for a retry the id the first attempt could not have stored before (else `''`).
///
/// A retry first looks among the entries since then for one with the same origin and payload:
/// an earlier attempt may have stored the notification and lost only its reply. If found, it is
/// published again with its first id (which each socket's replay gate recognises) and not stored
/// twice. First attempts skip the search, so it costs nothing on the normal path.
macro_rules! store_then {
    ($publish:literal) => {
        concat!(
            "local id\n",
            "if ARGV[9] ~= '' and ARGV[8] ~= '' then\n",
            "  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[1], '+', ARGV[9], 'COUNT', ARGV[4])) do\n",
            "    local fields, origin, payload = entry[2], nil, nil\n",
            "    for i = 1, #fields, 2 do\n",
            "      if fields[i] == 'o' then origin = fields[i + 1] elseif fields[i] == 'p' then payload = fields[i + 1] end\n",
            "    end\n",
            "    if origin == ARGV[8] and payload == ARGV[3] then id = entry[1] break end\n",
            "  end\n",
            "end\n",
            "if not id then\n",
            "  if ARGV[8] == '' then\n",
            "    id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '*', 'e', ARGV[1], 't', ARGV[2], 'p', ARGV[3])\n",
            "  else\n",
            "    id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '*', 'e', ARGV[1], 't', ARGV[2], 'p', ARGV[3], 'o', ARGV[8])\n",
            "  end\n",
            "  redis.call('XTRIM', KEYS[1], 'MINID', ARGV[5])\n",
            "  redis.call('PEXPIRE', KEYS[1], ARGV[6])\n",
            "end\n",
            "local message = '{\"i\":\"' .. id .. '\",\"e\":' .. cjson.encode(ARGV[1]) .. ',\"t\":' .. ARGV[2] .. ',\"c\":' .. ARGV[7] .. ',\"p\":' .. ARGV[3] .. '}'\n",
            "return {id, redis.call('",
            $publish,
            "', KEYS[2], message)}\n"
        )
    };
}
const STORE_AND_PUBLISH: &str = store_then!("PUBLISH");
/// The same for sharded Pub/Sub; the stream and channel share the user's hash tag, so both keys
/// are in one slot as Redis Cluster requires of a script.
const STORE_AND_SPUBLISH: &str = store_then!("SPUBLISH");

/// After Redis comes back, every instance must re-subscribe its users before their channels
/// have listeners again. Until this much time has passed since our own reconnection, "no
/// subscriber" is taken as "not re-subscribed yet": those notifications are published again,
/// not dropped.
const RESUBSCRIBE_SETTLE: Duration = Duration::from_secs(5);

enum Op {
    Acquire(String, oneshot::Sender<()>),
    Release(String),
}

pub struct RedisBus {
    publisher: Client,
    subscriber: SubscriberClient,
    /// SSUBSCRIBE/SPUBLISH, with hash-tagged channel and stream names.
    sharded: bool,
    /// The store script for this mode, called by its SHA1 (EVALSHA) rather than sending its
    /// kilobyte of text, for Redis to hash, with every retained notification.
    store: StoreScript,
    pattern: ChannelPattern,
    stream: ChannelPattern,
    replay: ReplayConfig,
    ops: mpsc::UnboundedSender<Op>,
    command_timeout: Duration,
    /// When the publisher last reconnected; see [`RESUBSCRIBE_SETTLE`]. A connection made during
    /// start-up does not count: Redis did not just lose the other instances' subscriptions.
    reconnected_at: Arc<std::sync::Mutex<Option<Instant>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RedisBus {
    pub async fn start(
        config: &RedisConfig,
        replay_config: &ReplayConfig,
        deliverer: Deliverer,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let fred_config = FredConfig::from_url(&config.url).map_err(|e| anyhow::anyhow!("redis.url: {e}"))?;
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
        let default_attempts = fred::types::config::ConnectionConfig::default().max_command_attempts;
        builder.with_connection_config(|c| c.max_command_attempts = default_attempts);
        // fred's default of 32 silently drops Pub/Sub messages under load.
        builder.with_performance_config(|p| p.broadcast_channel_capacity = config.pubsub_buffer);
        let subscriber = builder.build_subscriber_client()?;
        publisher.connect();
        subscriber.connect();
        let (first, second) = tokio::join!(
            tokio::time::timeout(timeout, publisher.wait_for_connect()),
            tokio::time::timeout(timeout, subscriber.wait_for_connect())
        );
        if !matches!((first, second), (Ok(Ok(())), Ok(Ok(())))) {
            warn!(url = %redact(&config.url), "Redis is not reachable yet; herald keeps retrying and stays unready until it is.");
        }

        let sharded = config.sharded_pubsub;
        let store = StoreScript::new(if sharded { STORE_AND_SPUBLISH } else { STORE_AND_PUBLISH });
        if publisher.is_connected() {
            store.load_or_warn(&publisher).await;
        }
        let tagged = |p: &ChannelPattern| if sharded { p.hash_tagged() } else { p.clone() };
        let (pattern, stream) = (tagged(&config.channel), tagged(&replay_config.stream));
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let manager = SubscriptionManager {
            subscriber: subscriber.clone(),
            sharded,
            pattern: pattern.clone(),
            metrics: metrics.clone(),
            wanted: HashMap::new(),
            subscribed: HashSet::new(),
            dirty: HashSet::new(),
            waiters: Vec::new(),
        };
        let reconnected_at = Arc::new(std::sync::Mutex::new(None));
        let tasks = vec![
            tokio::spawn(manager.run(ops_rx, cancel.clone())),
            tokio::spawn(receive(subscriber.clone(), pattern.clone(), deliverer, metrics.clone(), cancel.clone())),
            tokio::spawn(watch_connection(publisher.clone(), subscriber.clone(), store.clone(), reconnected_at.clone(), metrics, cancel)),
        ];
        Ok(Self {
            publisher,
            subscriber,
            sharded,
            store,
            pattern,
            stream,
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
        let missing: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if e.details().starts_with("NOSCRIPT")))
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            self.store.load(&self.publisher).await.map_err(|e| BusError(format!("Redis lost the store script and cannot load it: {e}")))?;
            let again: Vec<Notification> = missing.iter().map(|&i| batch[i].clone()).collect();
            for (i, reply) in missing.into_iter().zip(self.send(&again, retry_since_ms).await?) {
                replies[i] = reply;
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for (n, reply) in batch.iter().zip(replies) {
            let value = reply.map_err(|e| BusError(e.to_string()))?;
            let (receivers, stored) = if n.retain {
                match value {
                    fred::types::Value::Array(parts) => {
                        let id = parts.first().and_then(|v| v.as_string()).and_then(|id| id.parse::<NotificationId>().ok());
                        let Some(id) = id else {
                            return Err(BusError(format!("unexpected id from the store script: {:?}", parts.first())));
                        };
                        (parts.get(1).and_then(|v| v.as_i64()).unwrap_or(0), Some(id))
                    }
                    other => return Err(BusError(format!("unexpected reply from the store script: {other:?}"))),
                }
            } else {
                (value.as_i64().unwrap_or(0), None)
            };
            out.push(Published { receivers: receivers.max(0) as usize, stored });
        }
        Ok(out)
    }

    /// One pipeline for the batch: each notification's reply, in order.
    async fn send(
        &self,
        batch: &[Notification],
        retry_since_ms: Option<i64>,
    ) -> Result<Vec<Result<fred::types::Value, fred::error::Error>>, BusError> {
        let pipeline = self.publisher.pipeline();
        let now = crate::route::now_ms().max(0) as u64;
        let oldest_kept = now.saturating_sub(self.replay.max_age.as_millis() as u64);
        for n in batch {
            let channel = self.pattern.channel(&n.user_id);
            let queued: Result<(), _> = if n.retain {
                // EVALSHA through `custom`: fred's pipelines have no Lua interface.
                let args: Vec<String> = vec![
                    self.store.sha.clone(),
                    "2".to_owned(),
                    self.stream.channel(&n.user_id),
                    channel,
                    n.event.to_string(),
                    n.timestamp_ms.to_string(),
                    n.payload.get().to_owned(),
                    self.replay.history.to_string(),
                    oldest_kept.to_string(),
                    self.replay.max_age.as_millis().to_string(),
                    n.consumed_us.to_string(),
                    n.origin.as_deref().unwrap_or_default().to_owned(),
                    retry_since_ms.map(|ms| ms.to_string()).unwrap_or_default(),
                ];
                // Routed by the stream key: FirstKey would hash the script's SHA1 (EVALSHA's first
                // argument) and every call would bounce off a MOVED redirect on a cluster.
                let slot = fred::util::redis_keyslot(args[2].as_bytes());
                pipeline.custom(CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false), args).await
            } else if self.sharded {
                pipeline.spublish(channel, envelope::encode(n)).await
            } else {
                pipeline.publish(channel, envelope::encode(n)).await
            };
            queued.map_err(|e| BusError(e.to_string()))?;
        }
        let replies = pipeline.try_all::<fred::types::Value>().await;
        // Callers match results to notifications by position.
        if replies.len() != batch.len() {
            return Err(BusError(format!("{} replies to {} publishes", replies.len(), batch.len())));
        }
        Ok(replies)
    }

    /// The live message of stored notifications again, with their ids, without storing them again.
    pub async fn publish_live(&self, stored: &[(Notification, NotificationId)]) -> Result<Vec<usize>, BusError> {
        let pipeline = self.publisher.pipeline();
        for (n, id) in stored {
            let channel = self.pattern.channel(&n.user_id);
            let message = envelope::encode_stored(n, *id);
            let queued: Result<(), _> =
                if self.sharded { pipeline.spublish(channel, message).await } else { pipeline.publish(channel, message).await };
            queued.map_err(|e| BusError(e.to_string()))?;
        }
        let replies = pipeline.try_all::<i64>().await;
        if replies.len() != stored.len() {
            return Err(BusError(format!("{} replies to {} publishes", replies.len(), stored.len())));
        }
        replies.into_iter().map(|r| r.map(|n| n.max(0) as usize).map_err(|e| BusError(e.to_string()))).collect()
    }

    /// True for a while after reconnecting to Redis: other instances may not have re-subscribed
    /// their users yet, so "no subscriber" may not mean "offline".
    pub fn settling(&self) -> bool {
        self.reconnected_at.lock().ok().and_then(|t| *t).is_some_and(|t| t.elapsed() < RESUBSCRIBE_SETTLE)
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

    pub async fn acquire(&self, user_id: &str) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Acquire(user_id.to_owned(), tx)).is_err() {
            return;
        }
        // During a Redis outage the socket is admitted anyway; its subscription follows when
        // Redis is back, and readiness says the instance is degraded meanwhile.
        if tokio::time::timeout(self.command_timeout, rx).await.is_err() {
            debug!(user_id, "Subscription not confirmed in time; admitting the socket, the subscription follows.");
        }
    }

    pub fn release(&self, user_id: &str) {
        let _ = self.ops.send(Op::Release(user_id.to_owned()));
    }

    pub fn is_connected(&self) -> bool {
        self.publisher.is_connected() && self.subscriber.is_connected()
    }

    pub async fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.subscriber.quit().await;
            let _ = self.publisher.quit().await;
        })
        .await;
    }
}

/// Keeps Redis subscriptions equal to the set of users with a socket here.
struct SubscriptionManager {
    subscriber: SubscriberClient,
    sharded: bool,
    pattern: ChannelPattern,
    metrics: Arc<Metrics>,
    /// Sockets per user on this instance, as told by acquire/release.
    wanted: HashMap<String, u32>,
    /// Users whose channel Redis has confirmed.
    subscribed: HashSet<String>,
    /// Users whose subscription may differ from what is wanted.
    dirty: HashSet<String>,
    /// Connects waiting for their user's subscription to be confirmed.
    waiters: Vec<(String, oneshot::Sender<()>)>,
}

impl SubscriptionManager {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>, cancel: CancellationToken) {
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    self.apply(op);
                    // Take everything queued meanwhile: a connect storm becomes a few commands.
                    while let Ok(op) = ops.try_recv() {
                        self.apply(op);
                    }
                }
                event = reconnects.recv() => {
                    if matches!(event, Err(RecvError::Closed)) {
                        return;
                    }
                    // A new connection has no subscriptions: redo them all.
                    info!(channels = self.wanted.len(), "Redis subscriber reconnected; re-subscribing.");
                    self.metrics.redis_reconnects.increment(1);
                    self.subscribed.clear();
                    self.dirty.extend(self.wanted.keys().cloned());
                }
                _ = retry.tick(), if !self.dirty.is_empty() => {}
            }
            self.sync().await;
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Acquire(user, tx) => {
                *self.wanted.entry(user.clone()).or_insert(0) += 1;
                if self.subscribed.contains(&user) {
                    let _ = tx.send(());
                } else {
                    self.dirty.insert(user.clone());
                    self.waiters.push((user, tx));
                }
            }
            Op::Release(user) => {
                if let Some(count) = self.wanted.get_mut(&user) {
                    *count -= 1;
                    if *count == 0 {
                        self.wanted.remove(&user);
                        self.dirty.insert(user);
                    }
                }
            }
        }
    }

    async fn sync(&mut self) {
        let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
        for user in self.dirty.drain() {
            match (self.wanted.contains_key(&user), self.subscribed.contains(&user)) {
                (true, false) => subscribe.push(user),
                (false, true) => unsubscribe.push(user),
                _ => {}
            }
        }
        if self.sharded {
            self.sync_sharded(subscribe, unsubscribe).await;
        } else {
            self.sync_classic(subscribe, unsubscribe).await;
        }
        self.metrics.subscriptions.set(self.subscribed.len() as f64);
        for (user, tx) in std::mem::take(&mut self.waiters) {
            if tx.is_closed() {
                continue;
            }
            if self.subscribed.contains(&user) {
                let _ = tx.send(());
            } else {
                self.waiters.push((user, tx));
            }
        }
    }
}

impl SubscriptionManager {
    async fn sync_classic(&mut self, subscribe: Vec<String>, unsubscribe: Vec<String>) {
        let mut sent = Vec::new();
        for chunk in subscribe.chunks(CHANNELS_PER_COMMAND) {
            let channels: Vec<String> = chunk.iter().map(|u| self.pattern.channel(u)).collect();
            match self.subscriber.subscribe(channels).await {
                Ok(()) => sent.extend_from_slice(chunk),
                Err(e) => {
                    warn!(error = %e, channels = chunk.len(), "SUBSCRIBE failed; retrying.");
                    self.dirty.extend(chunk.iter().cloned());
                }
            }
        }
        for chunk in unsubscribe.chunks(CHANNELS_PER_COMMAND) {
            let channels: Vec<String> = chunk.iter().map(|u| self.pattern.channel(u)).collect();
            match self.subscriber.unsubscribe(channels).await {
                Ok(()) => chunk.iter().for_each(|u| {
                    self.subscribed.remove(u);
                }),
                Err(e) => {
                    warn!(error = %e, channels = chunk.len(), "UNSUBSCRIBE failed; retrying.");
                    self.dirty.extend(chunk.iter().cloned());
                }
            }
        }
        if !sent.is_empty() {
            // fred returns from SUBSCRIBE once the command is written; Redis answers commands in
            // order, so the PING's reply proves the subscriptions before it are live.
            match self.subscriber.ping::<fred::types::Value>(None).await {
                Ok(_) => self.subscribed.extend(sent),
                Err(e) => {
                    warn!(error = %e, "Subscription not confirmed; retrying.");
                    self.dirty.extend(sent);
                }
            }
        }
    }

    /// Sharded channels are grouped by slot: one SSUBSCRIBE may only name channels of one slot,
    /// and it goes to the shard owning that slot, so its confirming PING must go there too.
    async fn sync_sharded(&mut self, subscribe: Vec<String>, unsubscribe: Vec<String>) {
        let subscriber = &self.subscriber;
        let pattern = &self.pattern;
        let subscribed = futures::stream::iter(by_slot(pattern, subscribe))
            .map(|(slot, users)| async move {
                let channels: Vec<String> = users.iter().map(|u| pattern.channel(u)).collect();
                let ping = CustomCommand::new_static("PING", ClusterHash::Custom(slot), false);
                let result = match subscriber.ssubscribe(channels).await {
                    Ok(()) => subscriber.custom::<fred::types::Value, Vec<String>>(ping, Vec::new()).await.map(drop),
                    Err(e) => Err(e),
                };
                (users, result)
            })
            .buffer_unordered(SLOTS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        for (users, result) in subscribed {
            match result {
                Ok(()) => self.subscribed.extend(users),
                Err(e) => {
                    warn!(error = %e, channels = users.len(), "SSUBSCRIBE not confirmed; retrying.");
                    self.dirty.extend(users);
                }
            }
        }
        let unsubscribed = futures::stream::iter(by_slot(pattern, unsubscribe))
            .map(|(_, users)| async move {
                let channels: Vec<String> = users.iter().map(|u| pattern.channel(u)).collect();
                (subscriber.sunsubscribe(channels).await, users)
            })
            .buffer_unordered(SLOTS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        for (result, users) in unsubscribed {
            match result {
                Ok(()) => users.iter().for_each(|u| {
                    self.subscribed.remove(u);
                }),
                Err(e) => {
                    warn!(error = %e, channels = users.len(), "SUNSUBSCRIBE failed; retrying.");
                    self.dirty.extend(users);
                }
            }
        }
    }
}

/// Users grouped by the cluster slot of their channel, at most CHANNELS_PER_COMMAND per group.
fn by_slot(pattern: &ChannelPattern, users: Vec<String>) -> Vec<(u16, Vec<String>)> {
    let mut slots: HashMap<u16, Vec<String>> = HashMap::new();
    for user in users {
        slots.entry(fred::util::redis_keyslot(pattern.channel(&user).as_bytes())).or_default().push(user);
    }
    slots.into_iter().flat_map(|(slot, users)| users.chunks(CHANNELS_PER_COMMAND).map(|c| (slot, c.to_vec())).collect::<Vec<_>>()).collect()
}

/// Pub/Sub messages -> the local sockets of the channel's user.
///
/// fred's reader hands every message to a fixed-size buffer and never waits: whatever this side
/// has not taken when it is full is lost. So this loop only takes messages and passes each to
/// a delivery worker chosen by its user (one per core; one user always goes to the same worker,
/// which keeps a user's notifications in order), and the decoding and emitting happen there.
async fn receive(
    subscriber: SubscriberClient,
    pattern: ChannelPattern,
    deliverer: Deliverer,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut messages = subscriber.message_rx();
    let worker_count = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let workers: Vec<mpsc::Sender<Message>> = (0..worker_count)
        .map(|_| {
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            tokio::spawn(deliver_messages(rx, pattern.clone(), deliverer.clone(), metrics.clone()));
            tx
        })
        .collect();
    // On a thread of its own: as a task it waits its turn behind the delivery workers, and a
    // burst then overflows fred's buffer while the workers' queues still have room.
    let drain = std::thread::Builder::new().name("herald-bus-drain".into()).spawn(move || {
        loop {
            match messages.blocking_recv() {
                Ok(message) => {
                    let Some(user_id) = pattern.user_id(&message.channel) else { continue };
                    if workers[worker_of(user_id, worker_count)].blocking_send(message).is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(lost)) => {
                    metrics.bus_lagged.increment(lost);
                    warn!(lost, "Fell behind the Redis Pub/Sub buffer; messages were lost (raise redis.pubsub_buffer).");
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    if let Err(e) = drain {
        warn!(error = %e, "Cannot start the bus drain thread; no notification from Redis will be delivered.");
        return;
    }
    // The thread ends when fred closes its channel (on quit) or the workers are gone.
    cancel.cancelled().await;
}

fn worker_of(user_id: &str, workers: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(user_id) as usize % workers
}

/// One delivery worker: decodes its messages and emits them to the user's local sockets.
async fn deliver_messages(mut messages: mpsc::Receiver<Message>, pattern: ChannelPattern, deliverer: Deliverer, metrics: Arc<Metrics>) {
    while let Some(message) = messages.recv().await {
        let Some(user_id) = pattern.user_id(&message.channel) else { continue };
        let Some(bytes) = message.value.as_bytes() else {
            metrics.bus_decode_failures.increment(1);
            continue;
        };
        match envelope::decode(bytes) {
            Ok(env) => {
                metrics.received.increment(1);
                let consumed_us = env.consumed_us();
                match env.id.as_deref().map(str::parse::<NotificationId>) {
                    Some(Ok(id)) => {
                        deliverer.deliver_retained(user_id, id, &env.event, env.payload, env.timestamp_ms, consumed_us);
                    }
                    _ => {
                        deliverer.deliver(user_id, &env.event, env.payload, env.timestamp_ms, consumed_us);
                    }
                }
            }
            Err(e) => {
                metrics.bus_decode_failures.increment(1);
                debug!(channel = %&*message.channel, error = %e, "Ignored a bus message that is not a herald envelope.");
            }
        }
    }
}

async fn watch_connection(
    publisher: Client,
    subscriber: SubscriberClient,
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

/// A Lua script called by its SHA1, and loaded into Redis (every primary of a cluster) at
/// start-up, after each reconnect, and whenever Redis answers NOSCRIPT.
#[derive(Clone)]
struct StoreScript {
    text: &'static str,
    sha: String,
}

impl StoreScript {
    fn new(text: &'static str) -> Self {
        Self { text, sha: fred::util::sha1_hash(text) }
    }

    /// [`Self::load`] at start-up and reconnects; failing there is not fatal (a NOSCRIPT reply
    /// tries again), but it is shown, as a Redis ACL without `script|load` would keep failing.
    async fn load_or_warn(&self, publisher: &Client) {
        if let Err(e) = self.load(publisher).await {
            warn!(error = %e, "Could not load the store script into Redis; publishing retained notifications will retry it.");
        }
    }

    /// Loads it on the server, or on every primary of a cluster.
    async fn load(&self, publisher: &Client) -> Result<(), fred::error::Error> {
        publisher.script_load_cluster(self.text).await
    }
}

/// Stream entries `[[id, [field, value, ...]], ...]` as retained notifications.
fn parse_entries(value: fred::types::Value) -> Vec<Retained> {
    use fred::types::Value;
    let Value::Array(entries) = value else { return Vec::new() };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else { return None };
            let fields = match parts.pop()? {
                Value::Array(f) => f,
                _ => return None,
            };
            let id: NotificationId = parts.pop()?.as_string()?.parse().ok()?;
            let (mut event, mut payload) = (None, None);
            for pair in fields.chunks(2) {
                match (pair[0].as_string().as_deref(), pair.get(1).and_then(|v| v.as_string())) {
                    (Some("e"), Some(v)) => event = Some(v),
                    (Some("p"), Some(v)) => payload = RawValue::from_string(v).ok(),
                    _ => {}
                }
            }
            Some(Retained { id, event: event?, payload: payload? })
        })
        .collect()
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
