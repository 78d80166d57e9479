//! The in-memory history, for a single instance without Redis: a bounded queue per user.

use std::collections::VecDeque;
use std::time::Duration;

use dashmap::DashMap;
use serde_json::value::RawValue;

use super::{History, NotificationId, Retained, history_after};

pub struct MemoryHistory {
    users: DashMap<String, UserHistory>,
    max_count: usize,
    max_age: Duration,
}

#[derive(Default)]
struct UserHistory {
    last: NotificationId,
    items: VecDeque<Retained>,
}

impl MemoryHistory {
    pub fn new(max_count: usize, max_age: Duration) -> Self {
        Self { users: DashMap::new(), max_count, max_age }
    }

    /// Stores a notification; returns its id, greater than every earlier id of the user.
    pub fn append(&self, user_id: &str, event: &str, payload: &RawValue, now_ms: u64) -> NotificationId {
        let mut h = self.users.entry(user_id.to_owned()).or_default();
        let id =
            if now_ms > h.last.ms { NotificationId { ms: now_ms, seq: 0 } } else { NotificationId { ms: h.last.ms, seq: h.last.seq + 1 } };
        h.last = id;
        h.items.push_back(Retained { id, event: event.to_owned(), payload: payload.to_owned() });
        let oldest_kept = now_ms.saturating_sub(self.max_age.as_millis() as u64);
        while h.items.len() > self.max_count || h.items.front().is_some_and(|r| r.id.ms < oldest_kept) {
            h.items.pop_front();
        }
        id
    }

    /// What is retained after `since` (or the last `last_n` without it).
    pub fn after(&self, user_id: &str, since: Option<NotificationId>, last_n: usize) -> History {
        let Some(h) = self.users.get(user_id) else {
            return History { items: Vec::new(), gap: since.is_some_and(|s| s != NotificationId::default()) };
        };
        match since {
            Some(s) => history_after(Some(s), h.items.iter().filter(|r| r.id >= s).cloned().collect()),
            None => History { items: h.items.iter().skip(h.items.len().saturating_sub(last_n)).cloned().collect(), gap: false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count_with_increasing_ids() {
        let h = MemoryHistory::new(3, Duration::from_secs(60));
        let p = RawValue::from_string("{}".into()).unwrap();
        let ids: Vec<_> = (0..5).map(|_| h.append("u", "n", &p, 1000)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let all = h.after("u", Some(NotificationId::default()), 0);
        assert_eq!(all.items.iter().map(|r| r.id).collect::<Vec<_>>(), ids[2..]);
        let after_first = h.after("u", Some(ids[0]), 0);
        assert!(after_first.gap, "the first one was trimmed");
        let after_third = h.after("u", Some(ids[2]), 0);
        assert_eq!((after_third.items.len(), after_third.gap), (2, false));
        assert_eq!(h.after("u", None, 2).items.len(), 2);
        assert!(h.after("nobody", Some(ids[0]), 0).gap);
    }
}
