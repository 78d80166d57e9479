//! The Kafka consumer: records in, routed batches out to the bus, offsets stored only after the
//! bus accepted the batch (at-least-once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::dead_letter::DeadLetter;
use super::offline::OfflineHandOff;
use super::traced::BatchSpans;
use crate::bus::Bus;
use crate::bus::retry::Backoff;
use crate::clock::unix_us;
use crate::config::Config;
use crate::metrics::{ByLabel, LabelValue, Metrics, RECORDS_DROPPED};
use crate::notification::Notification;
use crate::route::{DropReason, Record, RouteError, Router};
use crate::telemetry::TraceContext;
use crate::throttle::{Throttle, Verdict};

/// Settings herald applies unless `kafka.options` says otherwise.
const DEFAULT_OPTIONS: &[(&str, &str)] = &[
    // Records produced before herald first joined the group are old news, not notifications.
    ("auto.offset.reset", "latest"),
    // Low latency: answer a fetch as soon as there is a record.
    ("fetch.wait.max.ms", "100"),
    // A crashed instance's partitions move within seconds, not the 45 s default.
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    // A request a broker never answers (a restart behind a proxy, a network partition) is given
    // up on after 10 s, not librdkafka's 60 s: until then what waits behind it (a group rejoin,
    // offset commits, readiness probes) waits too.
    ("socket.timeout.ms", "10000"),
    // Offsets are committed in the background from what herald stored, every second.
    ("auto.commit.interval.ms", "1000"),
];

/// Connection state of the consumer, for readiness.
#[derive(Default)]
pub struct KafkaHealth {
    connected: AtomicBool,
    /// Why the brokers cannot be used, as librdkafka last said (kept until they can: it
    /// repeats an identical error only every 30 s).
    problem: std::sync::Mutex<Option<String>>,
}

