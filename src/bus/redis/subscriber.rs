//! herald's own subscriber connection, for one Redis server or a Sentinel-watched master: it
//! keeps the subscriptions equal to the channels of the users and groups with a socket here
//! (and the broadcast channel), and delivers each message the
//! moment it is read, straight out of the read buffer (no queue, no hand-off to another task:
//! both cost more than the delivery itself).
//!
//! Nothing is lost to a buffer: while herald delivers, it does not read, and what Redis sends
//! meanwhile waits in the socket and in the connection's output buffer on the Redis side
//! (bounded there by Redis's `client-output-buffer-limit pubsub`; a connection Redis closes for
//! it is logged and counted as a reconnect). A client library's fixed message buffer lost whole
//! bursts here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::address::{Access, Endpoint};
use super::channels::{Channels, Owner};
use super::health::Health;
use super::interest::{Interest, Op};
use super::link::Link;
use super::resp::{self, Value};
use crate::bus::envelope;
use crate::bus::inbound::{Addressee, Inbound};
use crate::metrics::Metrics;
use crate::replay::NotificationId;

/// Most channels named in one SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;

/// Reads this large at most at once; the buffer grows only for a message larger than this.
const READ_CHUNK: usize = 64 << 10;
/// A connection silent this long is asked for a PING.
const IDLE_PING: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// After Redis refuses a subscriber command, the changes wait this long before they are sent
/// again (a cluster's slot map is asked for meanwhile), rather than bouncing at once.
const REFUSED_PAUSE: Duration = Duration::from_millis(200);

pub struct Subscriptions {
    pub(super) access: Access,
    /// One cluster master; `None`: where the URL leads.
    pub(super) node: Option<Endpoint>,
    /// Told when this node may no longer own its channels' slots (a cluster's subscribers).
    pub(super) topology: Option<Arc<Notify>>,
    pub(super) health: Arc<Health>,
    pub(super) sharded: bool,
    pub(super) channels: Arc<Channels>,
    pub(super) timeout: Duration,
    pub(super) metrics: Arc<Metrics>,
    pub(super) deliverer: Arc<dyn Inbound>,
    pub(super) connected: Arc<AtomicBool>,
    pub(super) interest: Interest,
    /// No changes are written before this (see [`REFUSED_PAUSE`]).
    pub(super) hold_until: Option<Instant>,
    /// Subscriptions last added to the gauge.
    pub(super) reported: usize,
}

enum Ended {
    Cancelled,
    Lost(String),
}

