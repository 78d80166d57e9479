//! Who is connected to this instance: sockets per user, and the gauges that show it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::metrics::Metrics;

/// Local socket counts per user. The count is what a delivery reports as "sockets reached" and
/// what the in-process bus uses to tell an offline user from an online one.
pub struct Presence {
    users: DashMap<String, u32>,
    sockets: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Presence {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { users: DashMap::new(), sockets: AtomicUsize::new(0), metrics }
    }

    /// Records one more socket for `user_id` unless it already has `max` (checked and added
    /// under one lock, so two simultaneous connects cannot both slip under the limit).
    pub fn try_add(&self, user_id: &str, max: Option<u32>) -> bool {
        {
            let mut entry = self.users.entry(user_id.to_owned()).or_insert(0);
            if max.is_some_and(|m| *entry >= m) {
                drop(entry);
                self.users.remove_if(user_id, |_, c| *c == 0);
                return false;
            }
            *entry += 1;
        }
        self.sockets.fetch_add(1, Ordering::Relaxed);
        self.metrics.sockets.increment(1.0);
        self.metrics.users.set(self.users.len() as f64);
        true
    }

    /// Records one socket fewer; returns how many the user still has here.
    pub fn remove(&self, user_id: &str) -> u32 {
        let left = match self.users.get_mut(user_id) {
            Some(mut entry) => {
                *entry = entry.saturating_sub(1);
                *entry
            }
            None => return 0,
        };
        // Re-check under the shard lock: another socket of the user may have connected meanwhile.
        self.users.remove_if(user_id, |_, count| *count == 0);
        self.sockets.fetch_sub(1, Ordering::Relaxed);
        self.metrics.sockets.decrement(1.0);
        self.metrics.users.set(self.users.len() as f64);
        left
    }

    pub fn sockets_of(&self, user_id: &str) -> u32 {
        self.users.get(user_id).map(|c| *c).unwrap_or(0)
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Sockets on this instance.
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sockets_per_user() {
        let p = Presence::new(Arc::new(Metrics::new(&[])));
        assert!(p.try_add("a", None));
        assert_eq!(p.sockets_of("a"), 1);
        assert!(p.try_add("a", None));
        assert_eq!(p.sockets_of("a"), 2);
        assert!(p.try_add("b", None));
        assert_eq!(p.sockets_of("b"), 1);
        assert_eq!(p.users(), 2);
        assert_eq!(p.remove("a"), 1);
        assert_eq!(p.sockets_of("a"), 1);
        assert_eq!(p.remove("a"), 0);
        assert_eq!(p.sockets_of("a"), 0);
        assert_eq!(p.users(), 1);
        assert_eq!(p.remove("nobody"), 0);
        assert_eq!(p.sockets(), 1);
        assert!(p.try_add("b", Some(2)));
        assert!(!p.try_add("b", Some(2)), "at the limit");
        assert!(!p.try_add("c", Some(0)));
        assert_eq!(p.sockets_of("c"), 0);
        assert_eq!(p.users(), 1, "a refused user leaves no empty entry");
    }
}
