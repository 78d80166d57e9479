//! Redis Cluster subscribing: one subscriber connection per master (`subscriber.rs`, which
//! delivers each message the moment it reads it), holding the channels of the slots that
//! master serves. When the slot map changes (a failover, a resharding), channels move to their
//! new master: subscribed there, then dropped from the old one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::address::Endpoint;
use super::channels::Channels;
use super::health::Health;
use super::interest::{Interest, Op};
use super::slots::slot_of;
use super::subscriber::Subscriptions;
use super::topology::Cluster;
use crate::bus::inbound::Inbound;
use crate::metrics::Metrics;

/// How often the slot map is asked for while every master answers; every second otherwise.
const REFRESH_EVERY_TICKS: u32 = 10;

/// Whether every master's subscriber connection is up.
#[derive(Clone, Default)]
pub struct ShardsUp(Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>);

impl ShardsUp {
    pub fn all(&self) -> bool {
        let shards = self.0.lock().unwrap_or_else(|p| p.into_inner());
        !shards.is_empty() && shards.iter().all(|up| up.load(Ordering::Acquire))
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn set(&self, shards: Vec<Arc<AtomicBool>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = shards;
    }
}

/// What every master's subscriber is made with.
pub struct ShardedSubscriptions {
    pub cluster: Arc<Cluster>,
    pub sharded: bool,
    pub channels: Arc<Channels>,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub deliverer: Arc<dyn Inbound>,
    pub health: Arc<Health>,
    pub up: ShardsUp,
}

struct Shard {
    ops: mpsc::UnboundedSender<Op>,
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl ShardedSubscriptions {
    pub async fn run(self, mut ops: mpsc::UnboundedReceiver<Op>, cancel: CancellationToken) {
        let hint = Arc::new(Notify::new());
        let mut changes = self.cluster.changes();
        let mut shards: HashMap<Endpoint, Shard> = HashMap::new();
        // Each channel wanted here: its sockets, and the master holding its subscription.
        let mut wanted: HashMap<String, (u32, Endpoint)> = HashMap::new();
        // Joins and leaves that came before any slot map did.
        let mut waiting: Vec<Op> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u32;
        // The slot map whose moves `wanted` already follows.
        let mut followed = u64::MAX;
        loop {
            let mut refresh = false;
            tokio::select! {
                _ = cancel.cancelled() => break,
                op = ops.recv() => match op {
                    Some(op) => {
                        waiting.push(op);
                        // Everything queued meanwhile: a connect storm is handled in one pass.
                        while let Ok(op) = ops.try_recv() {
                            waiting.push(op);
                        }
                    }
                    None => break,
                },
                () = hint.notified() => refresh = true,
                changed = changes.changed() => if changed.is_err() { break },
                _ = tick.tick() => {
                    ticks += 1;
                    let all_up = shards.values().all(|s| s.connected.load(Ordering::Acquire));
                    refresh = shards.is_empty() || !all_up || ticks.is_multiple_of(REFRESH_EVERY_TICKS);
                }
            }
            if refresh {
                match self.cluster.refresh().await {
                    Ok(()) => self.health.recovered("cluster"),
                    Err(e) => {
                        warn!(error = %e, "Cannot read the Redis Cluster's slot map; retrying.");
                        self.health.failed("cluster", &e);
                    }
                }
            }
            let map = self.cluster.map();
            if map.masters.is_empty() {
                continue;
            }
            let version = *changes.borrow_and_update();
            if version != followed {
                followed = version;
                // Channels whose slot has another master now move there: subscribed there
                // first, then dropped from the old one.
                for (channel, (sockets, node)) in wanted.iter_mut() {
                    if let Some(owner) = map.master_of(slot_of(channel.as_bytes()))
                        && owner != node
                    {
                        info!(channel, from = %format!("{}:{}", node.0, node.1), to = %format!("{}:{}", owner.0, owner.1), "Subscription moves to the slot's new master.");
                        let (subscribed, confirmed) = oneshot::channel();
                        self.shard(&mut shards, owner, &hint).ops.send(Op::Adopt(channel.clone(), *sockets, subscribed)).ok();
                        if let Some(old) = shards.get(node) {
                            let (old, channel, wait) = (old.ops.clone(), channel.clone(), self.timeout * 4);
                            tokio::spawn(async move {
                                let _ = tokio::time::timeout(wait, confirmed).await;
                                old.send(Op::Forget(channel)).ok();
                            });
                        }
                        *node = owner.clone();
                    }
                }
            }
            for op in waiting.drain(..) {
                let channel = match &op {
                    Op::Acquire(c, _) | Op::Release(c) | Op::Adopt(c, ..) | Op::Forget(c) => c.clone(),
                };
                let node = match (&op, wanted.get_mut(&channel)) {
                    (Op::Acquire(..), Some((sockets, node))) => {
                        *sockets += 1;
                        node.clone()
                    }
                    (Op::Acquire(..), None) => {
                        let Some(owner) = map.master_of(slot_of(channel.as_bytes())) else { continue };
                        wanted.insert(channel.clone(), (1, owner.clone()));
                        owner.clone()
                    }
                    (Op::Release(_), Some((sockets, node))) => {
                        let node = node.clone();
                        *sockets -= 1;
                        if *sockets == 0 {
                            wanted.remove(&channel);
                        }
                        node
                    }
                    _ => continue,
                };
                self.shard(&mut shards, &node, &hint).ops.send(op).ok();
            }
            // Masters no longer in the map hold nothing now: their connections close.
            let before = shards.len();
            shards.retain(|node, shard| {
                let keep = map.masters.contains(node);
                if !keep {
                    shard.stop.cancel();
                    self.health.recovered(&format!("subscriber {}:{}", node.0, node.1));
                }
                keep
            });
            if shards.len() != before || shards.len() != self.up.count() {
                self.up.set(shards.values().map(|s| s.connected.clone()).collect());
            }
        }
        for shard in shards.values() {
            shard.stop.cancel();
        }
    }

    /// The subscriber of `node`, started on first use.
    fn shard<'a>(&self, shards: &'a mut HashMap<Endpoint, Shard>, node: &Endpoint, hint: &Arc<Notify>) -> &'a Shard {
        shards.entry(node.clone()).or_insert_with(|| {
            let (ops, rx) = mpsc::unbounded_channel();
            let connected = Arc::new(AtomicBool::new(false));
            let stop = CancellationToken::new();
            let subscriptions = Subscriptions {
                access: self.cluster.access().clone(),
                node: Some(node.clone()),
                topology: Some(hint.clone()),
                health: self.health.clone(),
                sharded: self.sharded,
                channels: self.channels.clone(),
                timeout: self.timeout,
                metrics: self.metrics.clone(),
                deliverer: self.deliverer.clone(),
                connected: connected.clone(),
                interest: Interest::default(),
                hold_until: None,
                reported: 0,
            };
            let stopped = stop.clone();
            tokio::spawn(async move {
                subscriptions.run(rx, stopped.clone()).await;
            });
            Shard { ops, connected, stop }
        })
    }
}