impl KafkaHealth {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Why Kafka is not usable, while it is not.
    pub fn problem(&self) -> Option<String> {
        if self.is_connected() {
            return None;
        }
        self.problem.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_problem(&self, why: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }
}

/// Logs rebalances, counts commit failures, keeps the reason the brokers cannot be used.
struct Context {
    metrics: Arc<Metrics>,
    health: Arc<KafkaHealth>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => info!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let what = match error.rdkafka_error_code() {
            Some(Code::Authentication | Code::SaslAuthenticationFailed) => "kafka authentication failed",
            Some(Code::SSL) => "kafka TLS failed",
            Some(Code::AllBrokersDown) => "kafka brokers unreachable",
            Some(Code::Resolve) => "kafka broker address does not resolve",
            Some(Code::Fatal) => "kafka client failed",
            _ => {
                debug!(target: "librdkafka", error = %error, "Kafka client error: {reason}");
                return;
            }
        };
        warn!(target: "librdkafka", error = %error, "{what}: {reason}");
        // "All brokers down" follows the real cause: keep the cause.
        let keep = what == "kafka brokers unreachable" && self.health.problem.lock().is_ok_and(|p| p.is_some());
        if !keep {
            self.health.set_problem(Some(format!("{what}: {reason}")));
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance {
            // Everything stored so far was delivered to the bus: commit it before the partitions
            // move, so their next owner does not deliver it again. Async: this callback runs
            // inside the consumer's poll on a runtime worker, and a synchronous commit to an
            // unreachable coordinator would hold that worker (and the whole source) hostage.
            match consumer.commit_consumer_state(CommitMode::Async) {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    self.metrics.commit_failures.increment(1);
                    warn!(error = %e, "Commit before a rebalance failed; the new owner will consume some records again.");
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.assigned_partitions.set(tpl.count() as f64);
                info!(partitions = %describe(tpl), "Partitions assigned.");
            }
            Rebalance::Revoke(tpl) => {
                self.metrics.assigned_partitions.set(0.0);
                info!(partitions = %describe(tpl), "Partitions revoked.");
            }
            Rebalance::Error(e) => warn!(error = %e, "Rebalance failed."),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.metrics.commit_failures.increment(1);
                warn!(error = %e, "Offset commit failed; the records will be consumed again.");
            }
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer<Context>>,
    router: Arc<Router>,
    bus: Arc<Bus>,
    metrics: Arc<Metrics>,
    /// Records and notifications that reached no one, by reason.
    dropped: ByLabel<DropReason>,
    health: Arc<KafkaHealth>,
    max_batch: usize,
    topics: Vec<String>,
    dead_letter: Option<DeadLetter>,
    offline: Option<OfflineHandOff>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the configured topics. `bootstrap` is the broker
    /// list (the embedded broker's address in embedded mode).
    pub fn new(config: &Config, bootstrap: &str, router: Arc<Router>, bus: Arc<Bus>, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let mut client = ClientConfig::new();
        for (k, v) in DEFAULT_OPTIONS {
            client.set(*k, *v);
        }
        for (k, v) in &config.kafka.options {
            client.set(k, v);
        }
        client
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "true")
            // The heart of at-least-once: nothing is committed that herald did not store itself.
            .set("enable.auto.offset.store", "false")
            .set_log_level(RDKafkaLogLevel::Warning);
        let (mechanisms, oidc) = crate::config::kafka_features();
        info!(sasl = %mechanisms.join(","), oidc, "Kafka client security built in: TLS, mutual TLS, and these SASL mechanisms.");
        let health = Arc::new(KafkaHealth::default());
        let consumer: StreamConsumer<Context> = client
            .create_with_context(Context { metrics: metrics.clone(), health: health.clone() })
            .map_err(|e| anyhow::anyhow!("kafka: cannot create the consumer: {e}"))?;
        let topics: Vec<String> = config.kafka.topics.iter().map(|t| t.name.clone()).collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| anyhow::anyhow!("kafka: cannot subscribe to {names:?}: {e}"))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            router,
            bus,
            dropped: metrics.by_label(RECORDS_DROPPED),
            metrics,
            health,
            max_batch: config.kafka.max_batch,
            topics,
            dead_letter: config
                .kafka
                .dead_letter_topic
                .as_deref()
                .map(|t| DeadLetter::new(t, bootstrap, &config.kafka.options))
                .transpose()?,
            offline: OfflineHandOff::new(&config.kafka, bootstrap)?,
        })
    }

    pub fn health(&self) -> Arc<KafkaHealth> {
        self.health.clone()
    }

    /// Consumes until `stop` fires, then finishes the batch in hand and commits. `abort` fires
    /// at the end of the grace period: a batch still waiting for the bus is then left
    /// uncommitted, to be consumed again by whoever owns the partition next.
    pub async fn run(self, stop: CancellationToken, abort: CancellationToken) -> anyhow::Result<()> {
        let probe_stop = CancellationToken::new();
        let probe = tokio::spawn(probe_connection(
            self.consumer.clone(),
            self.topics[0].clone(),
            self.health.clone(),
            self.metrics.clone(),
            probe_stop.clone(),
        ));
        let result = self.consume(&stop, &abort).await;
        // Let the probe finish its current call, so it holds no reference to the consumer.
        probe_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), probe).await;
        // Committing, leaving the group and closing the consumer (its drop) are blocking
        // librdkafka calls that can take long, or forever, when the cluster is gone: they run
        // on a thread of their own that nothing waits for past the deadline.
        let consumer = self.consumer;
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("herald-kafka-close".into()).spawn(move || {
            // Closing happens in the drop of the last reference: it must be this one, never a
            // probe call still finishing on the blocking pool, whose drop would then block
            // there (with the broker gone, for ever) and hold up runtime shutdown. So wait for
            // the probe's reference however long its call takes: this thread is waited for
            // only until the deadline below.
            let mut consumer = consumer;
            loop {
                match Arc::try_unwrap(consumer) {
                    Ok(sole) => {
                        consumer = Arc::new(sole);
                        break;
                    }
                    Err(shared) => {
                        consumer = shared;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => info!("Offsets committed."),
                Err(e) => warn!(error = %e, "Final offset commit failed; some records will be consumed again."),
            }
            // Leave the group now so the partitions move at once, not after the session timeout.
            consumer.unsubscribe();
            drop(consumer);
            let _ = done_tx.send(());
        });
        info!("Committing offsets and leaving the consumer group.");
        if spawned.is_err() || tokio::time::timeout(Duration::from_secs(8), done).await.is_err() {
            warn!("Leaving the consumer group is taking long; going on without waiting.");
        }
        result
    }

    async fn consume(&self, stop: &CancellationToken, abort: &CancellationToken) -> anyhow::Result<()> {
        let mut stream = self.consumer.stream();
        let mut messages: Vec<BorrowedMessage<'_>> = Vec::with_capacity(self.max_batch);
        let mut notifications: Vec<Notification> = Vec::with_capacity(self.max_batch);
        static BAD_RECORD_LOG: Throttle = Throttle::new(10, Duration::from_secs(10));
        static CONSUMER_ERROR_LOG: Throttle = Throttle::new(5, Duration::from_secs(10));
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                m = stream.next() => m.expect("kafka streams never end"),
            };
            match first {
                Ok(m) => messages.push(m),
                Err(e) => {
                    if CONSUMER_ERROR_LOG.check() != Verdict::Suppress {
                        warn!(error = %e, "Kafka consumer error.");
                    }
                    continue;
                }
            }
            // Whatever else is already fetched joins the batch: one bus round trip for many records.
            while messages.len() < self.max_batch {
                match stream.next().now_or_never() {
                    Some(Some(Ok(m))) => messages.push(m),
                    _ => break,
                }
            }
            if !self.health.connected.swap(true, Ordering::Relaxed) {
                self.metrics.kafka.observe(true);
            }

            // The moment herald took these records: where its own share of the latency starts.
            let taken_us = unix_us();
            notifications.clear();
            // Counted per run of one topic: one lookup per batch, not per record.
            for run in messages.chunk_by(|a, b| a.topic() == b.topic()) {
                self.metrics.consumed(run[0].topic(), run.len() as u64);
            }
            let headers: Vec<Vec<(&str, &[u8])>> = messages
                .iter()
                .map(|m| m.headers().map(|h| h.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect()).unwrap_or_default())
                .collect();
            // The trace each record's notifications carry on: its producer's, or (traced and
            // exporting) the span of herald's that consumed it.
            // A batch without headers and without export allocates nothing for it.
            let tracer = crate::telemetry::tracer();
            let mut traces: Vec<Option<Arc<TraceContext>>> = Vec::new();
            if tracer.is_some() || headers.iter().any(|h| !h.is_empty()) {
                traces = headers.iter().map(|h| TraceContext::from_headers(h)).collect();
            }
            let mut spans = tracer.map(|t| BatchSpans::consume(t, &messages, &mut traces, taken_us)).filter(BatchSpans::any);
            let records: Vec<Record<'_>> = messages
                .iter()
                .zip(&headers)
                .enumerate()
                .map(|(i, (m, headers))| Record {
                    topic: m.topic(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key(),
                    value: m.payload(),
                    timestamp_ms: m.timestamp().to_millis(),
                    headers,
                    trace: traces.get(i).and_then(Option::as_ref),
                })
                .collect();
            let route_started = spans.as_ref().map(|_| std::time::SystemTime::now());
            let failures = self.router.route_batch(&records, &mut notifications);
            if let (Some(spans), Some(started)) = (&mut spans, route_started) {
                let topics: Vec<&str> = records.iter().map(|r| r.topic).collect();
                spans.routed(&self.router, &topics, started, &mut notifications);
            }
            let mut dead = Vec::new();
            for (index, e) in failures {
                let record = &records[index];
                self.dropped.increment(e.reason, 1);
                if let (Some(script), DropReason::ScriptError) = (&e.script, e.reason) {
                    self.metrics.script_error(script);
                }
                if e.reason == DropReason::Filtered {
                    continue;
                }
                match BAD_RECORD_LOG.check() {
                    Verdict::Log => {
                        warn!(topic = record.topic, partition = record.partition, offset = record.offset, reason = e.reason.as_label(), error = %e, "Skipped a record.")
                    }
                    Verdict::LogAfterSuppressing(n) => {
                        warn!(topic = record.topic, partition = record.partition, offset = record.offset, reason = e.reason.as_label(), error = %e, suppressed = n, "Skipped a record (and {n} more not logged).")
                    }
                    Verdict::Suppress => {}
                }
                if self.dead_letter.is_some() {
                    dead.push((record, e));
                }
            }
            // Dead letters before the offsets are stored: at least once.
            if let Some(dlq) = &self.dead_letter
                && !dead.is_empty()
                && self.dead_letters(dlq, dead, Held(&messages), abort).await.is_none()
            {
                return Ok(());
            }

            for n in &mut notifications {
                n.consumed_us = taken_us;
            }
            if !notifications.is_empty() {
                let Some(published) = self.bus.publish_until_taken(&notifications, &Held(&messages), abort, &self.metrics).await else {
                    // Aborted while the bus was down: leave the offsets unstored.
                    return Ok(());
                };
                for n in &notifications {
                    self.metrics.published.increment(n.to.kind(), 1);
                }
                if let Some(spans) = spans.take() {
                    spans.published(&published);
                }
                // A retained notification for an offline user waits in the history: not a drop.
                let offline = published.iter().filter(|p| p.receivers == 0 && p.stored.is_none()).count();
                let kept = published.iter().filter(|p| p.receivers == 0 && p.stored.is_some()).count();
                self.metrics.retained_offline.increment(kept as u64);
                if offline > 0 {
                    self.dropped.increment(DropReason::Offline, offline as u64);
                }
                // Handed off before the offsets are stored: at least once. Retained ones too (they
                // also wait in the history).
                if let Some(hand_off) = &self.offline {
                    let unheard: Vec<&Notification> = notifications
                        .iter()
                        .zip(&published)
                        .filter(|(n, p)| p.receivers == 0 && hand_off.target(n).is_some())
                        .map(|(n, _)| n)
                        .collect();
                    if !unheard.is_empty() {
                        if self.hand_off(hand_off, &unheard, Held(&messages), abort).await.is_none() {
                            return Ok(());
                        }
                        self.metrics.handed_off.increment(unheard.len() as u64);
                    }
                }
            }
            self.store_offsets(&messages);
            messages.clear();
        }
    }

    /// Produces a batch's dead letters together, and again those not acknowledged, with backoff,
    /// while the batch waits (or until `abort`): a bad record's offset is stored only once its
    /// dead letter is in the topic. A dead letter sent twice is a duplicate, never a loss.
    async fn dead_letters(
        &self,
        dlq: &DeadLetter,
        mut pending: Vec<(&Record<'_>, RouteError)>,
        held: Held<'_>,
        abort: &CancellationToken,
    ) -> Option<()> {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        loop {
            let results = futures::future::join_all(pending.iter().map(|(record, e)| dlq.send(record, e))).await;
            let mut last_error = None;
            let mut unacknowledged = Vec::new();
            for (letter, result) in pending.into_iter().zip(results) {
                self.metrics.dead_lettered(result.is_ok());
                if let Err(e) = result {
                    last_error = Some(e);
                    unacknowledged.push(letter);
                }
            }
            let Some(error) = last_error else { return Some(()) };
            warn!(error = %error, records = %held, dead_letters = unacknowledged.len(), "Dead letters not acknowledged; holding consumption and retrying.");
            pending = unacknowledged;
            if !backoff.wait(abort).await {
                return None;
            }
        }
    }

    /// Produces to the offline topic until every notification is acknowledged (or `abort`).
    async fn hand_off(
        &self,
        hand_off: &OfflineHandOff,
        unheard: &[&Notification],
        held: Held<'_>,
        abort: &CancellationToken,
    ) -> Option<()> {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        loop {
            match hand_off.send(unheard).await {
                Ok(()) => return Some(()),
                Err(e) => {
                    warn!(error = %e, records = %held, notifications = unheard.len(), "Offline hand-off not acknowledged; holding consumption and retrying.")
                }
            }
            if !backoff.wait(abort).await {
                return None;
            }
        }
    }

    fn store_offsets(&self, messages: &[BorrowedMessage<'_>]) {
        for ((topic, partition), (_, offset)) in offset_ranges(positions(messages)) {
            if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
                // After a rebalance took the partition away; its new owner re-reads from the
                // last commit, which is a duplicate, never a loss.
                self.metrics.commit_failures.increment(1);
                debug!(topic, partition, offset, error = %e, "Could not store an offset.");
            }
        }
    }
}

