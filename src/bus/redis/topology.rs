//! Redis Cluster as herald sees it: which master serves each slot (`CLUSTER SLOTS`, asked
//! again after a redirect, a lost node, or every few seconds), one pipelined connection per
//! master, and commands sent to the master of their slot, following `MOVED` and `ASK`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::address::{Access, Endpoint};
use super::link::LinkError;
use super::pipelined::{Pipeline, Pipelined};
use super::resp::Value;
use super::slots::SLOTS;
use crate::config::RedisTarget;

/// Redirects followed for one command before it is given up (as an error reply).
const MAX_REDIRECTS: usize = 4;
const NO_MASTER: u16 = u16::MAX;

/// One command, and the slot whose master must run it.
pub struct Command {
    pub args: Vec<Vec<u8>>,
    pub slot: u16,
}

/// Which master serves each slot.
#[derive(Default, PartialEq, Eq)]
pub struct SlotMap {
    owner: Vec<u16>,
    pub masters: Vec<Endpoint>,
}

impl SlotMap {
    pub fn master_of(&self, slot: u16) -> Option<&Endpoint> {
        match self.owner.get(slot as usize) {
            Some(&i) if i != NO_MASTER => self.masters.get(i as usize),
            _ => None,
        }
    }

    /// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id], replica...], ...]`. A
    /// master announced without a host is the node that answered (`asked`).
    fn parse(reply: &Value, asked: &Endpoint) -> Option<Self> {
        let Value::Array(Some(ranges)) = reply else { return None };
        let mut map = SlotMap { owner: vec![NO_MASTER; SLOTS], masters: Vec::new() };
        for range in ranges {
            let Value::Array(Some(parts)) = range else { return None };
            let (Some(Value::Integer(start)), Some(Value::Integer(end)), Some(Value::Array(Some(node)))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return None;
            };
            // No host (empty, `?`, or null with `cluster-preferred-endpoint-type unknown-endpoint`):
            // the node that answered.
            let host = node.first()?.as_str().unwrap_or_default();
            let host = if host.is_empty() || host == "?" { asked.0.clone() } else { host.to_owned() };
            let Some(Value::Integer(port)) = node.get(1) else { return None };
            let endpoint = (host, u16::try_from(*port).ok()?);
            let index = match map.masters.iter().position(|m| *m == endpoint) {
                Some(i) => i,
                None => {
                    map.masters.push(endpoint);
                    map.masters.len() - 1
                }
            };
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            if start > end || end >= SLOTS {
                return None;
            }
            map.owner[start..=end].fill(index as u16);
        }
        Some(map)
    }
}

pub struct Cluster {
    access: Access,
    map: ArcSwap<SlotMap>,
    links: std::sync::Mutex<HashMap<Endpoint, Arc<Pipelined>>>,
    refreshing: tokio::sync::Mutex<()>,
    stale: AtomicBool,
    /// Bumped whenever the slot map changes, for the subscribers to follow.
    version: watch::Sender<u64>,
    /// When the slot map last changed after the first one: channels of moved slots are not
    /// subscribed on their new master for a moment, like after a reconnection.
    changed_at: std::sync::Mutex<Option<Instant>>,
}

impl Cluster {
    pub fn new(access: Access) -> Self {
        Self {
            access,
            map: ArcSwap::from_pointee(SlotMap::default()),
            links: Default::default(),
            refreshing: Default::default(),
            stale: AtomicBool::new(true),
            version: watch::channel(0).0,
            changed_at: Default::default(),
        }
    }

    pub fn map(&self) -> Arc<SlotMap> {
        self.map.load_full()
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Asks for the slot map again before the next command.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    fn link(&self, node: &Endpoint) -> Arc<Pipelined> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.entry(node.clone()).or_insert_with(|| Arc::new(Pipelined::new(self.access.clone(), Some(node.clone())))).clone()
    }