impl Subscriptions {
    /// Connects, subscribes and reads until cancelled, reconnecting with a backoff.
    pub async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>, cancel: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut connections = 0u64;
        loop {
            let (access, node) = (self.access.clone(), self.node.clone());
            let connecting = async move {
                match node {
                    Some((host, port)) => access.node(&host, port).await,
                    None => access.connect().await,
                }
            };
            tokio::pin!(connecting);
            // Joins and leaves keep coming while there is no connection.
            let stream = loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    result = &mut connecting => break result,
                    op = ops.recv() => match op {
                        Some(op) => self.interest.apply(op),
                        None => return,
                    },
                }
            };
            let source = self.source();
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "Redis subscriber cannot connect; retrying.");
                    self.health.failed(&source, &e);
                    self.hint_topology();
                    if !self.pause(backoff, &mut ops, &cancel).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            self.health.recovered(&source);
            connections += 1;
            if connections > 1 {
                info!(channels = self.interest.wanted.len(), "Redis subscriber reconnected; re-subscribing.");
                self.metrics.redis_reconnects.increment(1);
            }
            // A new connection has no subscriptions: redo them all.
            self.interest.reset();
            self.connected.store(true, Ordering::Release);
            let ended = self.serve(stream, &mut ops, &cancel).await;
            self.connected.store(false, Ordering::Release);
            self.report_count(0);
            match ended {
                Ended::Cancelled => return,
                Ended::Lost(why) => {
                    warn!(error = %why, "Redis subscriber connection lost; reconnecting.");
                    self.hint_topology();
                }
            }
        }
    }

    /// Names this connection in `/readyz`.
    fn source(&self) -> String {
        match &self.node {
            Some((host, port)) => format!("subscriber {host}:{port}"),
            None => "subscriber".to_owned(),
        }
    }

    fn hint_topology(&self) {
        if let Some(t) = &self.topology {
            t.notify_one();
        }
    }

    /// Sleeps `pause` while still taking joins and leaves; false when cancelled.
    async fn pause(&mut self, pause: Duration, ops: &mut mpsc::UnboundedReceiver<Op>, cancel: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = &mut sleep => return true,
                op = ops.recv() => match op {
                    Some(op) => self.interest.apply(op),
                    None => return false,
                },
            }
        }
    }

    async fn serve(&mut self, stream: Link, ops: &mut mpsc::UnboundedReceiver<Op>, cancel: &CancellationToken) -> Ended {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let (mut last_read, mut ping_sent) = (Instant::now(), None::<Instant>);
        loop {
            if let Err(e) = self.write_changes(&mut writer).await {
                return Ended::Lost(e);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                op = ops.recv() => {
                    let Some(op) = op else { return Ended::Cancelled };
                    self.interest.apply(op);
                    // Take everything queued meanwhile: a connect storm becomes a few commands.
                    while let Ok(op) = ops.try_recv() {
                        self.interest.apply(op);
                    }
                }
                read = read_more(&mut reader, &mut buf) => {
                    match read {
                        Ok(0) => return Ended::Lost("closed by Redis".into()),
                        Ok(_) => {}
                        Err(e) => return Ended::Lost(e.to_string()),
                    }
                    (last_read, ping_sent) = (Instant::now(), None);
                    if let Err(e) = self.take_values(&mut buf) {
                        return Ended::Lost(e);
                    }
                }
                _ = tick.tick() => {
                    match ping_sent {
                        Some(at) if at.elapsed() > self.timeout => return Ended::Lost("no answer to PING".into()),
                        None if last_read.elapsed() > IDLE_PING => {
                            let mut out = Vec::new();
                            resp::command(&mut out, &[b"PING"]);
                            if let Err(e) = write_within(&mut writer, &out, self.timeout).await {
                                return Ended::Lost(e);
                            }
                            ping_sent = Some(Instant::now());
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Every complete value in `buf`: messages delivered, subscription confirmations noted.
    fn take_values(&mut self, buf: &mut BytesMut) -> Result<(), String> {
        loop {
            // Messages, nearly all of what arrives, are read without building a value.
            if let Some(m) = resp::message_at(buf) {
                deliver_one(&self.channels, &*self.deliverer, &self.metrics, &buf[m.channel], &buf[m.payload]);
                buf.advance(m.len);
                continue;
            }
            let Some(value) = resp::take(buf).map_err(|e| e.to_string())? else { break };
            let Value::Array(Some(parts)) = value else {
                if let Value::Error(e) = value {
                    // A refused SUBSCRIBE names no channel: try every unconfirmed one again, after
                    // a pause (on a cluster, MOVED: the slot map is asked for meanwhile).
                    warn!(error = %String::from_utf8_lossy(&e), "Redis refused a subscriber command; retrying.");
                    if e.starts_with(b"MOVED ") {
                        self.hint_topology();
                    }
                    let unconfirmed: Vec<String> =
                        self.interest.wanted.keys().filter(|u| !self.interest.subscribed.contains(*u)).cloned().collect();
                    self.interest.dirty.extend(unconfirmed);
                    // Unwanted ones may be gone already (a moved slot ends its subscriptions).
                    let wanted = &self.interest.wanted;
                    self.interest.subscribed.retain(|c| wanted.contains_key(c));
                    self.hold_until = Some(Instant::now() + REFUSED_PAUSE);
                }
                continue;
            };
            let kind = parts.first().and_then(Value::as_bytes).map(|b| b.as_ref());
            match (kind, parts.get(1).and_then(Value::as_bytes)) {
                (Some(b"subscribe" | b"ssubscribe"), Some(channel)) => self.confirmed(channel, true),
                (Some(b"unsubscribe" | b"sunsubscribe"), Some(channel)) => self.confirmed(channel, false),
                _ => {}
            }
        }
        self.interest.answer_waiters();
        Ok(())
    }

    fn confirmed(&mut self, channel: &Bytes, subscribed: bool) {
        let Ok(channel) = std::str::from_utf8(channel) else { return };
        let ours = !subscribed && self.interest.unsubscribing.remove(channel);
        if subscribed && !self.interest.unsubscribing.contains(channel) {
            self.interest.subscribed.insert(channel.to_owned());
        } else if !subscribed {
            self.interest.subscribed.remove(channel);
        }
        // A join or leave since the command went out is done by the next one.
        if self.interest.wanted.contains_key(channel) != subscribed {
            self.interest.dirty.insert(channel.to_owned());
            if !subscribed && !ours {
                // Ended by Redis, not asked for: on a cluster, its slot moved to another master.
                self.hint_topology();
                self.hold_until = Some(Instant::now() + REFUSED_PAUSE);
            }
        }
        self.report_count(self.interest.subscribed.len());
    }

    /// Moves the subscriptions gauge by this connection's change (a cluster has several).
    fn report_count(&mut self, now: usize) {
        self.metrics.subscriptions.increment(now as f64 - self.reported as f64);
        self.reported = now;
    }

    /// SUBSCRIBE / UNSUBSCRIBE (or the sharded forms) for what changed, in one write.
    async fn write_changes(&mut self, writer: &mut WriteHalf<Link>) -> Result<(), String> {
        if self.interest.dirty.is_empty() || self.hold_until.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        let (subscribe, unsubscribe) = self.interest.changes();
        let (sub, unsub): (&[u8], &[u8]) = if self.sharded { (b"SSUBSCRIBE", b"SUNSUBSCRIBE") } else { (b"SUBSCRIBE", b"UNSUBSCRIBE") };
        let mut out = Vec::new();
        for (verb, channels) in [(sub, &subscribe), (unsub, &unsubscribe)] {
            // Sharded channels of one command must share a slot; one standalone server has all
            // slots, but a channel per command keeps the rule without computing slots.
            let per_command = if self.sharded { 1 } else { CHANNELS_PER_COMMAND };
            for chunk in channels.chunks(per_command) {
                let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
                args.push(verb);
                args.extend(chunk.iter().map(|c| c.as_bytes()));
                resp::command(&mut out, &args);
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        write_within(writer, &out, self.timeout).await
    }
}

/// Writes `bytes` within `timeout`: a connection that takes nothing (Redis stuck, the network
/// gone quiet) is given up, not waited on while nothing is read.
async fn write_within(writer: &mut WriteHalf<Link>, bytes: &[u8], timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, writer.write_all(bytes)).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("writing to Redis timed out".into()),
    }
}

/// Reads what is there into `buf`, at most [`READ_CHUNK`] at a time.
async fn read_more(reader: &mut ReadHalf<Link>, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(READ_CHUNK);
    reader.read_buf(buf).await
}

/// Decodes one bus message and emits it to its audience's local sockets.
fn deliver_one(channels: &Channels, deliverer: &dyn Inbound, metrics: &Metrics, channel: &[u8], payload: &[u8]) {
    let Some(owner) = std::str::from_utf8(channel).ok().and_then(|c| channels.owner(c)) else { return };
    if let Owner::Instance(_) = owner {
        match envelope::Relayed::decode(payload) {
            Some(message) => deliverer.relayed(message),
            None => metrics.bus_decode_failures.increment(1),
        }
        return;
    }
    if let Some(token) = envelope::decode_cut(payload) {
        let on = match owner {
            Owner::User(user) => Addressee::User(user),
            Owner::Group(name) => Addressee::Group { name, among: &[] },
            _ => Addressee::Everyone,
        };
        return deliverer.cut(on, token);
    }
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
            let arrival = env.arrival();
            let among: Vec<&str> = env.among.iter().map(|g| &**g).collect();
            let to = match owner {
                Owner::User(user) => {
                    if let Some(Ok(id)) = env.id.as_deref().map(str::parse::<NotificationId>) {
                        deliverer.deliver_retained(user, id, &arrival);
                        return;
                    }
                    Addressee::User(user)
                }
                Owner::Group(name) => Addressee::Group { name, among: &among },
                Owner::Broadcast => Addressee::Everyone,
                Owner::Instance(_) => return,
            };
            deliverer.deliver(to, &arrival, env.origin.as_deref());
        }
        Err(e) => {
            metrics.bus_decode_failures.increment(1);
            debug!(channel = %String::from_utf8_lossy(channel), error = %e, "Ignored a bus message that is not a herald envelope.");
        }
    }
}