/// Where each message of a batch sits: topic, partition, offset.
fn positions<'a>(messages: &'a [BorrowedMessage<'_>]) -> impl Iterator<Item = (&'a str, i32, i64)> {
    messages.iter().map(|m| (m.topic(), m.partition(), m.offset()))
}

type OffsetRanges<'a> = BTreeMap<(&'a str, i32), (i64, i64)>;

/// The first and last offset of each partition in a batch.
fn offset_ranges<'a>(positions: impl Iterator<Item = (&'a str, i32, i64)>) -> OffsetRanges<'a> {
    let mut ranges = BTreeMap::new();
    for (topic, partition, offset) in positions {
        let (first, last) = ranges.entry((topic, partition)).or_insert((offset, offset));
        (*first, *last) = ((*first).min(offset), (*last).max(offset));
    }
    ranges
}

/// `topic/partition@first..=last, ...`, as logs name a batch's records.
fn describe_ranges(ranges: &OffsetRanges<'_>) -> String {
    let described: Vec<String> =
        ranges.iter().map(|((topic, partition), (first, last))| format!("{topic}/{partition}@{first}..={last}")).collect();
    described.join(", ")
}

/// The records a publish holds, for its log lines (described only when a line is written).
#[derive(Clone, Copy)]
struct Held<'a>(&'a [BorrowedMessage<'a>]);

impl std::fmt::Display for Held<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe_ranges(&offset_ranges(positions(self.0))))
    }
}