    /// Reads the slot map from the first node that gives one: known masters first, then the
    /// URL's nodes. Connections to nodes that are no longer masters are closed.
    pub async fn refresh(&self) -> Result<(), LinkError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let mut candidates = self.map.load().masters.clone();
        if let RedisTarget::Cluster { seeds } = &self.access.address.target {
            candidates.extend(seeds.iter().filter(|s| !candidates.contains(s)).cloned().collect::<Vec<_>>());
        }
        let mut last = LinkError::Unreachable("no cluster node to ask".into());
        // A map with slots no master serves (mid-failover, or a cluster not fully assigned),
        // used if no node knows a whole one.
        let mut partial: Option<SlotMap> = None;
        for node in candidates {
            let mut ask = Pipeline::default();
            ask.push(&[b"CLUSTER".as_slice(), b"SLOTS"]);
            let reply = match self.link(&node).send(&ask).await {
                Ok(mut replies) => replies.remove(0),
                Err(e @ (LinkError::Untrusted(_) | LinkError::Refused(_))) => return Err(e),
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let Some(map) = SlotMap::parse(&reply, &node) else {
                last = LinkError::Refused(format!("{}:{} gave no slot map: {reply:?}", node.0, node.1));
                continue;
            };
            if map.owner.contains(&NO_MASTER) {
                // Mid-failover some node may still miss slots; another may know better.
                let holes = |m: &SlotMap| m.owner.iter().filter(|o| **o == NO_MASTER).count();
                if partial.as_ref().is_none_or(|p| holes(&map) < holes(p)) {
                    partial = Some(map);
                }
                last = LinkError::Unreachable(format!("{}:{} knows no master for some slots", node.0, node.1));
                continue;
            }
            self.adopt(map);
            self.stale.store(false, Ordering::Release);
            return Ok(());
        }
        if let Some(map) = partial {
            // Commands for the missing slots fail; the map is asked for again before the next.
            self.adopt(map);
        }
        self.stale.store(true, Ordering::Release);
        Err(last)
    }

    /// Makes `map` the current slot map, if it differs.
    fn adopt(&self, map: SlotMap) {
        let current = self.map.load_full();
        if *current == map {
            return;
        }
        if !current.masters.is_empty() {
            *self.changed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let masters = map.masters.clone();
        self.map.store(Arc::new(map));
        self.links.lock().unwrap_or_else(|p| p.into_inner()).retain(|node, _| masters.contains(node));
        self.version.send_modify(|v| *v += 1);
    }

    /// Sends each command to the master of its slot (one pipeline per master, all at once) and
    /// returns their replies in order, following redirects. A master that is down fails its
    /// own commands (as `Err` replies); only if none went through does the call fail.
    pub async fn send(&self, commands: &[Command]) -> Result<Vec<Result<Value, String>>, LinkError> {
        if self.stale.load(Ordering::Acquire) {
            let _ = self.refresh().await;
        }
        let mut replies: Vec<Option<Result<Value, String>>> = (0..commands.len()).map(|_| None).collect();
        // Each command still to send, with the node an ASK redirect names.
        let mut todo: Vec<(usize, Option<Endpoint>)> = (0..commands.len()).map(|i| (i, None)).collect();
        for _ in 0..=MAX_REDIRECTS {
            if todo.is_empty() {
                break;
            }
            let map = self.map();
            let mut by_node: HashMap<Endpoint, Vec<(usize, bool)>> = HashMap::new();
            for (i, ask) in todo.drain(..) {
                let node = match ask {
                    Some(node) => (node, true),
                    None => match map.master_of(commands[i].slot) {
                        Some(node) => (node.clone(), false),
                        None => {
                            self.mark_stale();
                            return Err(LinkError::Unreachable(format!("no master is known for slot {}", commands[i].slot)));
                        }
                    },
                };
                by_node.entry(node.0).or_default().push((i, node.1));
            }
            let sent = futures::future::join_all(by_node.into_iter().map(|(node, items)| async move {
                let mut pipeline = Pipeline::default();
                for &(i, asking) in &items {
                    if asking {
                        pipeline.push(&[b"ASKING".as_slice()]);
                    }
                    pipeline.push(&commands[i].args);
                }
                let result = self.link(&node).send(&pipeline).await;
                (items, result)
            }))
            .await;
            let mut moved = false;
            let mut down = None;
            for (items, result) in sent {
                let values = match result {
                    Ok(values) => values,
                    Err(e) => {
                        // That master's commands fail; the others' replies stand.
                        self.mark_stale();
                        for (i, _) in items {
                            replies[i] = Some(Err(e.to_string()));
                        }
                        down = Some(e);
                        continue;
                    }
                };
                let mut values = values.into_iter();
                for (i, asking) in items {
                    if asking {
                        values.next();
                    }
                    let Some(value) = values.next() else { return Err(LinkError::Unreachable("a reply is missing".into())) };
                    match redirect(&value) {
                        Some(Redirect::Moved) => {
                            moved = true;
                            todo.push((i, None));
                        }
                        Some(Redirect::Ask(node)) => todo.push((i, Some(node))),
                        None => replies[i] = Some(reply(value)),
                    }
                }
            }
            if moved {
                self.mark_stale();
                let _ = self.refresh().await;
            }
            // Nothing went through: the cluster is unreachable, not one master.
            if let Some(e) = down
                && replies.iter().all(|r| matches!(r, None | Some(Err(_))))
                && todo.is_empty()
            {
                return Err(e);
            }
        }
        for (i, _) in todo {
            replies[i] = Some(Err("redirected too many times; the cluster's slots are moving".into()));
        }
        Ok(replies.into_iter().map(|r| r.expect("every command has a reply or an error")).collect())
    }

    /// Sends one command to every master (SCRIPT LOAD, PING).
    pub async fn each_master(&self, args: &[&[u8]]) -> Result<(), LinkError> {
        if self.stale.load(Ordering::Acquire) {
            self.refresh().await?;
        }
        let map = self.map();
        if map.masters.is_empty() {
            return Err(LinkError::Unreachable("no cluster master is known yet".into()));
        }
        let sent = futures::future::join_all(map.masters.iter().map(|node| async move {
            let mut pipeline = Pipeline::default();
            pipeline.push(args);
            (node, self.link(node).send(&pipeline).await)
        }))
        .await;
        for (node, result) in sent {
            if let Some(Value::Error(e)) = result.inspect_err(|_| self.mark_stale())?.pop() {
                return Err(LinkError::Refused(format!("{}:{} refused it: {}", node.0, node.1, String::from_utf8_lossy(&e))));
            }
        }
        Ok(())
    }

    /// When some master's connection was last made again after a loss, or the slot map changed.
    pub fn reconnected_at(&self) -> Option<Instant> {
        let changed = *self.changed_at.lock().unwrap_or_else(|p| p.into_inner());
        let reconnected = self.links.lock().unwrap_or_else(|p| p.into_inner()).values().filter_map(|l| l.reconnected_at()).max();
        changed.max(reconnected)
    }
}

enum Redirect {
    Moved,
    Ask(Endpoint),
}

/// `-MOVED slot host:port` or `-ASK slot host:port`.
fn redirect(value: &Value) -> Option<Redirect> {
    let Value::Error(e) = value else { return None };
    let text = std::str::from_utf8(e).ok()?;
    if text.starts_with("MOVED ") {
        return Some(Redirect::Moved);
    }
    let target = text.strip_prefix("ASK ")?.split(' ').nth(1)?;
    let (host, port) = target.rsplit_once(':')?;
    Some(Redirect::Ask((host.to_owned(), port.parse().ok()?)))
}

/// A reply read as a slot map and as a redirect (see `interpret_replies`).
pub(super) fn interpret(value: &Value) -> (bool, bool) {
    (SlotMap::parse(value, &("node".into(), 1)).is_some(), redirect(value).is_some())
}

/// An error reply as `Err` with its text.
pub fn reply(value: Value) -> Result<Value, String> {
    match value {
        Value::Error(e) => Err(String::from_utf8_lossy(&e).into_owned()),
        other => Ok(other),
    }
}

/// Reads `value` as every reply herald interprets, for the fuzzer (what a hostile Redis could
/// send must never panic herald).
pub fn interpret_replies(value: &Value) {
    let _ = interpret(value);
    let _ = super::replies::parse_entries(value.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn int(n: i64) -> Value {
        Value::Integer(n)
    }
    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(Bytes::from(s.to_owned())))
    }

