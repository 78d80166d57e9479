//! The in-process bus for a single instance: publishing is delivering (and storing, for
//! retained notifications).

use super::Published;
use crate::config::ReplayConfig;
use crate::gateway::Deliverer;
use crate::replay::memory::MemoryHistory;
use crate::replay::{History, NotificationId};
use crate::route::Notification;

pub struct MemoryBus {
    deliverer: Deliverer,
    history: MemoryHistory,
}

impl MemoryBus {
    pub fn new(deliverer: Deliverer, replay: &ReplayConfig) -> Self {
        Self { deliverer, history: MemoryHistory::new(replay.history, replay.max_age) }
    }

    pub async fn publish(&self, batch: &[Notification]) -> Vec<Published> {
        let mut out = Vec::with_capacity(batch.len());
        for n in batch {
            let published = if n.retain {
                let id = self.history.append(&n.user_id, &n.event, &n.payload, crate::route::now_ms().max(0) as u64);
                let receivers = self.deliverer.deliver_retained(&n.user_id, id, &n.event, &n.payload, n.timestamp_ms, n.consumed_us);
                Published { receivers, stored: Some(id) }
            } else {
                Published {
                    receivers: self.deliverer.deliver(&n.user_id, &n.event, &n.payload, n.origin.as_deref(), n.timestamp_ms, n.consumed_us),
                    stored: None,
                }
            };
            out.push(published);
        }
        out
    }

    pub fn publish_live(&self, stored: &[(Notification, NotificationId)]) -> Vec<usize> {
        stored
            .iter()
            .map(|(n, id)| self.deliverer.deliver_retained(&n.user_id, *id, &n.event, &n.payload, n.timestamp_ms, n.consumed_us))
            .collect()
    }

    /// 1 for a user with a socket here (the only instance), else 0.
    pub fn presence(&self, users: &[String]) -> Vec<usize> {
        users.iter().map(|u| usize::from(self.deliverer.sockets_of(u) > 0)).collect()
    }

    pub fn history(&self, user_id: &str, since: Option<NotificationId>, last_n: usize) -> History {
        self.history.after(user_id, since, last_n)
    }
}
