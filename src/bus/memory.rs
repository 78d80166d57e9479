//! The in-process bus for a single instance: publishing is delivering (and storing, for
//! retained notifications).

use super::outcome::Published;
use crate::config::ReplayConfig;
use std::sync::Arc;

use super::inbound::Arrival;
use super::inbound::{Addressee, Inbound};
use crate::notification::{Audience, Notification};
use crate::replay::memory::MemoryHistory;
use crate::replay::{History, NotificationId};

pub struct MemoryBus {
    deliverer: Arc<dyn Inbound>,
    history: MemoryHistory,
}

impl MemoryBus {
    pub fn new(deliverer: Arc<dyn Inbound>, replay: &ReplayConfig) -> Self {
        Self { deliverer, history: MemoryHistory::new(replay.history, replay.max_age) }
    }

    /// Ends `users`' sessions on this, the only, instance.
    pub fn end_sessions(&self, users: &[String], revoked_at_ms: Option<i64>) -> usize {
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        self.deliverer.end_sessions(&users, revoked_at_ms);
        1
    }

    pub async fn publish(&self, batch: &[Notification]) -> Vec<Published> {
        let mut out = Vec::with_capacity(batch.len());
        for n in batch {
            let published = match (&n.to, n.retain) {
                (Audience::User(user), true) => {
                    let id = self.history.append(user, &n.event, &n.payload, crate::clock::unix_ms().max(0) as u64);
                    let receivers = self.deliverer.deliver_retained(user, id, &arrival(n));
                    Published { receivers, stored: Some(id) }
                }
                (to, _) => {
                    let among: Vec<&str> = match to {
                        Audience::Group { among: Some(all), .. } => all.iter().map(String::as_str).collect(),
                        _ => Vec::new(),
                    };
                    let to = match to {
                        Audience::User(user) => Addressee::User(user),
                        Audience::Group { name, .. } => Addressee::Group { name, among: &among },
                        Audience::Broadcast => Addressee::Everyone,
                    };
                    let receivers = self.deliverer.deliver(to, &arrival(n), n.origin.as_deref());
                    Published { receivers, stored: None }
                }
            };
            out.push(published);
        }
        out
    }

    pub fn publish_live(&self, stored: &[(Notification, NotificationId)]) -> Vec<usize> {
        stored
            .iter()
            .map(|(n, id)| match &n.to {
                Audience::User(user) => self.deliverer.deliver_retained(user, *id, &arrival(n)),
                _ => 0,
            })
            .collect()
    }

    /// 1 for a user (or group) with a socket here (the only instance), else 0.
    pub fn presence(&self, users: &[String], groups: &[String]) -> (Vec<usize>, Vec<usize>) {
        (
            users.iter().map(|u| usize::from(self.deliverer.sockets_of(u) > 0)).collect(),
            groups.iter().map(|g| usize::from(self.deliverer.sockets_in_group(g) > 0)).collect(),
        )
    }

    pub fn history(&self, user_id: &str, since: Option<NotificationId>, last_n: usize) -> History {
        self.history.after(user_id, since, last_n)
    }
}

/// A notification as the in-process bus hands it over.
fn arrival(n: &Notification) -> Arrival<'_> {
    Arrival {
        event: &n.event,
        payload: &n.payload,
        timestamp_ms: n.timestamp_ms,
        consumed_us: n.consumed_us,
        traceparent: n.trace.as_deref().map(|t| t.traceparent()),
        tracestate: n.trace.as_deref().and_then(|t| t.tracestate()),
    }
}