    #[test]
    fn a_slot_map_is_read_from_cluster_slots() {
        let node = |host: &str, port| Value::Array(Some(vec![bulk(host), int(port), bulk("id")]));
        let reply = Value::Array(Some(vec![
            Value::Array(Some(vec![int(0), int(5460), node("10.0.0.1", 7000), node("10.0.0.4", 7003)])),
            Value::Array(Some(vec![int(5461), int(16383), node("", 7001)])),
        ]));
        let map = SlotMap::parse(&reply, &("seed".into(), 7001)).unwrap();
        assert_eq!(map.master_of(0), Some(&("10.0.0.1".to_owned(), 7000)));
        assert_eq!(map.master_of(5460), Some(&("10.0.0.1".to_owned(), 7000)));
        assert_eq!(map.master_of(5461), Some(&("seed".to_owned(), 7001)), "no host: the node asked");
        assert_eq!(map.masters.len(), 2);
        assert!(
            SlotMap::parse(&Value::Array(Some(vec![Value::Array(Some(vec![int(9), int(16384), node("h", 1)]))])), &("s".into(), 1))
                .is_none()
        );
    }

    #[test]
    fn redirects_are_read() {
        let moved = Value::Error(Bytes::from_static(b"MOVED 3999 127.0.0.1:6381"));
        assert!(matches!(redirect(&moved), Some(Redirect::Moved)));
        let ask = Value::Error(Bytes::from_static(b"ASK 3999 127.0.0.1:6381"));
        assert!(matches!(redirect(&ask), Some(Redirect::Ask((h, 6381))) if h == "127.0.0.1"));
        assert!(redirect(&Value::Error(Bytes::from_static(b"NOSCRIPT No matching script"))).is_none());
    }
}
