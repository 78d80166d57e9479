//! Redis Pub/Sub bus: one channel per user, subscribed while the user has a socket here.
//!
//! Three tasks: the subscription manager (the only writer of SUBSCRIBE/UNSUBSCRIBE, so the
//! order of a user's joins and leaves is kept), the receiver (Pub/Sub messages -> local
//! sockets), and a connection watcher for readiness. Publishing pipelines a whole batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::prelude::{Builder, Config as FredConfig, ReconnectPolicy};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::BusError;
use super::envelope;
use crate::config::{ChannelPattern, RedisConfig};
use crate::gateway::Deliverer;
use crate::metrics::Metrics;
use crate::route::Notification;

/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;

/// After Redis comes back, every instance must re-subscribe its users before their channels
/// have listeners again. Until this much time has passed since our own reconnection, "no
/// subscriber" is taken as "not re-subscribed yet" and the batch is retried, not dropped.
const RESUBSCRIBE_SETTLE: Duration = Duration::from_secs(5);

enum Op {
    Acquire(String, oneshot::Sender<()>),
    Release(String),
}

pub struct RedisBus {
    publisher: Client,
    subscriber: SubscriberClient,
    pattern: ChannelPattern,
    ops: mpsc::UnboundedSender<Op>,
    command_timeout: Duration,
    /// When the publisher last (re)connected; see [`RESUBSCRIBE_SETTLE`].
    connected_at: Arc<std::sync::Mutex<Instant>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RedisBus {
    pub async fn start(
        config: &RedisConfig,
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
                // fred's default of 32 silently drops Pub/Sub messages under load.
                p.broadcast_channel_capacity = config.pubsub_buffer;
            })
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let publisher = builder.build()?;
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

        let (ops, ops_rx) = mpsc::unbounded_channel();
        let manager = SubscriptionManager {
            subscriber: subscriber.clone(),
            pattern: config.channel.clone(),
            metrics: metrics.clone(),
            wanted: HashMap::new(),
            subscribed: HashSet::new(),
            dirty: HashSet::new(),
            waiters: Vec::new(),
        };
        let connected_at = Arc::new(std::sync::Mutex::new(Instant::now()));
        let tasks = vec![
            tokio::spawn(manager.run(ops_rx, cancel.clone())),
            tokio::spawn(receive(subscriber.clone(), config.channel.clone(), deliverer, metrics.clone(), cancel.clone())),
            tokio::spawn(watch_connection(publisher.clone(), subscriber.clone(), connected_at.clone(), metrics, cancel)),
        ];
        Ok(Self { publisher, subscriber, pattern: config.channel.clone(), ops, command_timeout: timeout, connected_at, tasks })
    }

    pub async fn publish(&self, batch: &[Notification]) -> Result<Vec<usize>, BusError> {
        let pipeline = self.publisher.pipeline();
        for n in batch {
            let queued: Result<(), _> = pipeline.publish(self.pattern.channel(&n.user_id), envelope::encode(n)).await;
            queued.map_err(|e| BusError(e.to_string()))?;
        }
        let reached: Vec<usize> = pipeline
            .try_all::<i64>()
            .await
            .into_iter()
            .map(|r| r.map(|receivers| receivers.max(0) as usize).map_err(|e| BusError(e.to_string())))
            .collect::<Result<_, _>>()?;
        let settling = self.connected_at.lock().map(|t| t.elapsed() < RESUBSCRIBE_SETTLE).unwrap_or(false);
        if settling && reached.contains(&0) {
            return Err(BusError("a user's channel has no subscriber while instances re-subscribe after a Redis reconnect".into()));
        }
        Ok(reached)
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

/// Pub/Sub messages -> the local sockets of the channel's user.
async fn receive(
    subscriber: SubscriberClient,
    pattern: ChannelPattern,
    deliverer: Deliverer,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut messages = subscriber.message_rx();
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            m = messages.recv() => m,
        };
        match message {
            Ok(message) => {
                let Some(user_id) = pattern.user_id(&message.channel) else { continue };
                let Some(bytes) = message.value.as_bytes() else {
                    metrics.bus_decode_failures.increment(1);
                    continue;
                };
                match envelope::decode(bytes) {
                    Ok(env) => {
                        metrics.received.increment(1);
                        deliverer.deliver(user_id, &env.event, env.payload, env.timestamp_ms).await;
                    }
                    Err(e) => {
                        metrics.bus_decode_failures.increment(1);
                        debug!(channel = %&*message.channel, error = %e, "Ignored a bus message that is not a herald envelope.");
                    }
                }
            }
            Err(RecvError::Lagged(lost)) => {
                metrics.bus_lagged.increment(lost);
                warn!(lost, "Fell behind the Redis Pub/Sub buffer; messages were lost (raise redis.pubsub_buffer).");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn watch_connection(
    publisher: Client,
    subscriber: SubscriberClient,
    connected_at: Arc<std::sync::Mutex<Instant>>,
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
                if let Ok(mut t) = connected_at.lock() {
                    *t = Instant::now();
                }
            }
        }
        let up = publisher.is_connected() && subscriber.is_connected();
        metrics.redis_connected.set(if up { 1.0 } else { 0.0 });
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
