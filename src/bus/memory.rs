//! The in-process bus for a single instance: publishing is delivering.

use crate::gateway::Deliverer;
use crate::route::Notification;

pub struct MemoryBus {
    deliverer: Deliverer,
}

impl MemoryBus {
    pub fn new(deliverer: Deliverer) -> Self {
        Self { deliverer }
    }

    pub async fn publish(&self, batch: &[Notification]) -> Vec<usize> {
        let mut reached = Vec::with_capacity(batch.len());
        for n in batch {
            reached.push(self.deliverer.deliver(&n.user_id, &n.event, &n.payload, n.timestamp_ms).await);
        }
        reached
    }
}
