//! Who is connected to this instance: each user's sockets and each group's (the indexes
//! deliveries read), and the gauges that show it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::metrics::Metrics;

/// The sockets of each user on this instance. A user's count is what a delivery reports as
/// "sockets reached" and what the in-process bus uses to tell an offline user from an online
/// one. Generic over what is kept per socket: the gateway keeps an `Entry`, which names the
/// socket server's handler, and the tests keep less.
pub struct Presence<T> {
    users: DashMap<Arc<str>, Vec<T>, foldhash::fast::RandomState>,
    /// The sockets of each group with a member here.
    groups: DashMap<Arc<str>, Vec<T>, foldhash::fast::RandomState>,
    sockets: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Buffers a group's or everyone's sockets are copied into, so that the index's locks are
    /// held for a copy rather than for the sends (joins and leaves do not wait for a broadcast);
    /// kept for the next, so a warm broadcast allocates nothing, whatever its audience.
    scratch: Mutex<Vec<Vec<T>>>,
}

impl<T: Clone> Presence<T> {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            users: DashMap::with_hasher(Default::default()),
            groups: DashMap::with_hasher(Default::default()),
            sockets: AtomicUsize::new(0),
            metrics,
            scratch: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on each socket `copy` puts in a buffer, once the copy is done (and the locks
    /// it took are released); returns how many there were.
    fn copied(&self, copy: impl FnOnce(&mut Vec<T>), f: impl FnMut(&T)) -> usize {
        let mut buffer = self.scratch.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        copy(&mut buffer);
        buffer.iter().for_each(f);
        let count = buffer.len();
        buffer.clear();
        self.scratch.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
        count
    }

    /// Adds a socket to `user` unless the user already has `max` (checked and added under one
    /// lock, so two simultaneous connects cannot both slip under the limit).
    pub fn try_add(&self, user: &Arc<str>, socket: T, max: Option<u32>) -> bool {
        {
            let mut sockets = self.users.entry(user.clone()).or_default();
            if max.is_some_and(|m| sockets.len() >= m as usize) {
                let empty = sockets.is_empty();
                drop(sockets);
                if empty {
                    self.users.remove_if(user, |_, s| s.is_empty());
                }
                return false;
            }
            sockets.push(socket);
        }
        self.sockets.fetch_add(1, Ordering::Relaxed);
        self.metrics.sockets.increment(1.0);
        self.metrics.users.set(self.users.len() as f64);
        true
    }

    /// Removes the socket of `user` that `is_it` picks; returns whether it was there.
    pub fn remove(&self, user: &str, is_it: impl Fn(&T) -> bool) -> bool {
        let removed = match self.users.get_mut(user) {
            Some(mut sockets) => {
                let before = sockets.len();
                sockets.retain(|s| !is_it(s));
                before != sockets.len()
            }
            None => false,
        };
        // Re-checked under the shard lock: another socket of the user may have come meanwhile.
        self.users.remove_if(user, |_, s| s.is_empty());
        if removed {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            self.metrics.sockets.decrement(1.0);
            self.metrics.users.set(self.users.len() as f64);
        }
        removed
    }

    /// Adds a socket to each of `groups`.
    pub fn join_groups(&self, socket: &T, groups: &[Arc<str>]) {
        for group in groups {
            self.groups.entry(group.clone()).or_default().push(socket.clone());
        }
    }

    /// Removes the socket `is_it` picks from each of `groups`.
    pub fn remove_from_groups(&self, groups: &[Arc<str>], is_it: impl Fn(&T) -> bool) {
        for group in groups {
            if let Some(mut sockets) = self.groups.get_mut(&**group) {
                sockets.retain(|s| !is_it(s));
            }
            self.groups.remove_if(&**group, |_, s| s.is_empty());
        }
    }

    /// Runs `f` on each socket of the group, copied out of the index first (see
    /// [`Self::each_everyone`]); returns how many there were.
    pub fn each_in_group(&self, group: &str, f: impl FnMut(&T)) -> usize {
        self.copied(
            |buffer| {
                if let Some(sockets) = self.groups.get(group) {
                    buffer.extend_from_slice(&sockets);
                }
            },
            f,
        )
    }

    /// Runs `f` on every socket here, copied out of the index first: each shard's read lock is
    /// held while its sockets are copied (a few nanoseconds each), not while they are sent to.
    pub fn each_everyone(&self, f: impl FnMut(&T)) -> usize {
        self.copied(
            |buffer| {
                for sockets in self.users.iter() {
                    buffer.extend_from_slice(&sockets);
                }
            },
            f,
        )
    }

    /// Sockets of `group` here.
    pub fn sockets_in_group(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |s| s.len())
    }

