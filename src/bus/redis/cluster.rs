//! Redis Cluster subscribing, through fred: the subscription manager (one SSUBSCRIBE per slot,
//! each confirmed on its shard), and the receiver that hands messages to delivery workers, one
//! channel always to the same worker so its messages stay in order.

use super::*;

/// One Pub/Sub message, as read off the connection: its channel and the envelope.
pub(super) struct Pushed {
    pub(super) channel: Bytes,
    pub(super) payload: Bytes,
}

/// A delivery worker's queue, bounded in messages: a burst waits here, in memory taken only as
/// it fills.
#[derive(Clone)]
pub(super) struct WorkerQueue {
    pub(super) batches: mpsc::UnboundedSender<Vec<Pushed>>,
    pub(super) room: Arc<tokio::sync::Semaphore>,
    pub(super) capacity: usize,
}

impl WorkerQueue {
    /// Queues `batch` if the worker has room for it. `Ok(false)`: no room, the batch is dropped
    /// (the caller counts it). `Err`: the worker is gone.
    pub(super) fn try_send(&self, batch: Vec<Pushed>) -> Result<bool, ()> {
        let needed = batch.len().min(self.capacity) as u32;
        match self.room.try_acquire_many(needed) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Ok(false),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(()),
        }
        self.batches.send(batch).map(|()| true).map_err(drop)
    }

    /// Gives back the room of a batch the worker is done with.
    pub(super) fn done(&self, delivered: usize) {
        self.room.add_permits(delivered.min(self.capacity));
    }
}

/// Keeps Redis subscriptions equal to the channels wanted by the sockets here.
pub(super) struct SubscriptionManager {
    pub(super) subscriber: SubscriberClient,
    pub(super) sharded: bool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) interest: Interest,
}

impl SubscriptionManager {
    pub(super) async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>, cancel: CancellationToken) {
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut retry = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    self.interest.apply(op);
                    // Take everything queued meanwhile: a connect storm becomes a few commands.
                    while let Ok(op) = ops.try_recv() {
                        self.interest.apply(op);
                    }
                }
                event = reconnects.recv() => {
                    if matches!(event, Err(RecvError::Closed)) {
                        return;
                    }
                    // A new connection has no subscriptions: redo them all.
                    info!(channels = self.interest.wanted.len(), "Redis subscriber reconnected; re-subscribing.");
                    self.metrics.redis_reconnects.increment(1);
                    self.interest.reset();
                }
                _ = retry.tick(), if !self.interest.dirty.is_empty() => {}
            }
            self.sync().await;
        }
    }

    pub(super) async fn sync(&mut self) {
        let (subscribe, unsubscribe) = self.interest.changes();
        if self.sharded {
            self.sync_sharded(subscribe, unsubscribe).await;
        } else {
            self.sync_classic(subscribe, unsubscribe).await;
        }
        self.metrics.subscriptions.set(self.interest.subscribed.len() as f64);
        self.interest.answer_waiters();
    }
}

impl SubscriptionManager {
    pub(super) async fn sync_classic(&mut self, subscribe: Vec<String>, unsubscribe: Vec<String>) {
        let mut sent = Vec::new();
        for chunk in subscribe.chunks(CHANNELS_PER_COMMAND) {
            match self.subscriber.subscribe(chunk.to_vec()).await {
                Ok(()) => sent.extend_from_slice(chunk),
                Err(e) => {
                    warn!(error = %e, channels = chunk.len(), "SUBSCRIBE failed; retrying.");
                    self.interest.dirty.extend(chunk.iter().cloned());
                }
            }
        }
        for chunk in unsubscribe.chunks(CHANNELS_PER_COMMAND) {
            match self.subscriber.unsubscribe(chunk.to_vec()).await {
                Ok(()) => chunk.iter().for_each(|u| {
                    self.interest.subscribed.remove(u);
                }),
                Err(e) => {
                    warn!(error = %e, channels = chunk.len(), "UNSUBSCRIBE failed; retrying.");
                    self.interest.dirty.extend(chunk.iter().cloned());
                }
            }
        }
        if !sent.is_empty() {
            // fred returns from SUBSCRIBE once the command is written; Redis answers commands in
            // order, so the PING's reply proves the subscriptions before it are live.
            match self.subscriber.ping::<fred::types::Value>(None).await {
                Ok(_) => self.interest.subscribed.extend(sent),
                Err(e) => {
                    warn!(error = %e, "Subscription not confirmed; retrying.");
                    self.interest.dirty.extend(sent);
                }
            }
        }
    }