/// Asks the cluster for metadata every couple of seconds, so readiness reflects whether Kafka
/// answers even when no records flow.
async fn probe_connection(
    consumer: Arc<StreamConsumer<Context>>,
    topic: String,
    health: Arc<KafkaHealth>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut was = None;
    loop {
        let c = consumer.clone();
        let t = topic.clone();
        let up = tokio::task::spawn_blocking(move || {
            let up = c.fetch_metadata(Some(&t), Duration::from_secs(2));
            // If the source finished meanwhile, this is the last reference, and dropping it closes
            // the consumer: a blocking call that, with the broker gone, never returns. Never on
            // the blocking pool, which runtime shutdown waits for: on a thread nobody joins.
            if let Some(last) = Arc::into_inner(c) {
                let _ = std::thread::Builder::new().name("herald-kafka-close".into()).spawn(move || drop(last));
            }
            up
        })
        .await
        .unwrap_or_else(|e| Err(KafkaError::Canceled).inspect_err(|_| debug!(error = %e, "metadata probe failed")));
        let up = match up {
            Ok(_) => {
                health.set_problem(None);
                true
            }
            Err(e) => {
                if health.problem().is_none() {
                    health.set_problem(Some(format!("kafka metadata request failed: {e}")));
                }
                false
            }
        };
        health.connected.store(up, Ordering::Relaxed);
        metrics.kafka.observe(up);
        if was != Some(up) {
            if up {
                info!("Kafka reachable.");
            } else {
                warn!("Kafka unreachable.");
            }
            was = Some(up);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_described_by_its_offset_range_per_partition() {
        let batch = [("t", 1, 7), ("t", 0, 3), ("t", 1, 5), ("u", 0, 9), ("t", 1, 6), ("t", 0, 4)];
        let ranges = offset_ranges(batch.into_iter());
        assert_eq!(ranges[&("t", 1)], (5, 7), "first and last, whatever the arrival order");
        assert_eq!(describe_ranges(&ranges), "t/0@3..=4, t/1@5..=7, u/0@9..=9");
        assert_eq!(describe_ranges(&offset_ranges(std::iter::empty())), "");
    }
}