    pub fn sockets_of(&self, user_id: &str) -> usize {
        self.users.get(user_id).map_or(0, |s| s.len())
    }

    /// Runs `f` on each socket of the user, under the index's read lock (so `f` must not connect
    /// or disconnect anyone); returns how many there were.
    pub fn each_socket(&self, user_id: &str, f: impl FnMut(&T)) -> usize {
        match self.users.get(user_id) {
            Some(sockets) => {
                sockets.iter().for_each(f);
                sockets.len()
            }
            None => 0,
        }
    }

    /// A copy of the user's sockets, for work that may disconnect some.
    pub fn sockets_snapshot(&self, user_id: &str) -> Vec<T> {
        self.users.get(user_id).map(|s| s.clone()).unwrap_or_default()
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

    /// A broadcast or a group delivery holds no lock of the index while it sends: the send may
    /// itself join and leave sockets (with the lock held, this would deadlock).
    #[test]
    fn sockets_join_and_leave_while_a_broadcast_sends() {
        let p = Presence::<u32>::new(Arc::new(Metrics::new(&[])));
        let crew: Arc<str> = "crew".into();
        for i in 0..100u32 {
            let user: Arc<str> = format!("u{i}").into();
            assert!(p.try_add(&user, i, None));
            p.join_groups(&i, std::slice::from_ref(&crew));
        }
        let mut seen = 0;
        let reached = p.each_everyone(|s| {
            seen += 1;
            let user: Arc<str> = format!("u{s}").into();
            assert!(p.try_add(&user, 1000 + s, None), "a join during the broadcast");
            assert!(p.remove(&user, |x| *x == 1000 + s), "a leave during the broadcast");
        });
        assert_eq!((reached, seen), (100, 100));
        let reached = p.each_in_group("crew", |s| p.join_groups(&(2000 + s), std::slice::from_ref(&crew)));
        assert_eq!(reached, 100);
        assert_eq!(p.sockets_in_group("crew"), 200, "the joins made during the group's delivery count from the next");
    }

    #[test]
    fn counts_sockets_per_user() {
        let p = Presence::<u32>::new(Arc::new(Metrics::new(&[])));
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert!(p.try_add(&a, 1, None));
        assert_eq!(p.sockets_of("a"), 1);
        assert!(p.try_add(&a, 2, None));
        assert_eq!(p.sockets_of("a"), 2);
        assert!(p.try_add(&b, 3, None));
        assert_eq!(p.users(), 2);
        let mut seen = Vec::new();
        assert_eq!(p.each_socket("a", |s| seen.push(*s)), 2);
        assert_eq!(seen, [1, 2]);
        assert!(p.remove("a", |s| *s == 1));
        assert!(!p.remove("a", |s| *s == 1), "once");
        assert_eq!(p.sockets_snapshot("a"), [2]);
        assert!(p.remove("a", |s| *s == 2));
        assert_eq!(p.sockets_of("a"), 0);
        assert_eq!(p.users(), 1);
        assert!(!p.remove("nobody", |_| true));
        assert_eq!(p.sockets(), 1);
        assert!(p.try_add(&b, 4, Some(2)));
        assert!(!p.try_add(&b, 5, Some(2)), "at the limit");
        assert!(!p.try_add(&c, 6, Some(0)));
        assert_eq!(p.sockets_of("c"), 0);
        assert_eq!(p.users(), 1, "a refused user leaves no empty entry");
    }

    #[test]
    fn indexes_sockets_per_group() {
        let p = Presence::<u32>::new(Arc::new(Metrics::new(&[])));
        let (u, v): (Arc<str>, Arc<str>) = ("u".into(), "v".into());
        let (red, blue): (Arc<str>, Arc<str>) = ("red".into(), "blue".into());
        assert!(p.try_add(&u, 1, None) && p.try_add(&v, 2, None));
        p.join_groups(&1, &[red.clone(), blue.clone()]);
        p.join_groups(&2, std::slice::from_ref(&red));
        let mut seen = Vec::new();
        assert_eq!(p.each_in_group("red", |s| seen.push(*s)), 2);
        assert_eq!(seen, [1, 2]);
        assert_eq!(p.sockets_in_group("blue"), 1);
        p.remove_from_groups(&[red.clone(), blue.clone()], |s| *s == 1);
        assert_eq!((p.sockets_in_group("red"), p.sockets_in_group("blue")), (1, 0));
        assert_eq!(p.groups.len(), 1, "an empty group leaves no entry");
        let mut everyone = Vec::new();
        assert_eq!(p.each_everyone(|s| everyone.push(*s)), 2);
        everyone.sort();
        assert_eq!(everyone, [1, 2]);
    }
}