    /// Sharded channels are grouped by slot: one SSUBSCRIBE may only name channels of one slot,
    /// and it goes to the shard owning that slot, so its confirming PING must go there too.
    pub(super) async fn sync_sharded(&mut self, subscribe: Vec<String>, unsubscribe: Vec<String>) {
        let subscriber = &self.subscriber;
        let subscribed = futures::stream::iter(by_slot(subscribe))
            .map(|(slot, users)| async move {
                let channels = users.clone();
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
                Ok(()) => self.interest.subscribed.extend(users),
                Err(e) => {
                    warn!(error = %e, channels = users.len(), "SSUBSCRIBE not confirmed; retrying.");
                    self.interest.dirty.extend(users);
                }
            }
        }
        let unsubscribed = futures::stream::iter(by_slot(unsubscribe))
            .map(|(_, users)| async move {
                let channels = users.clone();
                (subscriber.sunsubscribe(channels).await, users)
            })
            .buffer_unordered(SLOTS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
        for (result, users) in unsubscribed {
            match result {
                Ok(()) => users.iter().for_each(|u| {
                    self.interest.subscribed.remove(u);
                }),
                Err(e) => {
                    warn!(error = %e, channels = users.len(), "SUNSUBSCRIBE failed; retrying.");
                    self.interest.dirty.extend(users);
                }
            }
        }
    }
}

/// Channels grouped by their cluster slot, at most CHANNELS_PER_COMMAND per group.
pub(super) fn by_slot(channels: Vec<String>) -> Vec<(u16, Vec<String>)> {
    let mut slots: HashMap<u16, Vec<String>> = HashMap::new();
    for channel in channels {
        slots.entry(fred::util::redis_keyslot(channel.as_bytes())).or_default().push(channel);
    }
    slots.into_iter().flat_map(|(slot, users)| users.chunks(CHANNELS_PER_COMMAND).map(|c| (slot, c.to_vec())).collect::<Vec<_>>()).collect()
}

/// The delivery workers (one per core, at most 8), each queueing at most `capacity` messages.
pub(super) fn delivery_workers(
    capacity: usize,
    channels: &Arc<Channels>,
    deliverer: &Arc<dyn Inbound>,
    metrics: &Arc<Metrics>,
) -> Vec<WorkerQueue> {
    let count = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    (0..count)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            let queue = WorkerQueue { batches: tx, room: Arc::new(tokio::sync::Semaphore::new(capacity)), capacity };
            tokio::spawn(deliver_messages(rx, queue.clone(), channels.clone(), deliverer.clone(), metrics.clone()));
            queue
        })
        .collect()
}

/// fred's Pub/Sub messages (Redis Cluster) -> the delivery workers.
///
/// fred's reader hands every message to a fixed-size buffer and never waits: whatever this side
/// has not taken when it is full is lost (and counted). So this loop only takes messages and
/// passes each to its user's worker, where the decoding and emitting happen.
pub(super) async fn receive(
    subscriber: SubscriberClient,
    channels: Arc<Channels>,
    workers: Vec<WorkerQueue>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut messages = subscriber.message_rx();
    // On a thread of its own: as a task it waits its turn behind the delivery workers, and a
    // burst then overflows fred's buffer while the workers' queues still have room.
    let drain = std::thread::Builder::new().name("herald-bus-drain".into()).spawn(move || {
        loop {
            match messages.blocking_recv() {
                Ok(message) => {
                    if channels.owner(&message.channel).is_none() {
                        continue;
                    }
                    // One channel always to the same worker, which keeps its messages in order.
                    let worker = worker_of(&message.channel, workers.len());
                    let Some(payload) = message.value.as_bytes().map(Bytes::copy_from_slice) else {
                        metrics.bus_decode_failures.increment(1);
                        continue;
                    };
                    let pushed = Pushed { channel: message.channel.into_inner(), payload };
                    // fred's buffer is behind this thread: waiting here only moves the loss there.
                    match workers[worker].try_send(vec![pushed]) {
                        Ok(true) => {}
                        Ok(false) => metrics.bus_lagged.increment(1),
                        Err(()) => return,
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

pub(super) fn worker_of(channel: &str, workers: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(channel) as usize % workers
}

/// One delivery worker (Redis Cluster): decodes its messages and emits them.
pub(super) async fn deliver_messages(
    mut batches: mpsc::UnboundedReceiver<Vec<Pushed>>,
    queue: WorkerQueue,
    channels: Arc<Channels>,
    deliverer: Arc<dyn Inbound>,
    metrics: Arc<Metrics>,
) {
    while let Some(batch) = batches.recv().await {
        let count = batch.len();
        for message in batch {
            deliver_one(&channels, &*deliverer, &metrics, &message.channel, &message.payload);
        }
        queue.done(count);
    }
}
